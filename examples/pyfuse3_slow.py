"""An async filesystem over a slow source, with asyncio.

Usage: python examples/pyfuse3_slow.py MOUNTPOINT [LATENCY_SECONDS]

Each file's contents come from ``SlowSource.fetch``, which takes LATENCY
seconds (a stand-in for a network store); the filesystem keeps what it
fetched for ``TTL`` seconds.  Handlers are ``async def`` and await the
source, and a background task on the same event loop keeps a counter in
``/ticks`` going while requests are served.  Written against pyfuse3's API
(``fusewire.compat.pyfuse3``), which fusewire serves without libfuse.
"""

from __future__ import annotations

import asyncio
import errno
import stat
import sys
import time

import fusewire.compat.pyfuse3.asyncio as pyfuse3_asyncio
from fusewire.compat import pyfuse3

TTL = 5.0
NAMES = [b"alpha", b"beta", b"gamma", b"ticks"]


class SlowSource:
    """Documents that take ``latency`` seconds to fetch."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.fetches = 0
        self.ticks = 0

    async def fetch(self, name: bytes) -> bytes:
        await asyncio.sleep(self.latency)
        self.fetches += 1
        if name == b"ticks":
            return f"{self.ticks}\n".encode()
        return b"%s: fetched at %.3f\n" % (name, time.time())


class SlowFS(pyfuse3.Operations):
    """Root directory with one file per document; inode i + 2 is NAMES[i]."""

    def __init__(self, source: SlowSource) -> None:
        self.source = source
        self.cache: dict[bytes, tuple[float, bytes]] = {}

    async def _contents(self, name: bytes) -> bytes:
        hit = self.cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < TTL:
            return hit[1]
        data = await self.source.fetch(name)
        self.cache[name] = (time.monotonic(), data)
        return data

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.attr_timeout = a.entry_timeout = 1.0
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
        elif 2 <= inode < 2 + len(NAMES):
            a.st_mode = stat.S_IFREG | 0o444
            a.st_size = len(await self._contents(NAMES[inode - 2]))
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return a

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name not in NAMES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(NAMES.index(name) + 2, ctx)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for i in range(start_id, len(NAMES)):
            a = pyfuse3.EntryAttributes()        # no fetch just to list names
            a.st_ino, a.st_mode = i + 2, stat.S_IFREG | 0o444
            if not pyfuse3.readdir_reply(token, NAMES[i], a, i + 1):
                break

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        if flags & 3:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)   # always ask us, never the cache

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return (await self._contents(NAMES[fh - 2]))[off:off + size]


async def ticker(source: SlowSource) -> None:
    """Other work on the same event loop: it keeps running while requests are served."""
    while True:
        await asyncio.sleep(0.05)
        source.ticks += 1


async def serve(source: SlowSource) -> None:
    task = asyncio.create_task(ticker(source))
    try:
        await pyfuse3.main()
    finally:
        task.cancel()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: python pyfuse3_slow.py MOUNTPOINT [LATENCY_SECONDS]\n")
        return 2
    source = SlowSource(float(argv[1]) if len(argv) > 1 else 0.2)
    pyfuse3_asyncio.enable()
    try:
        pyfuse3.init(SlowFS(source), argv[0], {"fsname=pyfuse3_slow", "ro"})
    except RuntimeError as exc:
        sys.stderr.write(f"pyfuse3_slow.py: {exc}\n")
        return 1
    try:
        asyncio.run(serve(source))
    finally:
        pyfuse3.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
