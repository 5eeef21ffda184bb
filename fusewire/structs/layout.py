"""Struct sizes that depend on the negotiated session, declared as data.

Old kernels send and expect shorter versions of some structs.  Instead of
``if minor < 9`` branches spread through the code, each such struct lists
``(since_minor, size)`` steps here, and :func:`sizes_for` turns a negotiated
minor and flag set into one ``{schema name: size}`` table that the
connection looks up per request.  A shorter struct is decoded as if the
missing tail were zero (what the kernel does) and encoded by truncation.
"""

from __future__ import annotations

from typing import Any

from fusewire.opcodes.flags import InitFlag
from fusewire.structs.codec import CODECS, Codec
from fusewire.structs.schemas import FIXED

__all__ = ["FLAG_SIZES", "MINOR_SIZES", "decode_sized", "encode_sized", "sizes_for", "struct_size"]

#: ``schema -> ((since_minor, size), ...)``, ascending; the last step <= minor wins.
MINOR_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "entry_out": ((0, 120), (9, 128)),  # FUSE_COMPAT_ENTRY_OUT_SIZE
    "attr_out": ((0, 96), (9, 104)),  # FUSE_COMPAT_ATTR_OUT_SIZE
    "direntplus": ((0, 144), (9, 152)),  # entry_out inside (READDIRPLUS is 7.21 anyway)
    "write_in": ((0, 24), (9, 40)),  # FUSE_COMPAT_WRITE_IN_SIZE
    "read_in": ((0, 24), (9, 40)),
    "getattr_in": ((0, 0), (9, 16)),  # no in-arg before 7.9
    "mknod_in": ((0, 8), (12, 16)),  # FUSE_COMPAT_MKNOD_IN_SIZE
    "create_in": ((0, 8), (12, 16)),  # fuse_open_in before 7.12
    "init_in": ((0, 16), (36, 64)),  # flags2 + unused[] since 7.36
    "init_out": ((0, 8), (5, 24), (23, 64)),  # COMPAT_INIT_OUT / COMPAT_22_INIT_OUT
    "init_out_v2": ((0, 8), (5, 24), (23, 64)),
    "statfs_out": ((0, 48), (4, 80)),  # FUSE_COMPAT_STATFS_SIZE
}

#: ``schema -> (flag, size without the flag, size with it)``.
FLAG_SIZES: dict[str, tuple[InitFlag, int, int]] = {
    "setxattr_in": (InitFlag.SETXATTR_EXT, 8, 16),  # FUSE_COMPAT_SETXATTR_IN_SIZE
}


def struct_size(name: str, minor: int, flags: int) -> int:
    """Size of struct ``name`` on the wire for a session at ``minor`` with ``flags``."""
    if name in FLAG_SIZES:
        flag, without, with_ = FLAG_SIZES[name]
        return with_ if flags & flag else without
    steps = MINOR_SIZES.get(name)
    if steps is None:
        return CODECS[name].size
    size = steps[0][1]
    for since, step_size in steps:
        if minor >= since:
            size = step_size
    return size


def sizes_for(minor: int, flags: int) -> dict[str, int]:
    """The whole size table for one negotiated session."""
    return {name: struct_size(name, minor, flags) for name in FIXED}


def decode_sized(codec: Codec[Any], buf: bytes | bytearray | memoryview, offset: int,
                 size: int) -> Any:
    """Decode ``size`` bytes (possibly a compat prefix) as ``codec``'s record."""
    if size == codec.size:
        return codec.decode(buf, offset)
    padded = bytes(buf[offset:offset + size]) + bytes(codec.size - size)
    return codec.decode(padded)


def encode_sized(codec: Codec[Any], rec: Any, size: int) -> bytes:
    """Encode ``rec`` and truncate it to the session's ``size``."""
    data = codec.encode(rec)
    return data if size == codec.size else data[:size]
