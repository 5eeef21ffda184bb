"""The kernel's side of the wire, and the one reply decoder.

This is the *other* side of :mod:`fusewire.connection`, in the sans-IO core:
:func:`encode_request` builds a request exactly as Linux would send it at a
given minor (compat struct sizes from :mod:`fusewire.structs.layout`,
NUL-terminated names, ``total_extlen`` for an extension block), and
:func:`decode_reply` is the **only** reply decoder of fusewire: it reads the
reply shape from the session's opcode row (``reply``/``reply_struct``,
:mod:`fusewire.opcodes.table`), decodes with the schemas' derived
:data:`~fusewire.structs.codec.CODECS` (compat sizes by minor), hands replies
that carry a draft file handle to :mod:`fusewire.handles`, and checks the
body the way the kernel does (exact sizes per opcode and minor), raising
:class:`ReplySizeError` where the kernel's ``write(2)`` would fail with EINVAL
and :class:`ReplyRuleError` for well-sized but forbidden content.
:func:`decode_notify` does the same for notifications (protocol.md §9).

Its users: the emulator's checks (:mod:`fusewire.testing.emulator`), the debug
trace (:mod:`fusewire.server.trace`), ``fusewire dump`` and replay
(:mod:`fusewire.testing.dump`), and recovery's journal (:func:`reply_header`,
:func:`open_out_of`).  They render or act on the typed values it returns and
carry no switch on reply kinds of their own (``tests/test_decoder.py``).

Everything is pure; a "session" is either a negotiated
:class:`~fusewire.connection.Session` or a ``(minor, flags)`` pair.
"""

from __future__ import annotations

import errno
from typing import Any, NamedTuple

from fusewire import handles as _fh
from fusewire.connection import Session, unpack_u64s
from fusewire.opcodes.flags import (
    FUSE_KERNEL_VERSION,
    FUSE_ROOT_ID,
    IOCTL,
    NotifyCode,
    Opcode,
)
from fusewire.opcodes.table import (
    NOTIFICATIONS,
    OPS,
    OpInfo,
    Reply,
    Trailing,
    ops_for_profile,
    ops_where,
)
from fusewire.structs.codec import CODECS
from fusewire.structs.layout import decode_sized, encode_sized, sizes_for

__all__ = [
    "KERNEL_FLAGS",
    "NAME_MAX",
    "READLINK_MAX",
    "Dirent",
    "DirentPlus",
    "EntryWithHandle",
    "KernelRuleError",
    "ReplyRuleError",
    "ReplySizeError",
    "SessionLike",
    "decode_dirents",
    "decode_notify",
    "decode_reply",
    "decode_sub_reply",
    "open_out_of",
    "reply_header",
    "encode_init",
    "encode_request",
    "make_session",
    "split_reply",
]

#: What Linux 6.18 offers in INIT: flags | flags2 << 32 (protocol.md §3).
KERNEL_FLAGS = 0x73FFFFFB | (0x5FD << 32)
#: FUSE_NAME_MAX: the longest name the kernel accepts in a dirent or notification.
NAME_MAX = 1024
#: The buffer the kernel gives READLINK (PAGE_SIZE - 1).
READLINK_MAX = 4095

_HDR = CODECS["in_header"].struct
_OUT = CODECS["out_header"].struct
_OPEN_OUT = CODECS["open_out"].struct      # fh, open_flags, backing_id
_DIRENT = CODECS["dirent"].struct
_FORGET_ONE = CODECS["forget_one"].struct
_HANDLE_V2 = CODECS["file_handle_v2"].struct
_HANDLE_V3 = CODECS["file_handle_v3"].struct

SessionLike = Session | tuple[int, int]


class KernelRuleError(Exception):
    """A reply or notification the kernel would refuse; ``errno`` is what it would say."""

    errno: int = errno.EIO

    def __init__(self, msg: str, err: int | None = None) -> None:
        super().__init__(msg)
        if err is not None:
            self.errno = err


