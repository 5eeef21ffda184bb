"""MemFS's file data: sparse 64 KiB chunks per inode (a missing chunk is a hole).

One job: reading, writing, zeroing and resizing a regular file's bytes, with
the byte count held against ``max_bytes``.  :class:`MemFSData` is a mixin of
:class:`fusewire.examples.memfs.MemFS`.
"""

from __future__ import annotations

import errno

from fusewire.examples.memfs_nodes import CHUNK_SIZE, _err, _Inode

__all__ = ["MemFSData"]


class MemFSData:
    """File-data methods of MemFS (a mixin; MemFS sets the attributes)."""

    _used: int          # bytes held in chunks and xattrs
    max_bytes: int      # ENOSPC beyond this


    def _chunks(self, node: _Inode) -> dict[int, bytearray]:
        chunks = node.chunks
        if chunks is None:
            chunks = node.data = {}
        return chunks

    def _read_data(self, node: _Inode, off: int, size: int) -> bytes | bytearray:
        """``size`` bytes at ``off`` (short at EOF), holes as zeros, copied once."""
        if off >= node.size or size <= 0:
            return b""
        size = min(size, node.size - off)
        chunks = node.chunks
        if not chunks:
            return bytes(size)
        idx, coff = divmod(off, CHUNK_SIZE)
        chunk = chunks.get(idx)
        if chunk is not None and coff + size <= len(chunk):
            return chunk[coff:coff + size]  # within one chunk: one copy
        pieces: list[bytes | memoryview] = []  # views of the chunks, zeros for holes
        pos = 0
        while pos < size:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, size - pos)
            chunk = chunks.get(idx)
            got = 0
            if chunk is not None and coff < len(chunk):
                piece = memoryview(chunk)[coff:coff + n]
                got = len(piece)
                pieces.append(piece)
            if got < n:
                pieces.append(bytes(n - got))
            pos += n
        return b"".join(pieces)  # the one copy (the views die with ``pieces``)

    def _write_data(self, node: _Inode, off: int, data: bytes | bytearray | memoryview) -> None:
        total = len(data)
        if not total:
            return
        chunks = self._chunks(node)
        growth = 0
        pos = 0
        while pos < total:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, total - pos)
            chunk = chunks.get(idx)
            growth += max(0, coff + n - (0 if chunk is None else len(chunk)))
            pos += n
        if self._used + growth > self.max_bytes:
            raise _err(errno.ENOSPC)
        node.blocks = -1
        pos = 0
        while pos < total:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, total - pos)
            chunk = chunks.get(idx)
            if chunk is None:
                chunk = chunks[idx] = bytearray()
            if len(chunk) < coff:
                chunk.extend(bytes(coff - len(chunk)))
            chunk[coff:coff + n] = data[pos:pos + n]
            pos += n
        self._used += growth
        node.size = max(node.size, off + total)

    def _zero_range(self, node: _Inode, off: int, end: int) -> None:
        """Make [off, end) read as zeros; whole chunks become holes."""
        chunks = node.chunks
        if not chunks or end <= off:
            return
        node.blocks = -1
        for idx in [i for i in chunks if off < (i + 1) * CHUNK_SIZE and i * CHUNK_SIZE < end]:
            chunk = chunks[idx]
            base = idx * CHUNK_SIZE
            a = max(off - base, 0)
            b = min(end - base, len(chunk))
            if a == 0 and b >= len(chunk):
                self._used -= len(chunk)
                del chunks[idx]
                continue
            if a < b:
                chunk[a:b] = bytes(b - a)
            if chunk.count(0) == len(chunk):
                self._used -= len(chunk)
                del chunks[idx]
            elif b == len(chunk) and a < b:
                # trailing zeros need not be stored
                stripped = len(chunk.rstrip(b"\0"))
                self._used -= len(chunk) - stripped
                del chunk[stripped:]

    def _set_size(self, node: _Inode, size: int) -> None:
        if size < node.size and node.chunks:
            self._zero_range(node, size, node.size)
        node.size = size
