"""A read-only filesystem whose files are the answers of an async service.

Each file names a key of a (simulated) remote service; reading the file
awaits ``service.fetch(key)``.  One key, ``slow``, takes ``--delay`` seconds
to answer, like a slow network call.  Because the handlers are ``async
def``, fusewire serves everything else while that read awaits: ``ls``,
``stat`` and reads of the other files answer at once, and a reader
interrupted by a signal gets EINTR at once (its handler is cancelled).

    python examples/async_slow.py /mnt/svc --delay 5 &
    cat /mnt/svc/slow &          # takes 5 s
    cat /mnt/svc/key07           # answers at once
    fusermount3 -u /mnt/svc      # or umount, as root
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import stat
from collections.abc import Sequence

from fusewire import EntryAttributes, FileInfo, FUSEError, Operations, ReaddirToken, RequestContext
from fusewire.server import Server


class Service:
    """Stands in for an aiohttp/asyncpg/aiobotocore client: every call awaits."""

    def __init__(self, keys: Sequence[str], slow: float) -> None:
        self.keys = list(keys)
        self.slow = slow

    async def size(self, key: str) -> int:
        await asyncio.sleep(0)                      # a cheap metadata call
        return len(self._value(key))

    async def fetch(self, key: str) -> bytes:
        await asyncio.sleep(self.slow if key == "slow" else 0.001)
        return self._value(key)

    def _value(self, key: str) -> bytes:
        return f"value of {key}\n".encode()


class ServiceFS(Operations):
    """Inode 1 is the root; inode 2 + i is ``service.keys[i]``."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def _key(self, inode: int) -> str:
        if not 2 <= inode < 2 + len(self.service.keys):
            raise FUSEError(errno.ENOENT)
        return self.service.keys[inode - 2]

    async def _attr(self, inode: int) -> EntryAttributes:
        if inode == 1:
            return EntryAttributes(1, st_mode=stat.S_IFDIR | 0o555, st_nlink=2)
        size = await self.service.size(self._key(inode))
        return EntryAttributes(inode, st_mode=stat.S_IFREG | 0o444, st_size=size)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: RequestContext) -> EntryAttributes:
        keys = self.service.keys
        if parent_inode != 1 or name.decode(errors="replace") not in keys:
            raise FUSEError(errno.ENOENT)
        return await self._attr(2 + keys.index(name.decode()))

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return await self._attr(inode)

    def opendir(self, inode: int, ctx: RequestContext) -> int:
        return 0                                    # a sync handler answers inline

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        names = [b".", b"..", *(k.encode() for k in self.service.keys)]
        for i in range(start_id, len(names)):
            attr = await self._attr(1 if i < 2 else i)
            if not token.add(names[i], attr, i + 1):
                break

    def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        self._key(inode)
        return FileInfo(fh=inode, direct_io=True)   # every read asks the service

    async def read(self, fh: int, off: int, size: int) -> bytes:
        key = self._key(fh)
        if off >= await self.service.size(key):
            return b""                              # end of file: no fetch
        data = await self.service.fetch(key)
        return data[off:off + size]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mountpoint")
    p.add_argument("--delay", type=float, default=1.0, help="seconds the 'slow' key takes")
    args = p.parse_args(argv)
    keys = ["slow", *(f"key{i:02d}" for i in range(20))]
    Server(ServiceFS(Service(keys, args.delay)), args.mountpoint,
           "fsname=async_slow,ro").run()


if __name__ == "__main__":
    main()
