"""Filesystems whose every read waits ``SLEEPFS_DELAY`` seconds (default 0.05):
``SyncSleepFS`` blocks its thread (like a handler in a slow syscall; serve it
with ``--workers N``), ``AsyncSleepFS`` awaits (one thread, asyncio).  Files
``f0`` .. ``f63`` of 4 KiB.  Used by bench/bench_wait.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time

from fusewire import EntryAttributes, FileInfo, FUSEError, Operations, RequestContext

DELAY = float(os.environ.get("SLEEPFS_DELAY", "0.05"))
NFILES = 64
SIZE = 4096


class _Base(Operations):
    def _attr(self, inode: int) -> EntryAttributes:
        if inode == 1:
            return EntryAttributes(1, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if 2 <= inode < 2 + NFILES:
            return EntryAttributes(inode, st_mode=stat.S_IFREG | 0o444, st_size=SIZE)
        raise FUSEError(errno.ENOENT)

    def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        if parent_inode == 1 and name.startswith(b"f") and name[1:].isdigit():
            n = int(name[1:])
            if n < NFILES:
                return self._attr(2 + n)
        raise FUSEError(errno.ENOENT)

    def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return self._attr(inode)

    def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        return FileInfo(fh=inode, direct_io=True)


class SyncSleepFS(_Base):
    """Each read blocks its serving thread for DELAY seconds."""

    def read(self, fh: int, off: int, size: int) -> bytes:
        time.sleep(DELAY)
        return b"x" * max(0, min(size, SIZE - off))


class AsyncSleepFS(_Base):
    """Each read awaits DELAY seconds; other requests are served meanwhile."""

    async def read(self, fh: int, off: int, size: int) -> bytes:  # type: ignore[override]
        await asyncio.sleep(DELAY)
        return b"x" * max(0, min(size, SIZE - off))
