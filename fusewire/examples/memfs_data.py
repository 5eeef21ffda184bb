"""MemFS's file data and the operations on it: read, write, fallocate, lseek, copy.

A regular file's ``_Inode.data`` is a sparse dict of 64 KiB chunks (a missing
chunk is a hole).  Where the chunks live depends on the store:

* on the heap (a plain mount): each chunk is a ``bytearray`` as long as its
  last written byte;
* in a :class:`~fusewire.examples.memfs_blocks.BlockStore` (a recoverable
  mount, see ``MemFS.recovery_fds``): each chunk is an int naming a block of
  a memfd that outlives the server and how many of its bytes are valid.
  While a successor replays the journal (``_replaying``) the data is already
  in the memfd: the operations only redo the bookkeeping (block allocation,
  lengths, sizes) and touch no byte.  No decision depends on the bytes, so
  the replay allocates exactly what the live server did.

The byte count (chunk lengths and xattrs) is held against ``max_bytes``.
:class:`MemFSData` is a mixin of :class:`fusewire.examples.memfs.MemFS`.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from typing import TYPE_CHECKING

from fusewire.examples.memfs_blocks import LEN_BITS, LEN_MASK, BlockStore
from fusewire.examples.memfs_nodes import (
    _BLOCK,
    CHUNK_SIZE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    OFFSET_MAX,
    SEEK_DATA,
    SEEK_HOLE,
    _err,
    _Inode,
    _now,
)

if TYPE_CHECKING:
    from fusewire.examples.memfs_nodes import _Handle
    from fusewire.types import RequestContext

__all__ = ["MemFSData"]

#: what a replayed copy passes as data (only its length counts)
_ZEROS = memoryview(bytes(CHUNK_SIZE))


class MemFSData:
    """File data of MemFS (a mixin; MemFS sets the attributes)."""

    _used: int          # bytes held in chunks and xattrs
    max_bytes: int      # ENOSPC beyond this
    _lock: threading.RLock
    _replaying: bool
    #: where chunks live: None on the heap, else a memfd of blocks
    _store: BlockStore | None

    if TYPE_CHECKING:
        def _file_handle(self, fh: int, write: bool) -> tuple[_Handle, _Inode]: ...
        def _handle(self, fh: int) -> _Handle: ...
        def _get(self, ino: int) -> _Inode: ...
        def _immutable(self, node: _Inode, *, append_ok: bool = False) -> None: ...
        def _touch_atime(self, node: _Inode) -> None: ...
        @staticmethod
        def _kill_suid(node: _Inode, writer: RequestContext | None = None) -> None: ...

    # -- chunks ----------------------------------------------------------------------

    def _chunk_len(self, chunk: bytearray | int) -> int:
        return chunk & LEN_MASK if isinstance(chunk, int) else len(chunk)

    def _data_bytes(self, node: _Inode) -> int:
        """Bytes ``node``'s chunks count against ``max_bytes``."""
        chunks = node.chunks
        if not chunks:
            return 0
        if self._store is not None:
            return sum(c & LEN_MASK for c in chunks.values())
        return sum(len(c) for c in chunks.values())

    def _data_blocks(self, node: _Inode) -> int:
        """st_blocks (512-byte units) of ``node``'s chunks: 4 KiB pages in use."""
        chunks = node.chunks
        if not chunks:
            return 0
        return sum((self._chunk_len(c) + _BLOCK - 1) // _BLOCK
                   for c in chunks.values()) * (_BLOCK // 512)

    def _free_data(self, node: _Inode) -> None:
        """``node`` is gone: its bytes no longer count, its blocks are released."""
        chunks = node.chunks
        if not chunks:
            return
        self._used -= self._data_bytes(node)
        store = self._store
        if store is not None:
            for c in chunks.values():
                store.release(c >> LEN_BITS)
        node.data = None

    # -- bytes -------------------------------------------------------------------------

    def _read_data(self, node: _Inode, off: int, size: int) -> bytes | bytearray:
        """``size`` bytes at ``off`` (short at EOF), holes as zeros, copied once."""
        if off >= node.size or size <= 0:
            return b""
        size = min(size, node.size - off)
        chunks = node.chunks
        if not chunks:
            return bytes(size)
        store = self._store
        m = store.mapped() if store is not None else None
        idx, coff = divmod(off, CHUNK_SIZE)
        chunk = chunks.get(idx)
        if chunk is not None and coff + size <= self._chunk_len(chunk):
            if m is None:
                piece: bytearray = chunk[coff:coff + size]     # one copy
                return piece
            base = (chunk >> LEN_BITS) * CHUNK_SIZE + coff
            return m[base:base + size]
        pieces: list[bytes | memoryview] = []  # views of the chunks, zeros for holes
        pos = 0
        while pos < size:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, size - pos)
            chunk = chunks.get(idx)
            got = 0
            if chunk is not None:
                length = self._chunk_len(chunk)
                if coff < length:
                    got = min(n, length - coff)
                    if m is None:
                        pieces.append(memoryview(chunk)[coff:coff + got])
                    else:
                        base = (chunk >> LEN_BITS) * CHUNK_SIZE + coff
                        pieces.append(m[base:base + got])
            if got < n:
                pieces.append(bytes(n - got))
            pos += n
        return b"".join(pieces)  # the one copy (the views die with ``pieces``)

    def _write_data(self, node: _Inode, off: int, data: bytes | bytearray | memoryview) -> None:
        total = len(data)
        if not total:
            return
        chunks = node.chunks
        if chunks is None:
            chunks = node.data = {}
        growth = 0
        pos = 0
        while pos < total:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, total - pos)
            chunk = chunks.get(idx)
            growth += max(0, coff + n - (0 if chunk is None else self._chunk_len(chunk)))
            pos += n
        if self._used + growth > self.max_bytes:
            raise _err(errno.ENOSPC)
        node.blocks = -1
        if self._store is not None:
            self._write_blocks(chunks, off, data)
        else:
            self._write_heap(chunks, off, data)
        self._used += growth
        node.size = max(node.size, off + total)

    @staticmethod
    def _write_heap(chunks: dict[int, bytearray], off: int,
                    data: bytes | bytearray | memoryview) -> None:
        total = len(data)
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

    def _write_blocks(self, chunks: dict[int, int], off: int,
                      data: bytes | bytearray | memoryview) -> None:
        store = self._store
        assert store is not None
        bytes_too = not self._replaying     # a replay finds the bytes in place
        m = store.mapped() if bytes_too else None
        total = len(data)
        pos = 0
        while pos < total:
            idx, coff = divmod(off + pos, CHUNK_SIZE)
            n = min(CHUNK_SIZE - coff, total - pos)
            chunk = chunks.get(idx)
            if chunk is None:
                block, length = store.alloc(), 0
                if m is not None:
                    m = store.map      # alloc may have grown (remapped) the memfd
            else:
                block, length = chunk >> LEN_BITS, chunk & LEN_MASK
            if m is not None:
                base = block * CHUNK_SIZE
                if length < coff:           # bytes past the length are undefined
                    m[base + length:base + coff] = bytes(coff - length)
                m[base + coff:base + coff + n] = data[pos:pos + n]
            chunks[idx] = block << LEN_BITS | max(length, coff + n)
            pos += n

    def _zero_range(self, node: _Inode, off: int, end: int) -> None:
        """Make [off, end) read as zeros; whole chunks become holes."""
        chunks = node.chunks
        if not chunks or end <= off:
            return
        node.blocks = -1
        store = self._store
        m = store.mapped() if store is not None and not self._replaying else None
        for idx in [i for i in chunks if off < (i + 1) * CHUNK_SIZE and i * CHUNK_SIZE < end]:
            base = idx * CHUNK_SIZE
            if store is not None:
                c: int = chunks[idx]
                block, length = c >> LEN_BITS, c & LEN_MASK
                a = max(off - base, 0)
                b = min(end - base, length)
                if a == 0 and b >= length:
                    self._used -= length
                    del chunks[idx]
                    store.release(block)
                elif a < b and b == length:         # the tail: shorter (no byte written)
                    self._used -= length - a
                    chunks[idx] = block << LEN_BITS | a
                elif a < b and m is not None:
                    m[block * CHUNK_SIZE + a:block * CHUNK_SIZE + b] = bytes(b - a)
                continue
            chunk: bytearray = chunks[idx]
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

    def _copy_data(self, src: _Inode, off_in: int, dst: _Inode, off_out: int, n: int) -> None:
        """Copy ``n`` bytes (within the source EOF), keeping holes as holes."""
        chunks = src.chunks or {}
        pos = 0
        while pos < n:
            idx, coff = divmod(off_in + pos, CHUNK_SIZE)
            step = min(CHUNK_SIZE - coff, n - pos)
            if idx in chunks:
                if self._replaying and self._store is not None:
                    # the bytes are in place: only the allocation is redone
                    self._write_data(dst, off_out + pos, _ZEROS[:step])
                else:
                    self._write_data(dst, off_out + pos,
                                     self._read_data(src, off_in + pos, step))
            else:
                self._zero_range(dst, off_out + pos, min(off_out + pos + step, dst.size))
            pos += step
        dst.size = max(dst.size, off_out + n)

    # -- operations ----------------------------------------------------------------------

    def read(self, fh: int, off: int, size: int) -> bytes | bytearray:
        """Read up to ``size`` bytes (holes read as zeros)."""
        with self._lock:
            h, node = self._file_handle(fh, write=False)
            if off < 0:
                raise _err(errno.EINVAL)
            data = self._read_data(node, off, size)
            if not h.flags & os.O_NOATIME:
                self._touch_atime(node)
            return data

    def write(self, fh: int, off: int, buf: memoryview) -> int:
        """Write at ``off`` (at end of file for O_APPEND handles)."""
        with self._lock:
            h, node = self._file_handle(fh, write=True)
            self._immutable(node, append_ok=bool(h.flags & os.O_APPEND))
            if h.flags & os.O_APPEND:
                off = node.size
            if off < 0:
                raise _err(errno.EINVAL)
            if off + len(buf) > OFFSET_MAX:
                raise _err(errno.EFBIG)
            self._write_data(node, off, buf)
            node.mtime = node.ctime = _now()
            return len(buf)

    def write_kill_suidgid(self, fh: int, ctx: RequestContext) -> None:
        """An unprivileged write is coming: clear the set-ID bits as write(2) does."""
        with self._lock:
            _, node = self._file_handle(fh, write=True)
            if node.mode & (stat.S_ISUID | stat.S_ISGID):
                self._kill_suid(node, ctx)
                node.ctime = _now()

    def fallocate(self, fh: int, mode: int, offset: int, length: int,
                  ctx: RequestContext) -> None:
        """Modes: 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE[|KEEP_SIZE]."""
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise _err(errno.EOPNOTSUPP)
        if mode & FALLOC_FL_PUNCH_HOLE and (not mode & FALLOC_FL_KEEP_SIZE
                                            or mode & FALLOC_FL_ZERO_RANGE):
            raise _err(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise _err(errno.EINVAL)
        with self._lock:
            _, node = self._file_handle(fh, write=True)
            if not stat.S_ISREG(node.mode):
                raise _err(errno.ENODEV)
            self._immutable(node, append_ok=mode & ~FALLOC_FL_KEEP_SIZE == 0)
            end = offset + length
            if end > OFFSET_MAX:
                raise _err(errno.EFBIG)
            now = _now()
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                self._zero_range(node, offset, min(end, node.size))
                node.mtime = node.ctime = now
            elif end - node.size > self.max_bytes - self._used:
                raise _err(errno.ENOSPC)
            if not mode & FALLOC_FL_KEEP_SIZE and end > node.size:
                node.size = end
                node.mtime = now
            node.ctime = now

    def lseek(self, fh: int, offset: int, whence: int, ctx: RequestContext) -> int:
        """SEEK_DATA / SEEK_HOLE over the chunk map (ENXIO at or past EOF)."""
        with self._lock:
            h = self._handle(fh)
            node = self._get(h.ino)
            size = node.size
            if whence == os.SEEK_SET:
                return offset
            if whence == os.SEEK_END:
                return size + offset
            if whence not in (SEEK_DATA, SEEK_HOLE):
                raise _err(errno.EINVAL)
            if offset < 0 or offset >= size:
                raise _err(errno.ENXIO)
            chunks = node.chunks or {}
            idx = offset // CHUNK_SIZE
            if whence == SEEK_DATA:
                if idx in chunks:
                    return offset
                later = [i for i in chunks if i > idx]
                if not later:
                    raise _err(errno.ENXIO)
                pos = min(later) * CHUNK_SIZE
                if pos >= size:
                    raise _err(errno.ENXIO)
                return pos
            while idx in chunks:
                idx += 1
            return min(max(offset, idx * CHUNK_SIZE), size)

    def copy_file_range(self, fh_in: int, off_in: int, inode_out: int, fh_out: int,
                        off_out: int, length: int, flags: int,
                        ctx: RequestContext) -> int:
        """Copy between two open files, keeping holes; bounded by the source EOF."""
        if flags:
            raise _err(errno.EINVAL)
        if off_in < 0 or off_out < 0 or length < 0:
            raise _err(errno.EINVAL)
        with self._lock:
            _, src = self._file_handle(fh_in, write=False)
            hout, dst = self._file_handle(fh_out, write=True)
            if hout.flags & os.O_APPEND:
                raise _err(errno.EBADF)
            self._immutable(dst)
            if not stat.S_ISREG(src.mode) or not stat.S_ISREG(dst.mode):
                raise _err(errno.EINVAL)
            n = max(0, min(length, src.size - off_in))
            if src is dst and off_in < off_out + n and off_out < off_in + n:
                raise _err(errno.EINVAL)
            if not n:
                return 0
            if off_out + n > OFFSET_MAX:
                raise _err(errno.EFBIG)
            self._copy_data(src, off_in, dst, off_out, n)
            dst.mtime = dst.ctime = _now()
            self._touch_atime(src)
            return n

