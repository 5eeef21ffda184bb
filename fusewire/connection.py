"""The sans-IO FUSE connection: bytes in, typed requests out; replies in, bytes out.

Theory of operation
-------------------
The kernel speaks to a server through one message per ``read(2)`` and one
reply per ``write(2)`` on ``/dev/fuse`` (protocol.md §1).  This module never
does I/O.  :meth:`Connection.receive` takes the bytes of one message and
returns a :class:`Request` or raises :class:`~fusewire.errors.RemoteProtocolError`
carrying the ``unique`` to answer and the errno to answer with; nothing else
escapes it (a fuzz test holds it to that).  The ``reply_*`` and ``notify_*``
methods return lists of buffers ready for ``writev``.

State: NEW until the INIT request is answered by :meth:`Connection.initialize`;
then READY with a frozen :class:`Session` (the negotiated minor, the 64-bit
flag set, max_write...).  Every layout decision that depends on the session
reads ``Session.sizes`` (built from :mod:`fusewire.structs.layout`) and the
session's opcode table (:func:`fusewire.opcodes.ops_for_profile`), so there
are no per-minor branches here.

Requests before INIT and a second INIT are protocol errors.  A successor
process that takes over a live mount restores the exported session with
:meth:`Connection.restore` and starts READY, without an INIT.

Uniques: bit 63 (FUSE_UNIQUE_RESEND) marks a request the kernel re-sent after
a restart; in-flight bookkeeping keys on ``unique & ~bit63`` while replies
echo the unique exactly as received.  INTERRUPT (``unique | 1``) targets a
request by its unique; :meth:`Connection.is_interrupted` answers whether a
request in flight was interrupted.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fusewire.errors import MAX_ERRNO, LocalProtocolError, RemoteProtocolError, reply_errno
from fusewire.opcodes.flags import (
    FUSE_EXT_GROUPS,
    FUSE_EXT_HANDLE,
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_KERNEL_VERSION,
    FUSE_MAX_HANDLE_SZ,
    FUSE_MAX_NR_SECCTX,
    FUSE_UNIQUE_RESEND,
    InitFlag,
    NotifyCode,
    Opcode,
)
from fusewire.opcodes.table import NOTIFICATIONS, OpInfo, Reply, Trailing, ops_for_profile
from fusewire.structs.codec import CODECS
from fusewire.structs.layout import decode_sized, encode_sized, sizes_for
from fusewire.structs.records import InitIn, InitOut

__all__ = [
    "DEFAULT_WANT",
    "Config",
    "Connection",
    "Extensions",
    "LOOKUP_HANDLE_PROFILES",
    "Request",
    "Session",
    "encode_error",
    "encode_notification",
    "encode_notify",
    "pack_u64s",
    "unpack_u64s",
]

_HDR = CODECS["in_header"].struct
_OUT = CODECS["out_header"].struct
_UNPACK_HDR = _HDR.unpack_from
_PACK_OUT = _OUT.pack
_RESEND_MASK = ~FUSE_UNIQUE_RESEND & 0xFFFFFFFFFFFFFFFF
_U32 = CODECS["supp_groups"].struct      # supp_groups.nr; also secctx.size
_U16 = CODECS["file_handle_v3"].head(1)  # fuse_file_handle (v3) size
_EXT_HDR = CODECS["ext_header"].struct    # also file_handle_v2 {size, type}
_FORGET_ONE = CODECS["forget_one"].struct
_VERSION = CODECS["init_in"].head(2)      # major, minor
#: INTERRUPTs kept for requests not (yet) in flight: another thread may still be
#: about to register its request, or the target finished just before; the
#: oldest beyond this many are dropped, so stray interrupts never accumulate
EARLY_INTERRUPTS = 256

#: What fusewire asks for by default, before trimming to what a filesystem implements.
DEFAULT_WANT = (
    InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES
    | InitFlag.AUTO_INVAL_DATA | InitFlag.DO_READDIRPLUS
    | InitFlag.READDIRPLUS_AUTO | InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS
    | InitFlag.HANDLE_KILLPRIV_V2 | InitFlag.MAX_PAGES | InitFlag.CACHE_SYMLINKS
    | InitFlag.SETXATTR_EXT | InitFlag.INIT_EXT | InitFlag.CREATE_SUPP_GROUP
    | InitFlag.HAS_EXPIRE_ONLY | InitFlag.HAS_RESEND | InitFlag.NO_OPEN_SUPPORT
    | InitFlag.NO_OPENDIR_SUPPORT | InitFlag.EXPORT_SUPPORT | InitFlag.POSIX_LOCKS
    | InitFlag.FLOCK_LOCKS
)


#: The draft stable-handle profiles a server can configure (docs/draft-handles.md).
LOOKUP_HANDLE_PROFILES = ("rfc-v2", "rfc-v3", "fusewire")


@dataclass(frozen=True)
class Config:
    """What this side wants from INIT.  ``want`` is trimmed to what the kernel offers.

    ``request_timeout`` stays 0 (never negotiated) unless set: its expiry
    aborts the whole connection and so kills any restart (protocol.md §13 M).
    ``lookup_handle`` selects a draft stable-handle profile: "rfc-v2" or
    "rfc-v3" (the posted LOOKUP_HANDLE patches, byte for byte) or
    "fusewire" (fusewire's own extension); see docs/draft-handles.md.  By
    default ("strict") it is negotiated only when the kernel's INIT offers
    ``HAS_LOOKUP_HANDLE`` (bit 43); with ``assert_lookup_handle=True`` the
    INIT reply sets bit 43 whenever a profile is configured, because the
    posted RFC kernels never offer the bit (their ``fuse_new_init`` ORs the
    opcode value instead) yet enable the feature when the reply sets it
    (for "rfc-v3" only when the kernel speaks 7.46, which that series
    introduces).
    ``max_handle_sz`` is the rfc-v2 handle limit S announced in INIT (a
    multiple of 8, 24..128; the kernel accepts handles of 1..S-1 bytes).
    ``handle_secret`` keys the MAC of the handles given to the kernel (at
    least 16 bytes; default: 32 random bytes per mount, kept in the session).
    """

    max_minor: int = FUSE_KERNEL_MINOR_VERSION
    want: InitFlag = DEFAULT_WANT
    max_write: int = 1 << 20
    max_readahead: int = 1 << 20
    max_background: int = 64
    congestion_threshold: int = 48
    time_gran: int = 1
    max_stack_depth: int = 0
    request_timeout: int = 0
    lookup_handle: str | None = None
    max_handle_sz: int = FUSE_MAX_HANDLE_SZ
    handle_secret: bytes | None = field(default=None, repr=False)
    assert_lookup_handle: bool = False

    def __post_init__(self) -> None:
        if self.lookup_handle in ("v2", "v3"):
            raise ValueError(f"lookup_handle {self.lookup_handle!r} was renamed: use "
                             f"'rfc-v2' or 'rfc-v3' (the posted patches) or 'fusewire'")
        if self.lookup_handle not in (None, *LOOKUP_HANDLE_PROFILES):
            raise ValueError(f"unknown lookup_handle profile {self.lookup_handle!r} "
                             f"(one of {', '.join(LOOKUP_HANDLE_PROFILES)})")
        if not 24 <= self.max_handle_sz <= FUSE_MAX_HANDLE_SZ or self.max_handle_sz % 8:
            raise ValueError(f"max_handle_sz {self.max_handle_sz}: a multiple of 8 in 24..128")
        if self.handle_secret is not None and len(self.handle_secret) < 16:
            raise ValueError("handle_secret needs at least 16 bytes")


@dataclass(frozen=True)
class Session:
    """The negotiated result of INIT: everything later layout decisions depend on.

    ``flags`` is the 64-bit set we replied with; ``kernel_flags`` what the
    kernel offered.  ``lookup_handle`` is the draft profile in force (None
    unless both sides agreed); ``max_handle_sz`` its v2 handle size and
    ``handle_secret`` (hex) the key of its handle MAC.  Exported by
    :meth:`to_dict` for takeover, so a successor keeps accepting the handles
    the kernel holds.
    """

    major: int
    minor: int
    flags: int
    kernel_flags: int
    max_readahead: int
    max_write: int
    max_pages: int
    time_gran: int
    max_background: int
    congestion_threshold: int
    max_stack_depth: int
    request_timeout: int
    lookup_handle: str | None = None
    max_handle_sz: int = 0
    handle_secret: str = field(default="", repr=False)
    sizes: dict[str, int] = field(init=False, repr=False, compare=False)
    table: dict[int, OpInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", sizes_for(self.minor, self.flags))
        object.__setattr__(self, "table", ops_for_profile(self.lookup_handle))

    def has(self, flag: InitFlag) -> bool:
        """Whether ``flag`` was negotiated."""
        return bool(self.flags & flag)

    @property
    def buffer_size(self) -> int:
        """The read buffer the kernel requires: max(8192, 80 + max_write) plus slack."""
        return max(8192, self.max_write + 4096)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for persisting (JSON-safe)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Session:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in data.items() if k in names})


class Extensions(NamedTuple):
    """Request extensions (``total_extlen``, 7.38): parsed, plus the raw block."""

    secctx: tuple[tuple[bytes, bytes], ...] = ()  # (xattr name, value)
    groups: tuple[int, ...] = ()
    handle: bytes | None = None  # DRAFT: parent handle (v3 FUSE_EXT_HANDLE, v2 in-arg)
    raw: bytes = b""


class Request(NamedTuple):
    """One request from the kernel.

    ``arg`` is the fixed struct record of the opcode's row (None if it has
    none); ``names`` the NUL-terminated names without their NUL; ``data``
    the trailing part: a memoryview for write data and xattr values, a tuple
    of ``(nodeid, nlookup)`` for BATCH_FORGET, ``(moffset, len)`` pairs for
    REMOVEMAPPING, else empty bytes.  ``unique`` is exactly as received
    (bit 63 included).
    """

    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    arg: Any
    names: tuple[bytes, ...]
    data: Any
    ext: Extensions | None
    info: OpInfo

    @property
    def resent(self) -> bool:
        """True when the kernel re-sent this request (bit 63)."""
        return bool(self.unique & FUSE_UNIQUE_RESEND)

    @property
    def key(self) -> int:
        """The unique without the resend bit: stable across a resend."""
        return self.unique & _RESEND_MASK


_INIT_ROW = ops_for_profile(None)[Opcode.INIT]
_NO_SESSION_TABLE = ops_for_profile(None)


def _bad(msg: str, err: int, unique: int, opcode: int, row: OpInfo | None) -> RemoteProtocolError:
    return RemoteProtocolError(msg, err, unique=unique, opcode=opcode,
                               needs_reply=row is None or row.reply is not Reply.NONE)


def parse_extensions(buf: bytes, unique: int = 0, opcode: int = 0) -> Extensions:
    """Parse a request extension block (each element ``{u32 size, u32 type}`` + body)."""
    secctx: list[tuple[bytes, bytes]] = []
    groups: tuple[int, ...] = ()
    handle: bytes | None = None
    pos, end = 0, len(buf)
    while pos < end:
        if end - pos < 8:
            raise _bad("truncated extension header", errno.EINVAL, unique, opcode, None)
        size, typ = _EXT_HDR.unpack_from(buf, pos)
        if size < 8 or size % 8 or pos + size > end:
            raise _bad(f"bad extension size {size}", errno.EINVAL, unique, opcode, None)
        body = buf[pos + 8:pos + size]
        if typ == FUSE_EXT_GROUPS:
            if len(body) < 4:
                raise _bad("truncated supp groups", errno.EINVAL, unique, opcode, None)
            (nr,) = _U32.unpack_from(body)
            if 4 + 4 * nr > len(body):
                raise _bad("supp groups overrun", errno.EINVAL, unique, opcode, None)
            # literal-format: a counted u32 array (supp groups), no fixed-size schema
            groups = struct.unpack_from(f"<{nr}I", body, 4)
        elif typ == FUSE_EXT_HANDLE:
            if len(body) < 2:
                raise _bad("truncated handle extension", errno.EINVAL, unique, opcode, None)
            (hsz,) = _U16.unpack_from(body)
            if 2 + hsz > len(body) or hsz > FUSE_MAX_HANDLE_SZ:
                raise _bad("handle extension overrun", errno.EINVAL, unique, opcode, None)
            handle = bytes(body[2:2 + hsz])
        elif typ <= FUSE_MAX_NR_SECCTX:
            # fuse_secctx_header {size, nr_secctx}; nr entries of
            # fuse_secctx {size, padding} + NUL-terminated name + value[size]
            p = 0
            for _ in range(typ):
                if p + 8 > len(body):
                    raise _bad("truncated secctx", errno.EINVAL, unique, opcode, None)
                (vsz,) = _U32.unpack_from(body, p)
                p += 8
                z = body.find(b"\0", p)
                if z < 0 or z + 1 + vsz > len(body):
                    raise _bad("bad secctx entry", errno.EINVAL, unique, opcode, None)
                secctx.append((bytes(body[p:z]), bytes(body[z + 1:z + 1 + vsz])))
                p = z + 1 + vsz
        pos += size
    return Extensions(tuple(secctx), groups, handle, bytes(buf))


def parse_request(buf: bytes | bytearray | memoryview, session: Session | None) -> Request:
    """Parse one message as a server receives it.  Pure: the session is an argument.

    Raises :class:`RemoteProtocolError` (and nothing else) for malformed input.
    """
    n = len(buf)
    if n < 40:
        raise RemoteProtocolError(f"message of {n} bytes is shorter than fuse_in_header",
                                  errno.EIO)
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _pad = _UNPACK_HDR(buf, 0)
    table = session.table if session is not None else _NO_SESSION_TABLE
    row = table.get(opcode)
    if length != n:
        raise _bad(f"header len {length} != message size {n}", errno.EINVAL, unique, opcode,
                   row)
    if row is None:
        raise _bad(f"unknown opcode {opcode}", errno.ENOSYS, unique, opcode, None)
    if session is None:
        if opcode != Opcode.INIT:
            raise _bad(f"{row.name} before INIT", errno.EIO, unique, opcode, row)
        return _parse_init(buf, unique, nodeid, uid, gid, pid)
    if opcode == _INIT:
        raise _bad("second INIT on an initialised connection", errno.EPROTO, unique, opcode,
                   row)
    end = n
    ext = None
    if extlen:
        elen = extlen * 8
        if session.minor < 38 or elen > n - 40:
            raise _bad(f"bad total_extlen {extlen}", errno.EINVAL, unique, opcode, row)
        end = n - elen
        ext = parse_extensions(bytes(buf[end:]), unique, opcode)
    off = 40
    arg = None
    rs = row.request
    if rs is not None:
        size = session.sizes[rs]
        if end - off < size:
            raise _bad(f"{row.name}: body of {end - off} bytes, struct needs {size}",
                       errno.EINVAL, unique, opcode, row)
        codec = CODECS[rs]
        arg = codec.decode(buf, off) if size == codec.size else decode_sized(codec, buf, off,
                                                                              size)
        off += size
    names: tuple[bytes, ...] = ()
    if row.names:
        raw = bytes(buf[off:end])
        parts = []
        pos = 0
        for _ in range(row.names):
            z = raw.find(b"\0", pos)
            if z < 0:
                raise _bad(f"{row.name}: name without NUL", errno.EINVAL, unique, opcode, row)
            parts.append(raw[pos:z])
            pos = z + 1
        names = tuple(parts)
        off += pos
    trailing = row.trailing
    data: Any = b""
    if trailing is _T_NONE:
        if off != end:
            raise _bad(f"{row.name}: {end - off} unexpected trailing bytes", errno.EINVAL,
                       unique, opcode, row)
    elif trailing is Trailing.DATA:
        data = memoryview(buf)[off:end]
        want = getattr(arg, "size", None)
        if row.sized_data and want != len(data):
            raise _bad(f"{row.name}: {len(data)} data bytes, size says {want}", errno.EINVAL,
                       unique, opcode, row)
    elif trailing is Trailing.FORGETS or trailing is Trailing.MAPPINGS:
        count = arg.count if arg is not None else 0
        if end - off != 16 * count:
            raise _bad(f"{row.name}: count {count} does not match {end - off} bytes",
                       errno.EINVAL, unique, opcode, row)
        data = tuple(_FORGET_ONE.iter_unpack(buf[off:end]))
    elif trailing is Trailing.HANDLE:
        # rfc-v2: optional (absent when the kernel holds no handle for the
        # parent, e.g. the root, whose inode exists before INIT is answered)
        hb = bytes(buf[off:end])
        hsz = _EXT_HDR.unpack_from(hb)[0] if len(hb) >= 8 else 0
        if not hb:
            pass
        elif len(hb) < 8:
            raise _bad(f"{row.name}: truncated handle", errno.EINVAL, unique, opcode, row)
        elif 8 + hsz != len(hb) or hsz > FUSE_MAX_HANDLE_SZ:
            raise _bad(f"{row.name}: bad handle size {hsz}", errno.EINVAL, unique, opcode, row)
        else:
            ext = (ext or Extensions())._replace(handle=hb[8:])
    # tuple.__new__ directly: NamedTuple's generated __new__ costs ~0.3 µs more
    return _new_tuple(Request, (opcode, unique, nodeid, uid, gid, pid, arg, names, data, ext,
                                row))


_new_tuple = tuple.__new__
# Enum members as plain module constants: an Enum class attribute lookup costs
# ~65 ns and an IntEnum comparison ~75 ns more than these, per use, per request.
_INIT = int(Opcode.INIT)
_INTERRUPT = int(Opcode.INTERRUPT)
_T_NONE = Trailing.NONE
_R_NONE = Reply.NONE


def _parse_init(buf: bytes | bytearray | memoryview, unique: int, nodeid: int, uid: int,
                gid: int, pid: int) -> Request:
    body = bytes(buf[40:])
    if len(body) < 16:
        raise _bad("INIT body shorter than 16 bytes", errno.EPROTO, unique, Opcode.INIT,
                   _INIT_ROW)
    major, minor = _VERSION.unpack_from(body)
    want = 64 if (major == 7 and minor >= 36) else 16
    if major != FUSE_KERNEL_VERSION:
        body = body[:16]  # an unknown major's layout: only its first fields are meaningful
    elif len(body) != want:
        raise _bad(f"INIT body of {len(body)} bytes for 7.{minor}, expected {want}",
                   errno.EPROTO, unique, Opcode.INIT, _INIT_ROW)
    arg = decode_sized(CODECS["init_in"], body, 0, want)
    return Request(Opcode.INIT, unique, nodeid, uid, gid, pid, arg, (), b"", None, _INIT_ROW)


def encode_error(unique: int, err: int) -> bytes:
    """The one error reply: ``fuse_out_header{16, -errno, unique}``.

    ``err`` goes through the errno policy (:func:`fusewire.errors.reply_errno`):
    1..511 is kept, anything else becomes EIO.  Retires nothing: answering a
    request the connection tracks goes through :meth:`Connection.reply_error`.
    """
    return _PACK_OUT(16, -reply_errno(err), unique)


def encode_notify(code: int, *payload: bytes) -> list[bytes]:
    """A notification: ``fuse_out_header{len, error=code, unique=0}`` + payload."""
    size = 16 + sum(len(p) for p in payload)
    return [_PACK_OUT(size, code, 0), *payload]


def pack_u64s(values: Sequence[int]) -> bytes:
    """A packed little-endian u64 array (NOTIFY_PRUNE's nodeids)."""
    # literal-format: a counted u64 array, no fixed-size schema to derive it from
    return struct.pack(f"<{len(values)}Q", *values)


def unpack_u64s(buf: bytes | bytearray | memoryview, count: int, offset: int = 0
                ) -> tuple[int, ...]:
    """Read ``count`` little-endian u64 values at ``offset`` (the inverse of :func:`pack_u64s`).

    Raises :class:`struct.error` when ``buf`` is too short.
    """
    # literal-format: a counted u64 array, no fixed-size schema to derive it from
    values: tuple[int, ...] = struct.unpack_from(f"<{count}Q", buf, offset)
    return values


def encode_notification(code: int, *fields: int,
                        tail: bytes | Sequence[int] = b"") -> list[bytes]:
    """A notification built from its :data:`~fusewire.opcodes.NOTIFICATIONS` row.

    ``fields`` are the payload struct's fields in order, packed by the codec
    derived from the row's schema; ``tail`` is what the row says trails it: a
    name (the NUL is added here), data bytes, or a sequence of nodeids.
    """
    info = NOTIFICATIONS[code]
    parts: list[bytes] = []
    if info.payload is not None:
        parts.append(CODECS[info.payload].struct.pack(*fields))
    elif fields:
        raise LocalProtocolError(f"{info.code.name} has no payload struct", errno.EINVAL)
    if info.trailing == "name":
        assert isinstance(tail, bytes | bytearray)
        parts.append(bytes(tail) + b"\0")
    elif info.trailing == "nodeids":
        assert not isinstance(tail, bytes | bytearray)
        parts.append(pack_u64s(tail))
    elif info.trailing == "data":
        assert isinstance(tail, bytes | bytearray)
        parts.append(bytes(tail))
    elif tail:
        raise LocalProtocolError(f"{info.code.name} carries nothing after its payload",
                                 errno.EINVAL)
    return encode_notify(code, *parts)


class Connection:
    """Server side of one FUSE connection, without I/O.

    Typical use (see :mod:`fusewire.server.loop`)::

        conn = Connection(Config())
        req = conn.receive(message)          # a Request, or RemoteProtocolError
        if req.opcode == Opcode.INIT:
            bufs = conn.initialize(req)      # negotiate; bytes for writev
        else:
            bufs = conn.reply_error(req.unique, errno.ENOENT)
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.session: Session | None = None
        #: in-flight requests needing a reply: key (unique without bit 63) -> opcode
        self.inflight: dict[int, int] = {}
        self._interrupted: set[int] = set()
        #: interrupted keys that were not in flight when their INTERRUPT came (FIFO)
        self._early: deque[int] = deque()

    # -- state export for takeover ------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """What a successor needs to continue this connection without INIT."""
        if self.session is None:
            raise LocalProtocolError("nothing to export before INIT")
        return {"session": self.session.to_dict()}

    @classmethod
    def restore(cls, state: Mapping[str, Any], config: Config | None = None) -> Connection:
        """A connection that starts already initialised with an exported session."""
        conn = cls(config)
        conn.session = Session.from_dict(state["session"])
        return conn

    # -- receiving ----------------------------------------------------------

    def receive(self, buf: bytes | bytearray | memoryview) -> Request:
        """Parse one message; track it in flight; apply INTERRUPTs.

        Raises :class:`RemoteProtocolError` for malformed input, never anything else.
        """
        req = parse_request(buf, self.session)
        if req.info.reply is not _R_NONE:
            if req.opcode == _INTERRUPT:
                self._note_interrupt(req.arg.unique & _RESEND_MASK)
            else:
                self.inflight[req.unique & _RESEND_MASK] = req.opcode
        return req

    def _note_interrupt(self, key: int) -> None:
        self._interrupted.add(key)
        if key in self.inflight:
            return
        # The target is not in flight: it may arrive later (another thread read
        # it and has not registered it yet) or it was answered already.  Keep a
        # bounded number of these.
        early = self._early
        if len(early) >= EARLY_INTERRUPTS:
            old = early.popleft()
            if old not in self.inflight:
                self._interrupted.discard(old)
        early.append(key)

    def is_interrupted(self, unique: int) -> bool:
        """Whether an INTERRUPT arrived for the request ``unique`` (still in flight)."""
        return (unique & _RESEND_MASK) in self._interrupted

    def retire(self, unique: int) -> None:
        """Forget request ``unique``: it is answered (its reply is encoded).

        :meth:`reply`, :meth:`reply_error` and :meth:`reply_struct` call this
        themselves; only a caller that packs a whole reply in one fused format
        (the server's GETATTR/LOOKUP fast paths) calls it directly.
        """
        key = unique & _RESEND_MASK
        self.inflight.pop(key, None)
        if self._interrupted:
            self._interrupted.discard(key)

    # -- INIT -----------------------------------------------------------------

    def negotiate(self, arg: InitIn) -> Session:
        """Compute the session for an INIT request body (pure; no state change)."""
        cfg = self.config
        if arg.major != FUSE_KERNEL_VERSION:
            raise LocalProtocolError(f"kernel speaks major {arg.major}", errno.EPROTO)
        minor = min(arg.minor, cfg.max_minor)
        offered = arg.flags
        if minor >= 36 and arg.flags & InitFlag.INIT_EXT:
            offered |= arg.flags2 << 32
        flags = int(cfg.want) & offered
        if not cfg.request_timeout:
            flags &= ~InitFlag.REQUEST_TIMEOUT
        profile = None
        # The posted RFC kernels never offer bit 43 (fuse_new_init ORs the
        # opcode value into the offer) but enable the feature when the reply
        # sets it; bit 43 sits in flags2, so the reply needs INIT_EXT.
        # RFC v3 6/8 raises the kernel's minor to 46: a 7.45 kernel cannot be one.
        asserted = (cfg.assert_lookup_handle and minor >= 36
                    and bool(offered & InitFlag.INIT_EXT)
                    and (cfg.lookup_handle != "rfc-v3" or arg.minor >= 46))
        if cfg.lookup_handle and (offered & InitFlag.HAS_LOOKUP_HANDLE or asserted):
            profile = cfg.lookup_handle
            flags |= InitFlag.HAS_LOOKUP_HANDLE | InitFlag.INIT_EXT
            if profile != "fusewire":
                # READDIRPLUS with handles is undefined in both posted RFCs (v2: an
                # XXX in fuse_adjust_compat; v3: "not yet implemented", and its
                # fuse_iget makes an inode with a stored handle bad when a
                # READDIRPLUS entry names it without one): not negotiated.
                flags &= ~(InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO)
        else:
            flags &= ~InitFlag.HAS_LOOKUP_HANDLE
        if minor < 36:
            flags &= 0xFFFFFFFF
        max_write = max(4096, cfg.max_write)
        if flags & InitFlag.MAX_PAGES:
            max_pages = min(256, (max_write + 4095) // 4096)
            max_write = min(max_write, max_pages * 4096)
        else:
            max_pages = 32
            max_write = min(max_write, 32 * 4096)
        return Session(
            major=FUSE_KERNEL_VERSION, minor=minor, flags=flags, kernel_flags=offered,
            max_readahead=min(arg.max_readahead, cfg.max_readahead), max_write=max_write,
            max_pages=max_pages, time_gran=cfg.time_gran, max_background=cfg.max_background,
            congestion_threshold=cfg.congestion_threshold,
            max_stack_depth=cfg.max_stack_depth if flags & InitFlag.PASSTHROUGH else 0,
            request_timeout=cfg.request_timeout if flags & InitFlag.REQUEST_TIMEOUT else 0,
            lookup_handle=profile,
            max_handle_sz=cfg.max_handle_sz if profile == "rfc-v2" else 0,
            handle_secret=(cfg.handle_secret or os.urandom(32)).hex() if profile else "",
        )

    def initialize(self, req: Request) -> list[bytes]:
        """Answer INIT: negotiate, enter READY, return the reply buffers.

        A kernel with another major gets an error reply (it then refuses the
        connection, which is all a server can do since the old re-INIT dance
        is gone).
        """
        if self.session is not None:
            raise LocalProtocolError("connection already initialised", errno.EPROTO)
        try:
            session = self.negotiate(req.arg)
        except LocalProtocolError as exc:
            return self.reply_error(req.unique, exc.errno_hint)
        self.session = session
        self.retire(req.unique)
        return [self._init_reply(req.unique, session)]

    @staticmethod
    def _init_reply(unique: int, s: Session) -> bytes:
        flags, flags2 = s.flags & 0xFFFFFFFF, s.flags >> 32
        common = dict(
            major=s.major, minor=s.minor, max_readahead=s.max_readahead, flags=flags,
            max_background=s.max_background, congestion_threshold=s.congestion_threshold,
            max_write=s.max_write, time_gran=s.time_gran, max_pages=s.max_pages,
            map_alignment=0, flags2=flags2, max_stack_depth=s.max_stack_depth,
            request_timeout=s.request_timeout,
        )
        if s.lookup_handle == "rfc-v2":
            name = "init_out_v2"
            rec: Any = CODECS[name].record(**common, max_handle_sz=s.max_handle_sz,
                                           unused=(0,) * 10)
        else:
            name = "init_out"
            rec = InitOut(**common, unused=(0,) * 11)
        body = encode_sized(CODECS[name], rec, s.sizes[name])
        return _PACK_OUT(16 + len(body), 0, unique) + body

    # -- replying -------------------------------------------------------------

    def reply(self, unique: int, *payload: bytes | bytearray | memoryview) -> list[Any]:
        """A success reply carrying ``payload`` (already encoded), for writev."""
        self.retire(unique)
        size = 16
        for p in payload:
            size += len(p)
        return [_PACK_OUT(size, 0, unique), *payload]

    def reply_error(self, unique: int, err: int) -> list[bytes]:
        """An error reply (header only; ``err`` is a positive errno, 1..511).

        An ``err`` outside 1..511 raises :class:`LocalProtocolError` (the
        caller chose it; the dispatcher maps a handler's bad value to EIO
        before it gets here: the errno policy in :mod:`fusewire.errors`).
        """
        if not 0 < err <= MAX_ERRNO:
            raise LocalProtocolError(f"errno {err} outside 1..{MAX_ERRNO}", errno.EINVAL)
        self.retire(unique)
        return [_PACK_OUT(16, -err, unique)]

    def reply_struct(self, unique: int, name: str, rec: Any, *extra: bytes) -> list[Any]:
        """A reply with one fixed struct (compat-sized for the session) + extra parts."""
        assert self.session is not None
        body = encode_sized(CODECS[name], rec, self.session.sizes[name])
        return self.reply(unique, body, *extra)

    def forget_inflight(self, unique: int) -> None:
        """Drop bookkeeping for a request that will never be answered here."""
        self.retire(unique)

    # -- notifications ------------------------------------------------------------

    def notify(self, code: NotifyCode, *payload: bytes) -> list[bytes]:
        """Encode a notification, checking the session supports it."""
        self._check_notify(code)
        return encode_notify(code, *payload)

    def notification(self, code: NotifyCode, *fields: int,
                     tail: bytes | Sequence[int] = b"") -> list[bytes]:
        """Encode a notification from its fields (see :func:`encode_notification`),
        checking the session supports it."""
        self._check_notify(code)
        return encode_notification(code, *fields, tail=tail)

    def _check_notify(self, code: NotifyCode) -> None:
        info = NOTIFICATIONS[code]
        if self.session is not None and self.session.minor < info.since:
            raise LocalProtocolError(f"{code.name} needs 7.{info.since}, "
                                     f"session is 7.{self.session.minor}", errno.ENOSYS)
