"""Compatibility alias: the readdir token lives in :mod:`fusewire.readdir` (the API layer).

Kept so that code written against ``fusewire.server.readdir`` keeps importing;
new code imports :class:`fusewire.ReaddirToken` or :mod:`fusewire.readdir`.
"""

from __future__ import annotations

from fusewire.readdir import ReaddirToken, dirent_type

__all__ = ["ReaddirToken", "dirent_type"]