class ReplySizeError(KernelRuleError):
    """Wrong payload size or shape: the kernel fails the write with EINVAL (caller: EIO)."""

    errno = errno.EINVAL


class ReplyRuleError(KernelRuleError):
    """Well-sized but forbidden content (nodeid 0/1 from a create, '/' in a name...): EIO."""

    errno = errno.EIO


class EntryWithHandle(NamedTuple):
    """DRAFT profiles: an entry reply followed by a file handle."""

    entry: Any
    handle: bytes


class Dirent(NamedTuple):
    """One READDIR record."""

    ino: int
    off: int
    type: int
    name: bytes


class DirentPlus(NamedTuple):
    """One READDIRPLUS record: the entry_out (nodeid 0: no attributes) and the dirent."""

    entry: Any
    dirent: Dirent


def make_session(minor: int = 45, flags: int = KERNEL_FLAGS,
                 lookup_handle: str | None = None) -> Session:
    """A :class:`Session` at ``minor`` with ``flags`` (for tests and pure encoders)."""
    if minor < 36:
        flags &= 0xFFFFFFFF
    return Session(major=FUSE_KERNEL_VERSION, minor=minor, flags=flags, kernel_flags=flags,
                   max_readahead=131072, max_write=1 << 20, max_pages=256, time_gran=1,
                   max_background=64, congestion_threshold=48, max_stack_depth=0,
                   request_timeout=0, lookup_handle=lookup_handle)


def _parts(s: SessionLike) -> tuple[int, dict[str, int], dict[int, OpInfo], str | None]:
    if isinstance(s, Session):
        return s.minor, s.sizes, s.table, s.lookup_handle
    minor, flags = s
    return minor, sizes_for(minor, flags), ops_for_profile(None), None


# -- requests ------------------------------------------------------------------------------


def encode_init(minor: int, flags64: int, max_readahead: int = 131072, unique: int = 2) -> bytes:
    """The INIT request a kernel speaking 7.``minor`` sends (16-byte body before 7.36)."""
    flags, flags2 = flags64 & 0xFFFFFFFF, (flags64 >> 32) & 0xFFFFFFFF
    rec = CODECS["init_in"].zero()._replace(major=FUSE_KERNEL_VERSION, minor=minor,
                                            max_readahead=max_readahead, flags=flags,
                                            flags2=flags2 if minor >= 36 else 0)
    body = CODECS["init_in"].encode(rec)[:64 if minor >= 36 else 16]
    return _HDR.pack(40 + len(body), Opcode.INIT, unique, 0, 0, 0, 0, 0, 0) + body


def encode_request(session: SessionLike, opcode: int, unique: int, nodeid: int, *,
                   uid: int = 0, gid: int = 0, pid: int = 0, arg: Any = None,
                   names: tuple[bytes, ...] | list[bytes] = (), data: Any = b"",
                   ext: bytes = b"") -> bytes:
    """One request exactly as the kernel sends it in ``session``.

    ``arg`` is a record of the row's request struct (zero if omitted); it is
    truncated to the session's compat size.  ``data`` is the trailing part:
    bytes, or ``(nodeid, nlookup)`` / ``(moffset, len)`` pairs for
    BATCH_FORGET / REMOVEMAPPING (the count in ``arg`` is filled in when
    ``arg`` is omitted).  ``ext`` is a complete extension block (multiple of 8).
    """
    minor, sizes, table, _ = _parts(session)
    if opcode == Opcode.INIT:
        a = arg if arg is not None else CODECS["init_in"].zero()._replace(minor=minor)
        return encode_init(a.minor, a.flags | (a.flags2 << 32), a.max_readahead, unique)
    row = table.get(opcode)
    if row is None:
        raise ValueError(f"opcode {opcode} has no row in this session's table")
    if len(ext) % 8:
        raise ValueError("extension block must be a multiple of 8 bytes")
    parts: list[bytes] = []
    tail: bytes
    if row.trailing in (Trailing.FORGETS, Trailing.MAPPINGS) and not isinstance(
            data, (bytes, bytearray, memoryview)):
        pairs = list(data)
        tail = b"".join(_FORGET_ONE.pack(a, b) for a, b in pairs)
        if arg is None and row.request is not None:
            arg = CODECS[row.request].zero()._replace(count=len(pairs))
    else:
        tail = bytes(data)
    if row.request is not None:
        codec = CODECS[row.request]
        if arg is None:
            arg = codec.zero()
            if hasattr(arg, "size") and row.sized_data:
                arg = arg._replace(size=len(tail))
        parts.append(encode_sized(codec, arg, sizes[row.request]))
    for name in names:
        parts.append(bytes(name) + b"\0")
    parts.append(tail)
    parts.append(ext)
    body = b"".join(parts)
    return _HDR.pack(40 + len(body), opcode, unique, nodeid, uid, gid, pid, len(ext) // 8,
                     0) + body


