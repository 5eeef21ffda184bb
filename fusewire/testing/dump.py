"""Render a capture strace-style: one line (or one JSON object) per message.

:func:`iter_events` walks a :class:`~fusewire.testing.capture.CaptureReader`
and yields :class:`Event` objects: requests parsed with the session the
capture negotiated (flag fields named through :func:`fusewire.server.trace.format_fields`),
replies decoded with the reply layout of their request's row in the opcode
table and matched to the request by ``unique`` (latency = reply time -
request time), notifications decoded per :data:`~fusewire.opcodes.table.NOTIFICATIONS`.
:func:`render_line` and :func:`render_json` turn an event into text.

:func:`decode_reply` is shared with :mod:`fusewire.testing.replay`, which
compares replies field by field.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fusewire.connection import (
    Config,
    Connection,
    Request,
    Session,
    parse_request,
)
from fusewire.errors import RemoteProtocolError
from fusewire.handles import HandleDirentPlus, HandleEntry
from fusewire.opcodes.flags import (
    FUSE_KERNEL_MINOR_VERSION,
    FUSE_KERNEL_VERSION,
    InitFlag,
    NotifyCode,
    Opcode,
)
from fusewire.opcodes.table import NOTIFICATIONS, OPS
from fusewire.server.trace import flag_str, format_fields
from fusewire.server.trace import request_text as _request_text
from fusewire.structs.codec import CODECS
from fusewire.structs.records import (
    AttrOut,
    Entry2Out,
    EntryOut,
    GetxattrOut,
    InitIn,
    InitOut,
    InitOutV2,
    IoctlOut,
    OpenOut,
    StatfsOut,
    StatxOut,
)
from fusewire.testing.capture import CaptureError, CaptureReader, Kind, Record, session_from_init
from fusewire.wire import DirentPlus, EntryWithHandle, KernelRuleError, reply_header
from fusewire.wire import decode_notify as _wire_notify
from fusewire.wire import decode_reply as _wire_decode

__all__ = [
    "Event",
    "decode_notify",
    "decode_reply",
    "default_session",
    "event_matches",
    "iter_events",
    "render_json",
    "render_line",
    "render_reply",
    "to_jsonable",
]

_NODEID = CODECS["in_header"].head(4)  # len, opcode, unique, nodeid
#: request struct fields that hold nodeids
NODEID_FIELDS = ("newdir", "oldnodeid", "nodeid_out")


@dataclass
class Event:
    """One rendered message.

    ``direction`` is ``"request"`` (kernel -> server), ``"reply"`` or
    ``"notify"``; ``name`` the opcode or notification name; ``fields`` the
    decoded arguments or result as plain data; ``text`` their one-line form;
    ``error`` the positive errno of an error reply (0 for success);
    ``latency_ns`` reply time - request time for a matched reply.
    """

    direction: str
    name: str
    unique: int
    time_ns: int
    tid: int
    nodeid: int | None = None
    text: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    error: int | None = None
    latency_ns: int | None = None
    nodeids: set[int] = field(default_factory=set)
    request: Request | None = None
    record: Record | None = None

    @property
    def result(self) -> str:
        """``OK``, an errno name, or empty for requests and notifications."""
        if self.error is None:
            return ""
        return "OK" if self.error == 0 else errno.errorcode.get(self.error, str(self.error))


def default_session() -> Session:
    """A session for captures without INIT: everything this library speaks, negotiated."""
    full = (1 << 64) - 1
    arg = InitIn(FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION, 1 << 20, full & 0xFFFFFFFF,
                 full >> 32, (0,) * 11)
    return Connection(Config()).negotiate(arg)


# -- plain data --------------------------------------------------------------------------


def rec_dict(rec: Any) -> dict[str, Any]:
    """A record (NamedTuple) as a dict, nested records too, padding dropped."""
    out: dict[str, Any] = {}
    for name, value in zip(rec._fields, rec, strict=True):
        if name in ("padding", "dummy", "unused", "spare", "spare0", "spare2", "reserved"):
            continue
        if hasattr(value, "_fields"):
            out[name] = rec_dict(value)
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def to_jsonable(value: Any) -> Any:
    """Bytes become ``{"len": n, "hex": first 32 bytes}``; containers recurse."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        return {"len": len(b), "hex": b[:32].hex()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    return value


def _name(b: bytes) -> str:
    return os.fsdecode(b)


def _errname(err: int) -> str:
    return errno.errorcode.get(err, str(err))


# -- requests -----------------------------------------------------------------------------


