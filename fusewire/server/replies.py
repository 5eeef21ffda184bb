"""Reply bodies built from the values handlers return.

The fixed structs come from the schemas' derived codecs
(:data:`fusewire.structs.codec.CODECS`); the dispatcher adds the out header through
:meth:`fusewire.connection.Connection.reply` (or, on its fused GETATTR/LOOKUP fast
paths, packs header and body in one format derived from the same codecs).
"""

from __future__ import annotations

import os

from fusewire.opcodes.flags import FOPEN
from fusewire.structs.codec import CODECS
from fusewire.types import EntryAttributes, FileInfo
from fusewire.types import timeout_parts as _ts

__all__ = ["attr_fields", "attr_out_bytes", "entry_bytes", "open_out_bytes", "open_out_fields",
           "statx_bytes"]

_ENTRY = CODECS["entry_out"].struct
_ATTR_OUT = CODECS["attr_out"].struct
_OPEN_OUT = CODECS["open_out"].struct
_STATX_OUT = CODECS["statx_out"].struct
_NS = 1_000_000_000


def attr_fields(a: EntryAttributes) -> tuple[int, ...]:
    """fuse_attr's fields for ``a``, in order (for a codec's or a fused format's pack)."""
    # // and % rather than divmod: the same floor semantics, no call and no tuple
    at = a.st_atime_ns
    mt = a.st_mtime_ns
    ct = a.st_ctime_ns
    return (a.st_ino, a.st_size, a.st_blocks, (at // _NS) & 0xFFFFFFFFFFFFFFFF,
            (mt // _NS) & 0xFFFFFFFFFFFFFFFF, (ct // _NS) & 0xFFFFFFFFFFFFFFFF, at % _NS,
            mt % _NS, ct % _NS, a.st_mode, a.st_nlink, a.st_uid, a.st_gid,
            a.st_rdev & 0xFFFFFFFF, a.st_blksize, a.attr_flags)


def entry_bytes(a: EntryAttributes) -> bytes:
    """fuse_entry_out (full size) for ``a``."""
    ev, evn = _ts(a.entry_timeout)
    av, avn = _ts(a.attr_timeout)
    return _ENTRY.pack(a.st_ino, a.generation, ev, av, evn, avn, *attr_fields(a))


def attr_out_bytes(a: EntryAttributes) -> bytes:
    """fuse_attr_out (full size) for ``a``."""
    av, avn = _ts(a.attr_timeout)
    return _ATTR_OUT.pack(av, avn, 0, *attr_fields(a))


#: FileInfo attribute -> FOPEN bit in fuse_open_out.open_flags (plain ints: an
#: ``int | IntFlag`` builds an IntFlag, ~1 µs, and this runs on every OPEN and CREATE)
_FOPEN_FIELDS: tuple[tuple[str, int], ...] = tuple((name, int(bit)) for name, bit in (
    ("direct_io", FOPEN.DIRECT_IO), ("keep_cache", FOPEN.KEEP_CACHE),
    ("nonseekable", FOPEN.NONSEEKABLE), ("cache_dir", FOPEN.CACHE_DIR),
    ("stream", FOPEN.STREAM), ("noflush", FOPEN.NOFLUSH),
    ("parallel_direct_writes", FOPEN.PARALLEL_DIRECT_WRITES),
    ("passthrough", FOPEN.PASSTHROUGH),
))


def open_out_fields(fi: FileInfo | int) -> tuple[int, int, int]:
    """fuse_open_out's fields (fh, open_flags, backing_id) for a FileInfo (or a bare fh)."""
    if isinstance(fi, int):
        return fi, 0, 0
    flags = 0
    for name, bit in _FOPEN_FIELDS:
        if getattr(fi, name):
            flags |= bit
    return fi.fh, flags, fi.backing_id if fi.passthrough else 0


def open_out_bytes(fi: FileInfo | int) -> bytes:
    """fuse_open_out for a FileInfo (or a bare fh)."""
    return _OPEN_OUT.pack(*open_out_fields(fi))


def statx_bytes(st: EntryAttributes) -> bytes:
    """``fuse_statx_out`` for ``st`` (what ``_op_statx`` sends)."""
    av, avn = _ts(st.attr_timeout)

    def sx(ns: int) -> tuple[int, int, int]:
        s, n = divmod(ns, _NS)
        return s, n, 0

    rdev = st.st_rdev
    return _STATX_OUT.pack(
        av, avn, 0, 0, 0,
        0x0FFF, st.st_blksize, 0, st.st_nlink, st.st_uid, st.st_gid, st.st_mode & 0xFFFF, 0,
        st.st_ino, st.st_size, st.st_blocks, 0,
        *sx(st.st_atime_ns), *sx(st.st_birthtime_ns), *sx(st.st_ctime_ns),
        *sx(st.st_mtime_ns), os.major(rdev), os.minor(rdev), 0, 0, *(0,) * 14)