# -- replies -------------------------------------------------------------------------------


def split_reply(buf: bytes) -> tuple[int, int, bytes]:
    """Check a reply's out header like the kernel's write(): return (error, unique, body)."""
    if len(buf) < 16:
        raise ReplySizeError(f"reply of {len(buf)} bytes is shorter than fuse_out_header")
    length, error, unique = _OUT.unpack_from(buf)
    if length != len(buf):
        raise ReplySizeError(f"out header len {length} != {len(buf)} bytes written")
    if error > 0 or error <= -512:
        raise ReplySizeError(f"error field {error} outside -511..0")
    if error and length != 16:
        raise ReplySizeError(f"error reply {error} carries {length - 16} payload bytes")
    return error, unique, bytes(buf[16:])


def _exact(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise ReplySizeError(f"{what}: {len(body)} bytes, kernel expects {size}")


def _decode_entry(body: bytes, sizes: dict[str, int], lookup_handle: str | None,
                  what: str) -> tuple[Any, int]:
    size = sizes["entry_out"]
    if lookup_handle is None or lookup_handle == "rfc-v3":
        # rfc-v3 entry replies keep the upstream size (handles only on 55/56)
        if len(body) < size:
            raise ReplySizeError(f"{what}: {len(body)} bytes, entry_out needs {size}")
        return decode_sized(CODECS["entry_out"], body, 0, size), size
    if len(body) < size:
        raise ReplySizeError(f"{what}: {len(body)} bytes, entry_out needs {size}")
    entry = decode_sized(CODECS["entry_out"], body, 0, size)
    rest = body[size:]
    if lookup_handle == "rfc-v2":
        if len(rest) < 8:
            raise ReplySizeError(f"{what}: missing fuse_file_handle")
        (hsz, _type) = _HANDLE_V2.unpack_from(rest)
        used = _HANDLE_V2.size + hsz
    else:
        if len(rest) < 2:
            raise ReplySizeError(f"{what}: missing fuse_file_handle")
        (hsz,) = _HANDLE_V3.unpack_from(rest)
        used = _HANDLE_V3.size + hsz
    if used > len(rest):
        raise ReplySizeError(f"{what}: handle of {hsz} bytes overruns the reply")
    return EntryWithHandle(entry, bytes(rest[:used])), size + used


def _entry_nodeid(e: Any) -> int:
    return int(e.entry.nodeid if isinstance(e, EntryWithHandle) else e.nodeid)


def _check_name(name: bytes, what: str) -> None:
    if not name or len(name) > NAME_MAX:
        raise ReplyRuleError(f"{what}: bad name length {len(name)}")
    if b"/" in name or b"\0" in name:
        raise ReplyRuleError(f"{what}: name {name!r} contains '/' or NUL")


def decode_dirents(body: bytes, plus: bool, check: bool = True) -> list[Any]:
    """Parse READDIR / READDIRPLUS records, applying the kernel's checks.

    ``check=False`` skips the content rules (names, offsets, nodeid 1) and
    keeps only what the layout needs (record sizes, padding).
    """
    out: list[Any] = []
    pos, n = 0, len(body)
    what = "READDIRPLUS" if plus else "READDIR"
    head = 152 if plus else 24
    while pos < n:
        if n - pos < head:
            raise ReplySizeError(f"{what}: {n - pos} trailing bytes, record header needs {head}")
        entry = CODECS["entry_out"].decode(body, pos) if plus else None
        dpos = pos + 128 if plus else pos
        ino, off, namelen, dtype = _DIRENT.unpack_from(body, dpos)
        if namelen == 0 or (check and namelen > NAME_MAX):
            raise ReplyRuleError(f"{what}: namelen {namelen}")
        reclen = (head + namelen + 7) & ~7
        if pos + reclen > n:
            raise ReplySizeError(f"{what}: record of {reclen} bytes overruns the reply")
        name = bytes(body[dpos + 24:dpos + 24 + namelen])
        if check:
            _check_name(name, what)
        if any(body[pos + head + namelen:pos + reclen]):
            raise ReplySizeError(f"{what}: non-zero padding after {name!r}")
        if check and off == 0:
            raise ReplyRuleError(f"{what}: entry {name!r} has off 0")
        d = Dirent(ino, off, dtype, name)
        if plus:
            assert entry is not None
            if check and name not in (b".", b"..") and entry.nodeid == FUSE_ROOT_ID:
                raise ReplyRuleError(f"{what}: entry {name!r} returned nodeid 1")
            out.append(DirentPlus(entry, d))
        else:
            out.append(d)
        pos += reclen
    return out


_CREATE_TYPE = ops_where("create_type")


def decode_reply(session: SessionLike, request_opcode: int, request_arg: Any,
                 body: bytes, *, check: bool = True) -> Any:
    """Check and decode a success reply body (after the out header) as the kernel would.

    Raises :class:`ReplySizeError` when the size is not what the kernel
    expects for ``request_opcode`` at this session's minor, and
    :class:`ReplyRuleError` for well-sized but forbidden content.  Returns the
    decoded record, ``(entry, open_out)`` for create-and-open replies, bytes
    for data replies, a list of :class:`Dirent` / :class:`DirentPlus`,
    ``(ioctl_out, data)``, or None for header-only replies; replies that
    carry a draft file handle decode to :mod:`fusewire.handles`' records.

    ``check=False`` is for rendering what a server sent (the trace, ``fusewire
    dump``): the layout must still hold, but the limits the request set
    (buffer sizes) and the content rules (:class:`ReplyRuleError`) are not
    applied.
    """
    _minor, sizes, table, lookup_handle = _parts(session)
    row = table.get(request_opcode)
    if row is None:
        raise ReplySizeError(f"no reply expected for unknown opcode {request_opcode}",
                             errno.ENOENT)
    kind = row.reply
    name = row.name
    body = bytes(body)
    if lookup_handle is not None and isinstance(session, Session):
        if row.request == "compound_in":
            return body   # the sub-replies: fusewire.handles.decode_compound_reply
        if _fh.reply_carries_handle(session, request_opcode):
            # a draft profile's handle-carrying layout (fusewire.handles)
            limit = (int(request_arg.size) if check and kind is Reply.DIRENTSPLUS
                     and request_arg is not None else None)
            try:
                return _fh.decode_reply(session, request_opcode, body, limit)
            except _fh.HandleWireError as exc:
                raise ReplySizeError(str(exc)) from None
    if kind is Reply.NONE:
        raise ReplySizeError(f"{name} takes no reply (the kernel answers ENOENT)",
                             errno.ENOENT)
    if kind is Reply.EMPTY or kind is Reply.OPTIONAL:
        _exact(body, 0, name)
        return None
    if kind is Reply.STRUCT:
        assert row.reply_struct is not None
        size = sizes[row.reply_struct]
        _exact(body, size, name)
        return decode_sized(CODECS[row.reply_struct], body, 0, size)
    if kind is Reply.ENTRY or kind is Reply.ENTRY_OPEN:
        entry, used = _decode_entry(body, sizes, lookup_handle, name)
        nodeid = _entry_nodeid(entry)
        if check and request_opcode in _CREATE_TYPE and nodeid in (0, FUSE_ROOT_ID):
            raise ReplyRuleError(f"{name} returned nodeid {nodeid}")
        if kind is Reply.ENTRY:
            _exact(body, used, name)
            return entry
        _exact(body, used + 16, name)
        return entry, CODECS["open_out"].decode(body, used)
    if kind is Reply.DATA:
        if request_opcode == Opcode.CUSE_INIT:
            limit = 72 + 4096   # cuse_init_out + the device info page
        else:
            limit = READLINK_MAX if request_arg is None else int(request_arg.size)
        if check and len(body) > limit:
            raise ReplySizeError(f"{name}: {len(body)} bytes for a request of {limit}")
        return body
    if kind is Reply.XATTR:
        if request_arg is None or request_arg.size == 0:
            _exact(body, 8, name)
            return CODECS["getxattr_out"].decode(body)
        if check and len(body) > request_arg.size:
            raise ReplySizeError(f"{name}: {len(body)} bytes for a buffer of "
                                 f"{request_arg.size}")
        return body
    if kind is Reply.DIRENTS or kind is Reply.DIRENTSPLUS:
        if check and request_arg is not None and len(body) > request_arg.size:
            raise ReplySizeError(f"{name}: {len(body)} bytes for a buffer of "
                                 f"{request_arg.size}")
        return decode_dirents(body, kind is Reply.DIRENTSPLUS, check)
    if kind is Reply.IOCTL:
        if len(body) < 16:
            raise ReplySizeError(f"IOCTL: {len(body)} bytes, ioctl_out needs 16")
        out = CODECS["ioctl_out"].decode(body)
        rest = body[16:]
        if out.flags & IOCTL.RETRY:
            if out.in_iovs + out.out_iovs > 256:
                raise ReplyRuleError("IOCTL: more than 256 iovecs")
            _exact(rest, 16 * (out.in_iovs + out.out_iovs), "IOCTL retry iovecs")
        elif check and request_arg is not None and len(rest) > request_arg.out_size:
            raise ReplySizeError(f"IOCTL: {len(rest)} data bytes > out_size "
                                 f"{request_arg.out_size}")
        return out, rest
    if kind is Reply.INIT:
        if len(body) < 8 or len(body) > 64:
            raise ReplySizeError(f"INIT: {len(body)} bytes")
        cname = "init_out_v2" if lookup_handle == "rfc-v2" else "init_out"
        out = decode_sized(CODECS[cname], body, 0, len(body))
        # the kernel reads INIT's reply as a variable-size argument; a server
        # that speaks 7.23+ sends all 64 bytes, an older one 24 (7.5..7.22)
        expected = 64 if out.minor >= 23 else 24
        if check and out.major == FUSE_KERNEL_VERSION and out.minor >= 5 \
                and len(body) != expected:
            raise ReplySizeError(f"INIT reply of {len(body)} bytes at 7.{out.minor}")
        return out
    raise ReplySizeError(f"{name}: unhandled reply kind {kind}")  # pragma: no cover


def decode_sub_reply(opcode: int, body: bytes) -> Any:
    """A DRAFT FUSE_COMPOUND sub-reply's struct as the compound v5 kernel reads it.

    Inside a compound the kernel copies the row's reply struct at its declared
    size whatever the sub-reply's length: zeros stand where it is shorter.
    (LOOKUP_HANDLE/MKOBJ_HANDLE sub-replies: :func:`fusewire.handles.decode_v3_entry`.)
    """
    row = OPS[opcode]
    if row.reply_struct is None:
        raise ValueError(f"{row.name} has no reply struct")
    codec = CODECS[row.reply_struct]
    return codec.decode(bytes(body[:codec.size]) + bytes(max(0, codec.size - len(body))))


def reply_header(reply: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(len, error, unique)`` of a reply's ``fuse_out_header`` (error <= 0), unchecked.

    For code that holds replies it built itself (recovery's journal); a reply
    from elsewhere goes through :func:`split_reply`, which applies the
    kernel's checks.
    """
    length, error, unique = _OUT.unpack_from(reply)
    return int(length), int(error), int(unique)


def open_out_of(reply: bytes | bytearray | memoryview) -> Any | None:
    """The ``fuse_open_out`` that ends a success OPEN/OPENDIR/CREATE/TMPFILE reply.

    ``reply`` is the whole reply, header included.  None when it is an error
    reply or too short to hold one.  (The open struct is last in every layout
    that carries one, draft handle profiles included.)
    """
    codec = CODECS["open_out"]
    if len(reply) < _OUT.size + codec.size or _OUT.unpack_from(reply)[1]:
        return None
    return codec.decode(reply, len(reply) - codec.size)


def open_out_fields_of(reply: bytes | bytearray | memoryview) -> tuple[int, int, int] | None:
    """``(fh, open_flags, backing_id)`` of the ``fuse_open_out`` that ends a success
    reply, as :func:`open_out_of` finds it, without building a record (the
    journal reads it for every OPEN/CREATE it records)."""
    n = len(reply)
    if n < _OUT.size + _OPEN_OUT.size or _OUT.unpack_from(reply)[1]:
        return None
    fh, flags, backing = _OPEN_OUT.unpack_from(reply, n - _OPEN_OUT.size)
    return int(fh), int(flags), int(backing)


# -- notifications -------------------------------------------------------------------------


def decode_notify(buf: bytes, minor: int | None = None) -> tuple[NotifyCode, Any, Any]:
    """Check a notification (header included) as the kernel does; return its parts.

    Returns ``(code, payload record or None, extra)`` where ``extra`` is the
    name (INVAL_ENTRY, DELETE), the data (STORE), the nodeids (PRUNE) or b"".
    """
    buf = bytes(buf)
    if len(buf) < 16:
        raise ReplySizeError(f"notification of {len(buf)} bytes")
    length, code, unique = _OUT.unpack_from(buf)
    if length != len(buf):
        raise ReplySizeError(f"notification len {length} != {len(buf)}")
    if unique != 0:
        raise ReplySizeError(f"notification with unique {unique:#x}")
    info = NOTIFICATIONS.get(code)
    if info is None:
        raise ReplySizeError(f"unknown notification code {code}")
    if minor is not None and minor < info.since:
        raise ReplySizeError(f"{info.code.name} needs 7.{info.since}, session is 7.{minor}")
    body = buf[16:]
    ncode = NotifyCode(code)
    if info.payload is None:
        return ncode, None, b""  # RESEND / INC_EPOCH: body ignored
    codec = CODECS[info.payload]
    if len(body) < codec.size:
        raise ReplySizeError(f"{ncode.name}: {len(body)} bytes, needs {codec.size}")
    rec = codec.decode(body)
    rest = body[codec.size:]
    extra: Any = b""
    if info.trailing == "none":
        _exact(rest, 0, ncode.name)
    elif info.trailing == "name":
        namelen = rec.namelen
        if namelen > NAME_MAX:
            raise KernelRuleError(f"{ncode.name}: namelen {namelen}", errno.ENAMETOOLONG)
        _exact(rest, namelen + 1, ncode.name)
        if rest[namelen] != 0:
            raise ReplySizeError(f"{ncode.name}: name not NUL-terminated")
        extra = rest[:namelen]
    elif info.trailing == "data":
        _exact(rest, rec.size, ncode.name)
        extra = rest
    elif info.trailing == "nodeids":
        _exact(rest, 8 * rec.count, ncode.name)
        extra = unpack_u64s(rest, rec.count)
    return ncode, rec, extra
