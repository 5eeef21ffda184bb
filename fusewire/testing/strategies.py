"""Hypothesis strategies derived from the construct schemas and the OPS table.

Nothing here lists fields by hand: :func:`records` walks the construct
``Struct`` of a schema (integers by width with their boundary values, arrays,
nested structs) and builds the typed record; :func:`requests` picks any row of
:data:`~fusewire.opcodes.table.OPS` available at the minor and fills its
struct, names and trailing part; :func:`replies` builds a reply the kernel
accepts for a request; :func:`malformed_messages` breaks valid ones.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from construct import Array, Bytes, Construct, FormatField, Renamed, Struct
from hypothesis import strategies as st

from fusewire.connection import pack_u64s
from fusewire.opcodes.flags import FUSE_EXT_GROUPS, NotifyCode, Opcode
from fusewire.opcodes.table import NOTIFICATIONS, OPS, Reply, Trailing
from fusewire.structs.codec import CODECS
from fusewire.structs.derive import class_name, py_name
from fusewire.structs.layout import decode_sized, encode_sized, sizes_for
from fusewire.structs.schemas import FIXED
from fusewire.wire import KERNEL_FLAGS, encode_init, encode_request, make_session

__all__ = [
    "MINORS",
    "RequestSpec",
    "init_requests",
    "malformed_messages",
    "names",
    "notifications",
    "records",
    "replies",
    "request_specs",
    "requests",
]

#: Minors the strategies cover (7.19, the oldest kernel of interest, to 7.45).
MINORS = tuple(range(19, 46))
_BY_ID = {id(schema): name for name, schema in FIXED.items()}
_ASK_REPLY_OPS = [code for code, row in OPS.items()
                  if code not in (Opcode.INIT, Opcode.CUSE_INIT)]


def _int(fmt: str) -> st.SearchStrategy[int]:
    size = struct.calcsize("<" + fmt)
    if fmt.islower():
        lo, hi = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
    else:
        lo, hi = 0, (1 << (8 * size)) - 1
    edges = sorted({lo, hi, 0, 1, hi - 1})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def _strategy(con: Construct) -> st.SearchStrategy[Any]:
    if isinstance(con, Renamed):
        return _strategy(con.subcon)
    if isinstance(con, FormatField):
        return _int(con.fmtstr.lstrip("<>="))
    if isinstance(con, Array):
        return st.tuples(*[_strategy(con.subcon)] * int(con.count))
    if isinstance(con, Bytes):
        return st.binary(min_size=int(con.length), max_size=int(con.length))
    if isinstance(con, Struct):
        name = _BY_ID.get(id(con))
        if name is None:
            raise TypeError("nested anonymous Struct")
        return records(name)
    raise TypeError(f"no strategy for {con!r}")


_CACHE: dict[str, st.SearchStrategy[Any]] = {}


def records(schema_name: str) -> st.SearchStrategy[Any]:
    """Records of a fixed schema, every field drawn by width (boundaries included)."""
    got = _CACHE.get(schema_name)
    if got is not None:
        return got
    schema = FIXED[schema_name]
    fields = {}
    for sub in schema.subcons:
        if sub.name is None:
            continue
        fields[py_name(sub.name)] = _strategy(sub)  # "__reserved" is field "reserved"
    rec = CODECS[schema_name].record
    assert rec.__name__ == class_name(schema_name)
    got = st.fixed_dictionaries(fields).map(lambda d: rec(**d))
    _CACHE[schema_name] = got
    return got


def names(min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[bytes]:
    """A NUL-free name."""
    return st.binary(min_size=min_size, max_size=max_size).map(lambda b: b.replace(b"\0", b"x"))


class RequestSpec(NamedTuple):
    """The fields of one valid request (arg already normalised to the session's size)."""

    minor: int
    flags: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    arg: Any
    names: tuple[bytes, ...]
    data: Any
    ext: bytes

    def encode(self) -> bytes:
        """The bytes of this request."""
        return encode_request((self.minor, self.flags), self.opcode, self.unique, self.nodeid,
                              uid=self.uid, gid=self.gid, pid=self.pid, arg=self.arg,
                              names=self.names, data=self.data, ext=self.ext)


_FLAGS = st.sampled_from([KERNEL_FLAGS, 0, KERNEL_FLAGS & ~(1 << 29)])
_U64 = _int("Q")
_EXT = CODECS["ext_header"].struct
_GROUPS = CODECS["supp_groups"].struct
_DIRENT = CODECS["dirent"].struct
_OUT_HEADER = CODECS["out_header"].struct
_IN_HEADER = CODECS["in_header"]
_U32 = _int("I")


def _ext_blocks() -> st.SearchStrategy[bytes]:
    # fuse_secctx_header {size 8, nr 0}; ext_header {16, FUSE_EXT_GROUPS} + supp_groups {1} + gid
    secctx = st.just(CODECS["secctx_header"].struct.pack(8, 0))
    groups = _U32.map(lambda g: _EXT.pack(16, FUSE_EXT_GROUPS) + _GROUPS.pack(1)
                      + _GROUPS.pack(g))   # nr = 1, then groups[0] (a u32 too)
    return st.lists(st.one_of(secctx, groups), max_size=2).map(b"".join)


@st.composite
def request_specs(draw: st.DrawFn, opcode: int | None = None,
                  minor: int | None = None) -> RequestSpec:
    """A :class:`RequestSpec` of ``opcode`` (any) at ``minor`` (any of :data:`MINORS`)."""
    m = draw(st.sampled_from(MINORS)) if minor is None else minor
    flags = draw(_FLAGS)
    if m < 36:
        flags &= 0xFFFFFFFF
    if opcode is None:
        opcode = draw(st.sampled_from(sorted(c for c in _ASK_REPLY_OPS if OPS[c].since <= m)))
    row = OPS[opcode]
    sizes = sizes_for(m, flags)
    arg: Any = None
    if row.request is not None:
        codec = CODECS[row.request]
        raw = draw(records(row.request))
        size = sizes[row.request]
        arg = decode_sized(codec, encode_sized(codec, raw, size), 0, size)
    ns = tuple(draw(names()) for _ in range(row.names))
    data: Any = b""
    if row.trailing is Trailing.DATA:
        data = draw(st.binary(max_size=64))
        if row.sized_data:
            arg = arg._replace(size=len(data))
    elif row.trailing in (Trailing.FORGETS, Trailing.MAPPINGS):
        data = tuple(draw(st.lists(st.tuples(_U64, _U64), max_size=4)))
        arg = arg._replace(count=len(data))
    ext = draw(_ext_blocks()) if row.ext and m >= 38 else b""
    return RequestSpec(m, flags, opcode, draw(_U64), draw(_U64), draw(_U32), draw(_U32),
                       draw(_U32), arg, ns, data, ext)


def requests(opcode: int | None = None,
             minor: int | None = None) -> st.SearchStrategy[tuple[int, int, bytes]]:
    """``(minor, flags, message)``: valid requests a kernel at ``minor`` could send."""
    return request_specs(opcode, minor).map(lambda s: (s.minor, s.flags, s.encode()))


def init_requests() -> st.SearchStrategy[bytes]:
    """INIT messages of kernels from 7.19 to 7.45 (flags: any offer)."""
    return st.builds(lambda m, f, ra, u: encode_init(m, f, ra, u), st.sampled_from(MINORS),
                     st.one_of(st.just(KERNEL_FLAGS), _U64), _U32, _U64)


_DT = st.sampled_from([1, 2, 4, 6, 8, 10, 12])
_DNAME = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)


