"""Compatibility layers: run filesystems written for other Python FUSE bindings.

- :mod:`fusewire.compat.fusepy`: fusepy / mfusepy (``import fuse``), on top of
  :class:`fusewire.PathOperations`.

See docs/migration-fusepy.md.
"""