def request_fields(req: Request) -> dict[str, Any]:
    """Plain data for a parsed request."""
    out: dict[str, Any] = {"uid": req.uid, "gid": req.gid, "pid": req.pid}
    if req.arg is not None:
        out["arg"] = rec_dict(req.arg)
    if req.names:
        out["names"] = [_name(n) for n in req.names]
    data = req.data
    if isinstance(data, memoryview):
        if len(data):
            out["data"] = bytes(data)
    elif isinstance(data, tuple) and data:
        out["pairs"] = [list(p) for p in data]
    if req.ext is not None:
        out["ext"] = {"groups": list(req.ext.groups), "secctx": len(req.ext.secctx)}
        if req.ext.handle is not None:
            out["ext"]["handle"] = req.ext.handle
    return out


def request_text(req: Request) -> str:
    """``uid=0 gid=0 pid=1 {fields} 'name' +N bytes`` (names decoded as paths)."""
    return _request_text(req, lambda n: repr(_name(n)))


def _request_nodeids(req: Request) -> set[int]:
    ids = {req.nodeid}
    for f in NODEID_FIELDS:
        v = getattr(req.arg, f, None)
        if isinstance(v, int):
            ids.add(v)
    if req.opcode == Opcode.BATCH_FORGET and isinstance(req.data, tuple):
        ids.update(p[0] for p in req.data)
    return ids


# -- replies ------------------------------------------------------------------------------


def _attr_text(a: dict[str, Any]) -> str:
    return (f"ino={a['ino']} mode={a['mode']:#o} size={a['size']} nlink={a['nlink']} "
            f"uid={a['uid']} gid={a['gid']}")


def _entry_text(e: dict[str, Any]) -> str:
    text = f"nodeid={e['nodeid']} generation={e['generation']}"
    return f"{text} {{{_attr_text(e['attr'])}}}" if "attr" in e else text


def decode_reply(req: Request | None, payload: bytes,
                 session: Session | None) -> tuple[int, dict[str, Any], str]:
    """Decode a reply: ``(positive errno or 0, plain fields, one-line text)``.

    ``req`` is the request it answers (None when unmatched: only the
    header is decoded).  The body goes through the one reply decoder
    (:func:`fusewire.wire.decode_reply`); this function only renders what
    it returns.  Never raises: a body that decoder refuses is reported in the
    text and as ``fields["raw"]``.
    """
    length, err, _unique = reply_header(payload)
    if err:
        return -err, {}, f"-{_errname(-err)}"
    body = payload[16:length]
    if req is None or (session is None and req.opcode != Opcode.INIT):
        return 0, {"raw": body}, f"{len(body)} bytes"
    try:
        decoded = _wire_decode(session or _INIT_ONLY, req.opcode, req.arg, body,
                               check=False)
        fields, text = render_reply(req, decoded)
    except (KernelRuleError, struct.error, ValueError, IndexError, KeyError,
            TypeError) as exc:
        return 0, {"raw": body}, f"undecodable {len(body)} bytes ({exc})"
    return 0, fields, text


#: what decodes an INIT reply before the capture's session is known
_INIT_ONLY = (FUSE_KERNEL_MINOR_VERSION, 0)


def _entry_fields(entry: Any) -> tuple[dict[str, Any], str]:
    """An entry as fields: entry_out/entry2_out, or one with a draft handle."""
    if isinstance(entry, EntryWithHandle | HandleEntry):
        e = rec_dict(entry.entry)
        return {"entry": e, "handle": entry.handle}, _entry_text(e)
    e = rec_dict(entry)
    return {"entry": e}, _entry_text(e)


