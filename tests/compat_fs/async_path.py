"""An ``async def`` PathOperations filesystem: ``/slow`` takes 2 s to read, ``/fast`` none.

``python async_path.py MOUNTPOINT`` (needs a server that runs coroutine handlers).
"""

from __future__ import annotations

import asyncio
import errno
import stat
import sys
from collections.abc import AsyncIterator

from fusewire import EntryAttributes, FUSEError, PathAdapter, PathOperations
from fusewire.server import Server


class Slow(PathOperations):
    attr_timeout = entry_timeout = 0.0

    async def getattr(self, path: str, fh: int | None = None) -> EntryAttributes:
        if path == "/":
            return EntryAttributes(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path in ("/slow", "/fast"):
            return EntryAttributes(st_mode=stat.S_IFREG | 0o444, st_size=5)
        raise FUSEError(errno.ENOENT)

    async def readdir(self, path: str, fh: int) -> AsyncIterator[str]:  # type: ignore[override]
        for name in ("slow", "fast"):
            await asyncio.sleep(0)
            yield name

    async def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == "/slow":
            await asyncio.sleep(2)
        return b"data\n"[offset:offset + size]


if __name__ == "__main__":
    Server(PathAdapter(Slow()), sys.argv[1]).run()
