"""Directory listing: packing dirent / direntplus records into one reply.

Records are packed into one ``bytearray`` in place (no quadratic copies):
``fuse_dirent {ino, off, namelen, type}`` + name, zero-padded to 8 bytes;
READDIRPLUS prefixes each with a ``fuse_entry_out``.  A record never
splits; when the next one does not fit, :meth:`ReaddirToken.add` returns
False and the entry is not sent, so it is not counted as a lookup.
"""

from __future__ import annotations

import stat
from collections.abc import Callable

from fusewire.structs.codec import CODECS
from fusewire.types import EntryAttributes

__all__ = ["ReaddirToken", "dirent_type"]

_DIRENT = CODECS["dirent"].struct
_PACK_DIRENT_INTO = _DIRENT.pack_into


def dirent_type(mode: int) -> int:
    """DT_* of a mode: ``(mode & S_IFMT) >> 12``."""
    return stat.S_IFMT(mode) >> 12


class ReaddirToken:
    """Collects entries for one READDIR or READDIRPLUS reply.

    ``plus`` tells whether this is READDIRPLUS (entries carry attributes and
    count a lookup each, except "." and "..").  Filesystems call :meth:`add`
    until it returns False.
    """

    __slots__ = ("_count", "_entry", "buf", "counted", "plus", "size")

    def __init__(self, size: int, plus: bool,
                 entry_bytes: Callable[[EntryAttributes], bytes] | None = None) -> None:
        self.size = size
        self.plus = plus
        self.buf = bytearray()
        #: nodeids that READDIRPLUS entries handed to the kernel (one lookup each)
        self.counted: list[int] = []
        self._entry = entry_bytes
        self._count = 0

    def add(self, name: bytes, attr: EntryAttributes, next_id: int) -> bool:
        """Append an entry; return False (and drop it) when it does not fit."""
        namelen = len(name)
        if self.plus:
            reclen = (152 + namelen + 7) & ~7
        else:
            reclen = (24 + namelen + 7) & ~7
        buf = self.buf
        pos = len(buf)
        if pos + reclen > self.size:
            return False
        if not name or b"/" in name or namelen > 1024:
            raise ValueError(f"invalid directory entry name {name!r}")
        buf.extend(bytes(reclen))
        ino = attr.st_ino
        dtype = (attr.st_mode & 0o170000) >> 12
        if self.plus:
            assert self._entry is not None
            dot = name == b"." or name == b".."
            if ino and not dot:
                buf[pos:pos + 128] = self._entry(attr)
                self.counted.append(ino)
            _PACK_DIRENT_INTO(buf, pos + 128, ino, next_id, namelen, dtype)
            buf[pos + 152:pos + 152 + namelen] = name
        else:
            _PACK_DIRENT_INTO(buf, pos, ino, next_id, namelen, dtype)
            buf[pos + 24:pos + 24 + namelen] = name
        self._count += 1
        return True

    def __len__(self) -> int:
        return self._count
