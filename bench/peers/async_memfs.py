"""fusewire's memfs with every handler the bench exercises made ``async def``.

Each handler awaits nothing and calls memfs's sync one: what is measured is
the price of the async path (an asyncio task per request, completion through
the deferred-reply queue) against ``fusewire_memfs``, the same filesystem
answered inline.  Mounted by bench/run.py as ``async_memfs:AsyncMemFS``
(bench/peers on PYTHONPATH); entry and attribute timeouts are 0 like the
other contenders'.
"""

from __future__ import annotations

from typing import Any

from fusewire.examples.memfs import MemFS
from fusewire.types import EntryAttributes, FileInfo, RequestContext


class AsyncMemFS(MemFS):
    """MemFS whose hot handlers are coroutines."""

    def __init__(self) -> None:
        super().__init__(entry_timeout=0.0, attr_timeout=0.0)

    async def lookup(self, parent_inode: int, name: bytes,  # type: ignore[override]
                     ctx: RequestContext) -> EntryAttributes:
        return MemFS.lookup(self, parent_inode, name, ctx)

    async def getattr(self, inode: int,  # type: ignore[override]
                      ctx: RequestContext) -> EntryAttributes:
        return MemFS.getattr(self, inode, ctx)

    async def open(self, inode: int, flags: int,  # type: ignore[override]
                   ctx: RequestContext) -> FileInfo:
        return MemFS.open(self, inode, flags, ctx)

    async def create(self, parent_inode: int, name: bytes, mode: int,  # type: ignore[override]
                     flags: int, ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        return MemFS.create(self, parent_inode, name, mode, flags, ctx)

    async def read(self, fh: int, off: int, size: int) -> Any:  # type: ignore[override]
        return MemFS.read(self, fh, off, size)

    async def write(self, fh: int, off: int, buf: memoryview) -> int:  # type: ignore[override]
        return MemFS.write(self, fh, off, buf)

    async def unlink(self, parent_inode: int, name: bytes,  # type: ignore[override]
                     ctx: RequestContext) -> None:
        MemFS.unlink(self, parent_inode, name, ctx)

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:  # type: ignore[override]
        MemFS.readdir(self, fh, start_id, token)
