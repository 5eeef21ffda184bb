"""One-line rendering of requests and replies (``-d`` debug trace, ``fusewire dump``).

Everything comes from the opcode table and the records: the opcode's name,
its struct's fields, and flag fields decoded through their IntFlag family.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Callable
from typing import Any

from fusewire.connection import Request
from fusewire.handles import HandleEntry
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
    Opcode,
)
from fusewire.structs.records import AttrOut, Entry2Out, EntryOut, OpenOut, StatxOut
from fusewire.wire import (
    EntryWithHandle,
    KernelRuleError,
    SessionLike,
    decode_reply,
    make_session,
    reply_header,
)

__all__ = ["FLAG_FIELDS", "flag_str", "format_fields", "format_reply", "format_request",
           "open_flags_str", "reply_text", "request_text"]

#: the session a trace line decodes replies for when its caller names none
_DEFAULT_SESSION = make_session()

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


#: open(2) flags as they appear in OPEN/CREATE requests (access mode apart)
_O_FLAGS = (*((name, getattr(os, name)) for name in (
    "O_TMPFILE", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK",
    "O_DSYNC", "O_DIRECT", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_SYNC",
    "O_PATH") if getattr(os, name, 0)),
    # the kernel sets it on every open of a 64-bit process; libc defines it as 0 there
    ("O_LARGEFILE", 0o100000))
_O_ACC = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}
#: records whose ``flags`` field holds open(2) flags
_OPEN_FLAG_RECORDS = frozenset({"OpenIn", "CreateIn"})


def open_flags_str(value: int) -> str:
    """``O_RDWR|O_CREAT|O_LARGEFILE`` for open(2) flags (unknown bits in hex)."""
    names = [_O_ACC.get(value & os.O_ACCMODE, hex(value & os.O_ACCMODE))]
    known = os.O_ACCMODE
    for name, bit in _O_FLAGS:
        if (value & bit) == bit and (known & bit) != bit:
            names.append(name)
            known |= bit
    if value & ~known:
        names.append(hex(value & ~known))
    return "|".join(names)


def flag_str(family: type[enum.IntFlag], value: int) -> str:
    """``A|B|0x40`` for ``value`` in ``family`` (unknown bits in hex), ``0`` for none."""
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
        if name == "flags" and cls in _OPEN_FLAG_RECORDS and isinstance(value, int):
            parts.append(f"{name}={open_flags_str(value)}")
        elif family is not None and isinstance(value, int):
            parts.append(f"{name}={flag_str(family, value)}")
        elif hasattr(value, "_fields"):
            parts.append(f"{name}={{{format_fields(value)}}}")
        elif name in ("mode",) and isinstance(value, int):
            parts.append(f"{name}={value:#o}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def request_text(req: Request, name: Callable[[bytes], str] = repr) -> str:
    """``uid=0 gid=0 pid=1 {fields} b'name' +N bytes``: a request after its header.

    INIT's flags and flags2 are shown as one 64-bit set.  ``name`` renders
    each NUL-terminated name (``fusewire dump`` decodes them as paths).
    """
    line = f"uid={req.uid} gid={req.gid} pid={req.pid}"
    a: Any = req.arg
    if a is not None:
        if req.opcode == Opcode.INIT:
            offered = a.flags | (a.flags2 << 32 if a.minor >= 36 else 0)
            line += (f" {{major={a.major} minor={a.minor} max_readahead={a.max_readahead} "
                     f"flags={flag_str(InitFlag, offered)}}}")
        else:
            line += f" {{{format_fields(a)}}}"
    if req.names:
        line += " " + " ".join(name(n) for n in req.names)
    data = req.data
    if isinstance(data, memoryview) and len(data):
        line += f" +{len(data)} bytes"
    elif isinstance(data, tuple) and data:
        line += f" {list(data)[:8]}{'...' if len(data) > 8 else ''}"
    if req.ext is not None:
        line += f" ext(groups={list(req.ext.groups)} secctx={len(req.ext.secctx)})"
    return line


def format_request(req: Request) -> str:
    """``unique=0x4 GETATTR nodeid=1 uid=0 ... {getattr_flags=0 fh=0}``."""
    resent = " RESENT" if req.unique >> 63 else ""
    return (f"unique={req.unique & ((1 << 63) - 1):#x}{resent} {req.info.name} "
            f"nodeid={req.nodeid} {request_text(req)}")


def format_reply(req: Request, bufs: list[Any] | None, session: SessionLike | None = None
                 ) -> str:
    """``   unique=0x4 -> OK 104 bytes {...}`` or ``-> ENOENT``.

    The body is decoded by the one reply decoder (:func:`fusewire.wire.decode_reply`)
    for ``session`` (default: the current minor with every flag); a body that
    decoder refuses is shown by its size only.
    """
    if bufs is None:
        return f"   unique={req.unique:#x} (no reply)"
    raw = b"".join(bytes(b) for b in bufs)  # the hot path packs header + struct as one
    size, err, _unique = reply_header(raw)
    if err:
        return f"   unique={req.unique:#x} -> {errno.errorcode.get(-err, str(-err))}"
    line = f"   unique={req.unique:#x} -> OK {size - 16} bytes"
    try:
        decoded = decode_reply(session or _DEFAULT_SESSION, req.opcode, req.arg, raw[16:],
                               check=False)
    except KernelRuleError:
        return line
    fields = reply_text(decoded)
    return f"{line} {{{fields}}}" if fields else line


def _entry_text(entry: Any) -> str:
    text = f"nodeid={entry.nodeid} generation={entry.generation}"
    attr = getattr(entry, "attr", None)
    return f"{text} mode={attr.mode:#o}" if attr is not None else text


def reply_text(decoded: Any) -> str:
    """The fields worth a trace line in a decoded reply (by the decoded value's type).

    Entries show nodeid, generation and mode (and the open struct of a
    create); attributes show nothing (the size says enough); other records
    their fields; data, listings and empty replies nothing.
    """
    if isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[1], OpenOut):
        return f"{reply_text(decoded[0])} {format_fields(decoded[1])}"
    if isinstance(decoded, EntryWithHandle | HandleEntry):
        return _entry_text(decoded.entry)
    if isinstance(decoded, EntryOut | Entry2Out):
        return _entry_text(decoded)
    if isinstance(decoded, AttrOut | StatxOut) or not hasattr(decoded, "_fields"):
        return ""
    return format_fields(decoded)