def _dirent_item(d: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if isinstance(d, DirentPlus | HandleDirentPlus):
        item["entry"] = rec_dict(d.entry)
        d = d.dirent
    item.update({"ino": d.ino, "off": d.off, "type": d.type, "name": _name(d.name)})
    return item


def render_reply(req: Request, decoded: Any) -> tuple[dict[str, Any], str]:
    """Plain fields and one-line text for a reply the decoder returned.

    Dispatches on the decoded value's type (never on the row's reply kind:
    the decoder read that); the request only names a data reply (a symlink
    target, xattr names) and the struct of a fixed reply.
    """
    if decoded is None:
        return {}, ""
    if isinstance(decoded, InitOut | InitOutV2):
        flags = decoded.flags | (decoded.flags2 << 32 if decoded.minor >= 36 else 0)
        text = (f"major={decoded.major} minor={decoded.minor} "
                f"flags={flag_str(InitFlag, flags)} max_write={decoded.max_write} "
                f"max_pages={decoded.max_pages} max_readahead={decoded.max_readahead} "
                f"time_gran={decoded.time_gran}")
        return rec_dict(decoded), text
    if isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[1], OpenOut):
        fields, text = _entry_fields(decoded[0])
        fields["open"] = rec_dict(decoded[1])
        return fields, f"{text} {{{format_fields(decoded[1])}}}"
    if isinstance(decoded, EntryOut | Entry2Out | EntryWithHandle | HandleEntry):
        return _entry_fields(decoded)
    if isinstance(decoded, GetxattrOut):
        return {"size": decoded.size}, f"size={decoded.size}"
    if isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[0], IoctlOut):
        o, rest = decoded
        return ({"ioctl_out": rec_dict(o), "data": rest},
                f"{{{format_fields(o)}}} +{len(rest)} bytes")
    if isinstance(decoded, list):
        items = [_dirent_item(d) for d in decoded]
        names = [i["name"] for i in items]
        shown = " ".join(repr(n) for n in names[:8]) + (" ..." if len(names) > 8 else "")
        return {"entries": items}, f"{len(items)} entries: {shown}".rstrip()
    if isinstance(decoded, bytes):
        if req.opcode == Opcode.READLINK:
            return {"target": _name(decoded)}, repr(_name(decoded))
        if req.opcode == Opcode.LISTXATTR:
            names = [_name(n) for n in decoded.split(b"\0") if n]
            return {"names": names}, " ".join(repr(n) for n in names)
        return {"data": decoded}, f"+{len(decoded)} bytes"
    name = req.info.reply_struct or type(decoded).__name__
    d = rec_dict(decoded)
    if isinstance(decoded, AttrOut):
        text = f"attr_valid={decoded.attr_valid} {{{_attr_text(d['attr'])}}}"
    elif isinstance(decoded, StatxOut):
        st = d["stat"]
        text = (f"mask={st['mask']:#x} ino={st['ino']} mode={st['mode']:#o} "
                f"size={st['size']} nlink={st['nlink']}")
    elif isinstance(decoded, StatfsOut):
        text = format_fields(decoded.st)
    else:
        text = format_fields(decoded)
    return {name: d}, text


def _reply_nodeids(fields: dict[str, Any]) -> set[int]:
    ids: set[int] = set()
    if "entry" in fields:
        ids.add(fields["entry"]["nodeid"])
    for item in fields.get("entries", ()):
        if "entry" in item:
            ids.add(item["entry"]["nodeid"])
    return ids


# -- notifications --------------------------------------------------------------------------


def decode_notify(payload: bytes) -> tuple[str, dict[str, Any], str, set[int]]:
    """Decode a notification: ``(name, fields, text, nodeids)``.  Never raises.

    The payload goes through :func:`fusewire.wire.decode_notify`; this
    function only renders what it returns.
    """
    length, code, _unique = reply_header(payload)
    body = payload[16:length]
    try:
        name = NotifyCode(code).name
    except ValueError:
        return f"NOTIFY_{code}", {"raw": body}, f"{len(body)} bytes", set()
    try:
        _code, rec, extra = _wire_notify(bytes(payload[:length]))
    except (KernelRuleError, struct.error, ValueError, IndexError) as exc:
        return name, {"raw": body}, f"undecodable {len(body)} bytes ({exc})", set()
    fields: dict[str, Any] = {}
    parts: list[str] = []
    ids: set[int] = set()
    if rec is not None:
        fields = rec_dict(rec)
        parts.append(f"{{{format_fields(rec)}}}")
        ids.update(fields[f] for f in ("ino", "parent", "child", "nodeid") if f in fields)
    trailing = NOTIFICATIONS[code].trailing
    if trailing == "name":
        nm = _name(extra)
        fields["name"] = nm
        parts.append(repr(nm))
    elif trailing == "data":
        fields["data"] = extra
        parts.append(f"+{len(extra)} bytes")
    elif trailing == "nodeids":
        nodes = list(extra)
        fields["nodeids"] = nodes
        ids.update(nodes)
        parts.append(f"{nodes[:8]}{'...' if len(nodes) > 8 else ''}")
    return name, fields, " ".join(parts), ids


# -- events ---------------------------------------------------------------------------------


def iter_events(reader: CaptureReader | Iterable[Record]) -> Iterator[Event]:
    """Events in capture order; replies matched to their requests by unique."""
    records = list(reader)
    session: Session | None = None
    if isinstance(reader, CaptureReader):
        try:
            session = reader.session()
        except (CaptureError, RemoteProtocolError, struct.error):
            session = None
    has_init = any(r.kind == Kind.REQUEST and r.opcode == Opcode.INIT for r in records[:1])
    if session is None and not has_init:
        session = default_session()
    live: Session | None = None if has_init else session
    pending: dict[int, tuple[Request | None, Record]] = {}
    for rec in records:
        if rec.kind == Kind.REQUEST:
            yield _request_event(rec, live, pending)
        elif rec.kind == Kind.REPLY:
            req, req_rec = pending.pop(rec.unique, (None, None))
            ev = _reply_event(rec, req, req_rec, live if live is not None else session)
            if req is not None and req.opcode == Opcode.INIT and not ev.error:
                try:
                    assert req_rec is not None
                    live = session_from_init(req_rec.payload, rec.payload)
                except (CaptureError, RemoteProtocolError, struct.error):
                    live = session or default_session()
            yield ev
        elif rec.kind == Kind.NOTIFY:
            name, fields, text, ids = decode_notify(rec.payload)
            yield Event("notify", name, 0, rec.offset_ns, rec.tid, None, text, fields,
                        nodeids=ids, record=rec)


