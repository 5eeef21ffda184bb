"""Round trips: kernel-side encoders (fusewire.wire) against the server side."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusewire.connection import Connection, encode_notify
from fusewire.opcodes.flags import NotifyCode, Opcode
from fusewire.opcodes.table import NOTIFICATIONS, OPS
from fusewire.structs.codec import CODECS
from fusewire.testing import strategies as fst
from fusewire.wire import (
    KERNEL_FLAGS,
    ReplySizeError,
    decode_notify,
    decode_reply,
    encode_request,
    make_session,
)

MINORS = (19, 23, 31, 36, 38, 40, 45)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _conn(minor: int, flags: int) -> Connection:
    c = Connection()
    c.session = make_session(minor, flags)
    return c


def _ops_at(minor: int) -> list[int]:
    return sorted(c for c, r in OPS.items()
                  if r.since <= minor and c not in (Opcode.INIT, Opcode.CUSE_INIT))


CASES = [(m, op) for m in MINORS for op in _ops_at(m)]


@pytest.mark.parametrize(("minor", "opcode"), CASES,
                         ids=[f"7.{m}-{OPS[o].name}" for m, o in CASES])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_request_identity(minor: int, opcode: int, data: st.DataObject) -> None:
    spec = data.draw(fst.request_specs(opcode, minor))
    req = _conn(spec.minor, spec.flags).receive(spec.encode())
    assert (req.opcode, req.unique, req.nodeid) == (spec.opcode, spec.unique, spec.nodeid)
    assert (req.uid, req.gid, req.pid) == (spec.uid, spec.gid, spec.pid)
    assert req.arg == spec.arg
    assert req.names == spec.names
    if isinstance(spec.data, tuple):
        assert tuple(req.data) == spec.data
    else:
        assert bytes(req.data) == bytes(spec.data)
    if spec.ext:
        assert req.ext is not None and req.ext.raw == spec.ext


@SETTINGS
@given(msg=fst.init_requests())
def test_init_identity(msg: bytes) -> None:
    req = Connection().receive(msg)
    major, minor, ra, flags = struct.unpack_from("<IIII", msg, 40)
    assert (req.arg.major, req.arg.minor, req.arg.max_readahead, req.arg.flags) == (
        major, minor, ra, flags)
    assert len(msg) == (104 if minor >= 36 else 56)


@pytest.mark.parametrize("minor", MINORS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reply_accepted(minor: int, data: st.DataObject) -> None:
    session, op, arg, body = data.draw(fst.replies(minor=minor))
    decode_reply(session, op, arg, body)


@pytest.mark.parametrize("minor", MINORS)
def test_server_struct_replies_have_kernel_size(minor: int) -> None:
    """Connection.reply_struct produces exactly what wire.decode_reply expects."""
    session = make_session(minor, KERNEL_FLAGS)
    conn = Connection()
    conn.session = session
    for code, row in OPS.items():
        if row.reply_struct is None or row.since > minor:
            continue
        rec = CODECS[row.reply_struct].zero()
        bufs = conn.reply_struct(2, row.reply_struct, rec)
        raw = b"".join(bytes(b) for b in bufs)
        assert decode_reply(session, code, None, raw[16:]) == rec
        with pytest.raises(ReplySizeError):
            decode_reply(session, code, None, raw[16:] + b"\0" * 8)


def test_entry_size_by_minor() -> None:
    body = bytes(128)
    body = struct.pack("<Q", 5) + body[8:]
    assert decode_reply(make_session(45), Opcode.LOOKUP, None, body).nodeid == 5
    with pytest.raises(ReplySizeError):
        decode_reply(make_session(45), Opcode.LOOKUP, None, body[:120])
    with pytest.raises(ReplySizeError):
        decode_reply((8, 0), Opcode.LOOKUP, None, body)
    assert decode_reply((8, 0), Opcode.LOOKUP, None, body[:120]).nodeid == 5


def _server_notify(code: int, rec: Any, extra: bytes) -> bytes:
    """What the server's encoders (Server.notify_*) produce for ``rec``."""
    info = NOTIFICATIONS[code]
    payload = CODECS[info.payload].encode(rec) if info.payload else b""
    return b"".join(encode_notify(code, payload, extra) if extra else
                    encode_notify(code, payload) if payload else encode_notify(code))


@settings(max_examples=300, deadline=None)
@given(buf=fst.notifications())
def test_notification_identity(buf: bytes) -> None:
    code, rec, extra = decode_notify(buf)
    tail = extra if isinstance(extra, bytes) else struct.pack(f"<{len(extra)}Q", *extra)
    if code == NotifyCode.INVAL_ENTRY or code == NotifyCode.DELETE:
        tail += b"\0"
    assert _server_notify(code, rec, tail) == buf


def test_server_notify_encoders_pass_kernel_checks() -> None:
    """The byte layouts of fusewire.server.loop.Server.notify_* satisfy decode_notify."""
    conn = Connection()
    conn.session = make_session(45)
    samples = {
        NotifyCode.POLL: (struct.pack("<Q", 7),),
        NotifyCode.INVAL_INODE: (struct.pack("<Qqq", 2, 0, -1),),
        NotifyCode.INVAL_ENTRY: (struct.pack("<QII", 1, 3, 0), b"abc\0"),
        NotifyCode.DELETE: (struct.pack("<QQII", 1, 2, 3, 0), b"abc\0"),
        NotifyCode.STORE: (struct.pack("<QQII", 2, 0, 4, 0), b"data"),
        NotifyCode.RETRIEVE: (struct.pack("<QQQII", 1, 2, 0, 10, 0),),
        NotifyCode.RESEND: (),
        NotifyCode.INC_EPOCH: (),
        NotifyCode.PRUNE: (struct.pack("<IIQ", 2, 0, 0), struct.pack("<2Q", 2, 3)),
    }
    for code, parts in samples.items():
        buf = b"".join(conn.notify(code, *parts))
        got, _rec, _extra = decode_notify(buf)
        assert got == code
    bad = b"".join(encode_notify(NotifyCode.INVAL_ENTRY, struct.pack("<QII", 1, 3, 0), b"abc"))
    with pytest.raises(ReplySizeError):
        decode_notify(bad)
    with pytest.raises(ReplySizeError):
        decode_notify(b"".join(encode_notify(NotifyCode.PRUNE, struct.pack("<IIQ", 2, 0, 0))))
    with pytest.raises(ReplySizeError):
        decode_notify(b"".join(encode_notify(99)))
    with pytest.raises(ReplySizeError):
        decode_notify(b"".join(encode_notify(NotifyCode.PRUNE, bytes(16))), minor=44)


def test_encode_request_header() -> None:
    msg = encode_request((45, KERNEL_FLAGS), Opcode.MKDIR, 4, 1,
                         arg=CODECS["mkdir_in"].record(mode=0o755, umask=0o22),
                         names=(b"sub",), ext=struct.pack("<II", 8, 0))
    length, opcode, unique, nodeid, _u, _g, _p, extlen, _pad = struct.unpack_from(
        "<IIQQIIIHH", msg)
    assert (length, opcode, unique, nodeid, extlen) == (len(msg), 9, 4, 1, 1)
    assert msg[40:] == struct.pack("<II", 0o755, 0o22) + b"sub\0" + struct.pack("<II", 8, 0)