@st.composite
def replies(draw: st.DrawFn, opcode: int | None = None,
            minor: int | None = None) -> tuple[Any, int, Any, bytes]:
    """``(session, opcode, request arg, reply body)`` that the kernel accepts."""
    if opcode is None:
        m = draw(st.sampled_from(MINORS)) if minor is None else minor
        minor = m
        opcode = draw(st.sampled_from(sorted(
            c for c in _ASK_REPLY_OPS if OPS[c].since <= m and OPS[c].reply is not Reply.NONE)))
    spec = draw(request_specs(opcode, minor))
    op, arg = spec.opcode, spec.arg
    session = make_session(spec.minor, spec.flags)
    row = OPS[op]
    sizes = session.sizes
    kind = row.reply
    body = b""
    if kind is Reply.STRUCT:
        assert row.reply_struct is not None
        c = CODECS[row.reply_struct]
        body = encode_sized(c, draw(records(row.reply_struct)), sizes[row.reply_struct])
    elif kind in (Reply.ENTRY, Reply.ENTRY_OPEN):
        e = draw(records("entry_out"))
        if op != Opcode.LOOKUP and e.nodeid in (0, 1):
            e = e._replace(nodeid=2)
        body = encode_sized(CODECS["entry_out"], e, sizes["entry_out"])
        if kind is Reply.ENTRY_OPEN:
            body += CODECS["open_out"].encode(draw(records("open_out")))
    elif kind is Reply.DATA:
        limit = 4095 if arg is None else min(arg.size, 256)
        body = draw(st.binary(max_size=limit))
    elif kind is Reply.XATTR:
        if arg.size == 0:
            body = CODECS["getxattr_out"].encode(draw(records("getxattr_out")))
        else:
            body = draw(st.binary(max_size=min(arg.size, 256)))
    elif kind in (Reply.DIRENTS, Reply.DIRENTSPLUS):
        plus = kind is Reply.DIRENTSPLUS
        out = bytearray()
        for name in draw(st.lists(_DNAME, max_size=5)):
            head = 152 if plus else 24
            reclen = (head + len(name) + 7) & ~7
            if len(out) + reclen > arg.size:
                break
            rec = bytearray(reclen)
            if plus:
                e = draw(records("entry_out"))
                if e.nodeid == 1 and name not in (b".", b".."):
                    e = e._replace(nodeid=0)
                rec[:128] = CODECS["entry_out"].encode(e)
            off = draw(st.integers(1, (1 << 64) - 1))
            _DIRENT.pack_into(rec, head - 24, draw(_U64), off, len(name), draw(_DT))
            rec[head:head + len(name)] = name
            out += rec
        body = bytes(out)
    elif kind is Reply.IOCTL:
        res = draw(_int("i"))
        data = draw(st.binary(max_size=min(arg.out_size, 64)))
        body = CODECS["ioctl_out"].struct.pack(res, 0, 0, 0) + data
    return session, op, arg, body