def _request_event(rec: Record, session: Session | None,
                   pending: dict[int, tuple[Request | None, Record]]) -> Event:
    op = rec.opcode
    unique = rec.unique
    try:
        req = parse_request(rec.payload, session)
    except RemoteProtocolError as exc:
        row = OPS.get(op or -1)
        name = row.name if row is not None else f"OPCODE_{op}"
        pending[unique] = (None, rec)
        nodeid = _NODEID.unpack_from(rec.payload)[3] if len(rec.payload) >= 24 else 0
        return Event("request", name, unique, rec.offset_ns, rec.tid, nodeid,
                     f"malformed: {exc}", {"error": str(exc)}, nodeids={nodeid}, record=rec)
    if not req.info.no_reply:
        pending[unique] = (req, rec)
    return Event("request", req.info.name, unique, rec.offset_ns, rec.tid, req.nodeid,
                 request_text(req), request_fields(req), nodeids=_request_nodeids(req),
                 request=req, record=rec)


def _reply_event(rec: Record, req: Request | None, req_rec: Record | None,
                 session: Session | None) -> Event:
    err, fields, text = decode_reply(req, rec.payload, session)
    latency = rec.time_ns - req_rec.time_ns if req_rec is not None else None
    if req is not None:
        name = req.info.name
        nodeid: int | None = req.nodeid
        ids = _request_nodeids(req) | _reply_nodeids(fields)
    elif req_rec is not None:
        op = req_rec.opcode
        row = OPS.get(op or -1)
        name = row.name if row is not None else f"OPCODE_{op}"
        nodeid = None
        ids = set()
    else:
        name, nodeid, ids = "?", None, set()
    return Event("reply", name, rec.unique, rec.offset_ns, rec.tid, nodeid, text, fields,
                 error=err, latency_ns=latency, nodeids=ids, request=req, record=rec)


# -- rendering ------------------------------------------------------------------------------


def render_line(ev: Event) -> str:
    """One strace-like line.

    ``+0.001234 [tid] > LOOKUP #0x4 nodeid=1 uid=0 gid=0 pid=9 'name'``,
    ``+0.001301 [tid] < LOOKUP #0x4 = OK nodeid=5 ... <67us>``,
    ``+0.002000 [tid] ! NOTIFY INVAL_INODE {ino=5 off=0 len=0}``.
    """
    t = f"+{ev.time_ns / 1e9:.6f} [{ev.tid}]"
    uniq = f"#{ev.unique & ((1 << 63) - 1):#x}{' RESENT' if ev.unique >> 63 else ''}"
    if ev.direction == "request":
        return f"{t} > {ev.name} {uniq} nodeid={ev.nodeid} {ev.text}".rstrip()
    if ev.direction == "reply":
        lat = f" <{ev.latency_ns / 1000:.0f}us>" if ev.latency_ns is not None else ""
        body = f" {ev.text}" if ev.text and not ev.error else ""
        res = "OK" if not ev.error else f"-{ev.result}"
        return f"{t} < {ev.name} {uniq} = {res}{body}{lat}"
    return f"{t} ! NOTIFY {ev.name} {ev.text}".rstrip()


def render_json(ev: Event) -> str:
    """One JSON object (no newline)."""
    obj: dict[str, Any] = {
        "t": ev.time_ns / 1e9, "tid": ev.tid, "dir": ev.direction, "name": ev.name,
        "unique": ev.unique,
    }
    if ev.nodeid is not None:
        obj["nodeid"] = ev.nodeid
    if ev.error is not None:
        obj["result"] = ev.result
        obj["errno"] = ev.error
    if ev.latency_ns is not None:
        obj["latency_us"] = ev.latency_ns / 1000
    obj["fields"] = to_jsonable(ev.fields)
    obj["text"] = ev.text
    return json.dumps(obj, sort_keys=False)


def event_matches(ev: Event, names: set[str] | None = None, nodeid: int | None = None) -> bool:
    """The ``--opcode`` / ``--nodeid`` filters (names compared upper-case)."""
    if names is not None and ev.name.upper() not in names:
        return False
    return nodeid is None or nodeid in ev.nodeids
