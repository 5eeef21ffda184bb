"""One-line rendering of requests and replies (``-d`` debug trace, ``fusewire dump``).

Everything comes from the opcode table and the records: the opcode's name,
its struct's fields, and flag fields decoded through their IntFlag family.
"""

from __future__ import annotations

import enum
import errno
import struct
from typing import Any

from fusewire.connection import Request
from fusewire.opcodes.flags import (
    FATTR,
    FOPEN,
    FSYNC,
    GETATTR,
    IOCTL,
    LK,
    OPEN_IN,
    POLL,
    READ,
    RELEASE,
    RENAME,
    SETXATTR,
    WRITE,
    InitFlag,
)

__all__ = ["FLAG_FIELDS", "format_fields", "format_reply", "format_request"]

#: (struct field name) -> the IntFlag family that decodes it
FLAG_FIELDS: dict[str, type[enum.IntFlag]] = {
    "valid": FATTR,
    "open_flags": OPEN_IN,
    "release_flags": RELEASE,
    "getattr_flags": GETATTR,
    "lk_flags": LK,
    "write_flags": WRITE,
    "read_flags": READ,
    "fsync_flags": FSYNC,
    "setxattr_flags": SETXATTR,
}
_CONTEXT_FLAGS: dict[tuple[str, str], type[enum.IntFlag]] = {
    ("IoctlIn", "flags"): IOCTL,
    ("PollIn", "flags"): POLL,
    ("Rename2In", "flags"): RENAME,
    ("InitIn", "flags"): InitFlag,
    ("OpenOut", "open_flags"): FOPEN,
}


def _flag_str(family: type[enum.IntFlag], value: int) -> str:
    if not value:
        return "0"
    known = 0
    names = []
    for member in family:
        if member.value and value & member.value == member.value:
            names.append(member.name or "?")
            known |= member.value
    rest = value & ~known
    if rest:
        names.append(hex(rest))
    return "|".join(names)


def format_fields(rec: Any) -> str:
    """``name=value`` pairs of a record, flag fields decoded, zero padding skipped."""
    if rec is None:
        return ""
    cls = type(rec).__name__
    parts = []
    for name, value in zip(rec._fields, rec, strict=True):
        if name in ("padding", "dummy", "unused", "spare", "spare2", "spare0") and not any(
                value if isinstance(value, tuple) else (value,)):
            continue
        family = _CONTEXT_FLAGS.get((cls, name)) or FLAG_FIELDS.get(name)
        if family is not None and isinstance(value, int):
            parts.append(f"{name}={_flag_str(family, value)}")
        elif hasattr(value, "_fields"):
            parts.append(f"{name}={{{format_fields(value)}}}")
        elif name in ("mode",) and isinstance(value, int):
            parts.append(f"{name}={value:#o}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def format_request(req: Request) -> str:
    """``unique=0x4 GETATTR nodeid=1 uid=0 ... {getattr_flags=0 fh=0}``."""
    resent = " RESENT" if req.unique >> 63 else ""
    line = (f"unique={req.unique & ((1 << 63) - 1):#x}{resent} {req.info.name} "
            f"nodeid={req.nodeid} uid={req.uid} gid={req.gid} pid={req.pid}")
    if req.arg is not None:
        line += f" {{{format_fields(req.arg)}}}"
    if req.names:
        line += " " + " ".join(repr(n) for n in req.names)
    data = req.data
    if isinstance(data, memoryview) and len(data):
        line += f" +{len(data)} bytes"
    elif isinstance(data, tuple) and data:
        line += f" {list(data)[:8]}{'...' if len(data) > 8 else ''}"
    if req.ext is not None:
        line += f" ext(groups={list(req.ext.groups)} secctx={len(req.ext.secctx)})"
    return line


def format_reply(req: Request, bufs: list[Any] | None) -> str:
    """``   unique=0x4 -> OK 104 bytes`` or ``-> ENOENT``."""
    if bufs is None:
        return f"   unique={req.unique:#x} (no reply)"
    size, err, _unique = struct.unpack_from("<IiQ", bytes(bufs[0][:16]))
    if err:
        name = errno.errorcode.get(-err, str(-err))
        return f"   unique={req.unique:#x} -> {name}"
    return f"   unique={req.unique:#x} -> OK {size - 16} bytes"
