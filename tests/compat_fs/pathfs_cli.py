"""A PathOperations filesystem with a no-argument constructor, for
``fusewire mount pathfs_cli:Greeting MOUNTPOINT``."""

from __future__ import annotations

import errno
import stat

from fusewire import EntryAttributes, FUSEError, PathOperations

TEXT = b"greetings from a path filesystem\n"


class Greeting(PathOperations):
    def getattr(self, path: str, fh: int | None = None) -> EntryAttributes:
        if path == "/":
            return EntryAttributes(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/greeting":
            return EntryAttributes(st_mode=stat.S_IFREG | 0o444, st_size=len(TEXT))
        raise FUSEError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        return ["greeting"]

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return TEXT[offset:offset + size]
