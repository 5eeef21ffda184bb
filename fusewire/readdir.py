"""Directory listing: packing dirent / direntplus records into one reply.

Records are packed into one ``bytearray`` in place (no quadratic copies):
``fuse_dirent {ino, off, namelen, type}`` + name, zero-padded to 8 bytes;
READDIRPLUS prefixes each with a ``fuse_entry_out``.  A record is one
``struct`` pack (header, name and padding together, with a format cached per
name length); :meth:`ReaddirToken.add_names` packs a whole READDIR reply in one
call frame and joins it once.  A record never
splits; when the next one does not fit, :meth:`ReaddirToken.add` returns
False and the entry is not sent, so it is not counted as a lookup.
"""

from __future__ import annotations

import stat
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable

from fusewire.structs.codec import CODECS
from fusewire.types import EntryAttributes

__all__ = ["PackedListing", "ReaddirToken", "dirent_type"]

_DIRENT = CODECS["dirent"].struct
_NO_ENTRY = bytes(CODECS["entry_out"].size)
#: records are 8-byte aligned and the fixed parts (24 and 24 + 128 bytes) are
#: multiples of 8, so a name of length n is followed by (8 - n) & 7 zero bytes
_MAX_NAME = 1024


class _RecordPacks(dict[int, Callable[..., bytes]]):
    """name length -> ``pack(ino, off, namelen, type, name)`` of a whole padded
    dirent record (the dirent format from the codecs + the name + zero padding)."""

    def __missing__(self, namelen: int) -> Callable[..., bytes]:
        fmt = _DIRENT.format + str(namelen) + "s" + str((8 - namelen) & 7) + "x"
        pack = self[namelen] = struct.Struct(fmt).pack
        return pack


_RECORD = _RecordPacks()


class PackedListing:
    """The READDIR records of a whole directory, packed once.

    For a filesystem that lists the same unchanged directory many times: build
    one from ``(name, ino, mode, next_id)`` entries in ascending ``next_id``
    order, keep it until the directory changes, and answer each READDIR with
    :meth:`ReaddirToken.add_listing`, which copies the records that fit in one
    slice (no per-entry work).  ``blob`` holds the records, ``ends[i]`` is the
    end offset of record ``i`` and ``cookies[i]`` its ``next_id``.
    """

    __slots__ = ("blob", "cookies", "ends")

    def __init__(self, entries: Iterable[tuple[bytes, int, int, int]]) -> None:
        records = _RECORD
        parts: list[bytes] = []
        append = parts.append
        ends = array("Q")
        cookies = array("Q")
        end = 0
        last = -1
        for name, ino, mode, next_id in entries:
            namelen = len(name)
            if not name or namelen > _MAX_NAME or b"/" in name:
                raise ValueError(f"invalid directory entry name {name!r}")
            if next_id <= last:
                raise ValueError(f"next_id {next_id} after {last}: cookies must ascend")
            last = next_id
            end += (31 + namelen) & ~7
            append(records[namelen](ino, next_id, namelen, (mode & 0o170000) >> 12, name))
            ends.append(end)
            cookies.append(next_id)
        self.blob = b"".join(parts)
        self.ends = ends
        self.cookies = cookies

    def __len__(self) -> int:
        return len(self.ends)


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
        """Append an entry; return False (and drop it) when it does not fit.

        ``next_id`` is the offset (cookie) from which a later call resumes
        after this entry.
        """
        if not self.plus:
            return self.add_name(name, attr.st_ino, attr.st_mode, next_id)
        ino = attr.st_ino
        counted = bool(ino) and name != b"." and name != b".."
        if counted:
            assert self._entry is not None
            entry = self._entry(attr)
        else:
            entry = _NO_ENTRY  # nodeid 0: the kernel takes no reference
        if not self._append(entry, name, ino, attr.st_mode, next_id):
            return False
        if counted:
            self.counted.append(ino)
        return True

    def add_name(self, name: bytes, ino: int, mode: int, next_id: int) -> bool:
        """Like :meth:`add` without attributes: enough for READDIR (``plus`` false).

        Saves building an :class:`EntryAttributes` per entry.  When ``plus``
        is true the kernel wants attributes: use :meth:`add` (this raises).
        """
        if self.plus:
            raise ValueError("READDIRPLUS entries need attributes: use add()")
        namelen = len(name)
        if not name or namelen > _MAX_NAME or b"/" in name:
            raise ValueError(f"invalid directory entry name {name!r}")
        buf = self.buf
        if len(buf) + ((31 + namelen) & ~7) > self.size:
            return False
        buf += _RECORD[namelen](ino, next_id, namelen, (mode & 0o170000) >> 12, name)
        self._count += 1
        return True

    def add_names(self, entries: Iterable[tuple[bytes, int, int, int]]) -> bool:
        """:meth:`add_name` for many ``(name, ino, mode, next_id)`` entries at once.

        Packs them in one call frame and appends the records with one join;
        returns False when an entry did not fit (it and the rest of
        ``entries`` are not sent; the iterator has consumed that one entry),
        True when all were added.  A subclass that overrides :meth:`add_name`
        gets one :meth:`add_name` call per entry instead.  An invalid name raises ValueError before
        anything of this call is added.
        """
        if type(self).add_name is not ReaddirToken.add_name:
            # a subclass that collects entries its own way (testing.ListingToken)
            add_name = self.add_name
            return all(add_name(name, ino, mode, next_id) for name, ino, mode, next_id in entries)
        if self.plus:
            raise ValueError("READDIRPLUS entries need attributes: use add()")
        room = self.size - len(self.buf)
        records = _RECORD
        parts: list[bytes] = []
        append = parts.append
        fitted = True
        for name, ino, mode, next_id in entries:
            namelen = len(name)
            if not name or namelen > _MAX_NAME or b"/" in name:
                raise ValueError(f"invalid directory entry name {name!r}")
            room -= (31 + namelen) & ~7
            if room < 0:
                fitted = False
                break
            append(records[namelen](ino, next_id, namelen, (mode & 0o170000) >> 12, name))
        if parts:
            self.buf += b"".join(parts)
            self._count += len(parts)
        return fitted

    def add_listing(self, listing: PackedListing, after: int) -> bool | None:
        """Add the records of ``listing`` whose cookie is > ``after``, as many as fit.

        Returns True when the listing's end was reached, False when a record
        did not fit, and None (adding nothing) when this token cannot take
        packed records: a READDIRPLUS token, or a subclass that overrides
        :meth:`add_name`; then add the entries one by one.
        """
        if self.plus or type(self).add_name is not ReaddirToken.add_name:
            return None
        ends = listing.ends
        n = len(ends)
        i = bisect_right(listing.cookies, after)
        if i >= n:
            return True
        start = ends[i - 1] if i else 0
        buf = self.buf
        j = bisect_right(ends, start + self.size - len(buf), i)
        if j > i:
            buf += memoryview(listing.blob)[start:ends[j - 1]]
            self._count += j - i
        return j == n

    def _append(self, entry: bytes, name: bytes, ino: int, mode: int, next_id: int) -> bool:
        """``entry`` (READDIRPLUS's entry_out, or nothing) + fuse_dirent + name + padding."""
        namelen = len(name)
        if not name or namelen > _MAX_NAME or b"/" in name:
            raise ValueError(f"invalid directory entry name {name!r}")
        buf = self.buf
        if len(buf) + len(entry) + ((31 + namelen) & ~7) > self.size:
            return False
        buf += entry
        buf += _RECORD[namelen](ino, next_id, namelen, (mode & 0o170000) >> 12, name)
        self._count += 1
        return True

    def __len__(self) -> int:
        return self._count