@st.composite
def notifications(draw: st.DrawFn, minor: int = 45) -> bytes:
    """Valid notifications (header included) for a session at ``minor``."""
    code = draw(st.sampled_from(sorted(c for c, n in NOTIFICATIONS.items() if n.since <= minor)))
    info = NOTIFICATIONS[code]
    payload = b""
    if info.payload is not None:
        rec = draw(records(info.payload))
        extra = b""
        if info.trailing == "name":
            name = draw(names(1, 40))
            rec = rec._replace(namelen=len(name))
            extra = name + b"\0"
        elif info.trailing == "data":
            data = draw(st.binary(max_size=64))
            rec = rec._replace(size=len(data))
            extra = data
        elif info.trailing == "nodeids":
            ids = draw(st.lists(_U64, max_size=6))
            rec = rec._replace(count=len(ids))
            extra = pack_u64s(ids)
        payload = CODECS[info.payload].encode(rec) + extra
    return _OUT_HEADER.pack(16 + len(payload), int(NotifyCode(code)), 0) + payload


@st.composite
def malformed_messages(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """``(minor, flags, message)`` broken in one of the ways a server must survive."""
    m, flags, good = draw(requests())
    how = draw(st.sampled_from(["truncate", "len", "nul", "ext", "opcode", "random",
                                "extend"]))
    buf = bytearray(good)
    hdr = _IN_HEADER.decode(buf)
    if how == "truncate":
        buf = buf[:draw(st.integers(0, max(0, len(buf) - 1)))]
    elif how == "len":
        _IN_HEADER.pack_into(buf, 0, hdr._replace(len=draw(_U32.filter(lambda n: n != len(good)))))
    elif how == "nul":
        end = bytes(buf).rfind(b"\0")
        if end >= 40:
            buf[end] = 0x41
    elif how == "ext":
        _IN_HEADER.pack_into(buf, 0, hdr._replace(total_extlen=draw(st.integers(1, 0xFFFF))))
    elif how == "opcode":
        bad = draw(st.sampled_from([0, 7, 19, 54, 55, 999, 4095, 0xFFFFFFFF]))
        _IN_HEADER.pack_into(buf, 0, hdr._replace(opcode=bad))
    elif how == "extend":
        buf += draw(st.binary(min_size=1, max_size=16))
        _IN_HEADER.pack_into(buf, 0, hdr._replace(len=len(buf)))
    else:
        buf = bytearray(draw(st.binary(max_size=200)))
    return m, flags, bytes(buf)
