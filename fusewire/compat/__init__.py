"""Compatibility layers: run filesystems written for other Python FUSE bindings.

- :mod:`fusewire.compat.fusepy`: fusepy / mfusepy (``import fuse``), on top of
  :class:`fusewire.PathOperations`.
- :mod:`fusewire.compat.pyfuse3`: pyfuse3 (``import pyfuse3``, trio or asyncio),
  on top of :class:`fusewire.Operations`.

See docs/migration-fusepy.md and docs/migration-pyfuse3.md.
"""
