"""``fusewire dump``: every opcode and every notification of the table renders.

The capture is synthetic but valid: an INIT exchange negotiated by a real
:class:`~fusewire.connection.Connection`, then one request of every opcode in
``OPS`` (header via ``CODECS["in_header"]``, body per the row) with a
well-formed success reply of the row's reply kind, and one notification of
every code in ``NOTIFICATIONS``.
"""

from __future__ import annotations

import errno
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from fusewire.cli import main
from fusewire.connection import Config, Connection, Session, encode_notify, parse_request
from fusewire.opcodes.flags import FOPEN, FUSE_KERNEL_VERSION, InitFlag, Opcode
from fusewire.opcodes.table import NOTIFICATIONS, OPS, OpInfo, Reply, Trailing
from fusewire.structs.codec import CODECS
from fusewire.structs.layout import encode_sized
from fusewire.testing.capture import CaptureReader, CaptureWriter, Kind
from fusewire.testing.dump import iter_events, render_json, render_line

HDR = CODECS["in_header"]
OUT = struct.Struct("<IiQ")
NODE = 7


def zero(name: str) -> Any:
    codec = CODECS[name]
    return codec.decode(bytes(codec.size))


def message(opcode: int, unique: int, nodeid: int, body: bytes) -> bytes:
    rec = HDR.record(40 + len(body), opcode, unique, nodeid, 0, 0, 1234, 0, 0)
    return bytes(HDR.encode(rec)) + body


def init_exchange() -> tuple[bytes, bytes, Session]:
    flags = int(InitFlag.INIT_EXT | InitFlag.ASYNC_READ | InitFlag.DO_READDIRPLUS
                | InitFlag.SETXATTR_EXT | InitFlag.MAX_PAGES | InitFlag.POSIX_LOCKS)
    arg = zero("init_in")._replace(major=FUSE_KERNEL_VERSION, minor=45,
                                   max_readahead=131072, flags=flags & 0xFFFFFFFF,
                                   flags2=flags >> 32)
    req_bytes = message(Opcode.INIT, 2, 0, CODECS["init_in"].encode(arg))
    conn = Connection(Config())
    reply = b"".join(conn.initialize(conn.receive(req_bytes)))
    assert conn.session is not None
    return req_bytes, reply, conn.session


def request_body(row: OpInfo, session: Session) -> bytes:
    body = b""
    data = b"payload"
    if row.request is not None:
        rec = zero(row.request)
        fields = rec._fields
        changes: dict[str, Any] = {}
        for name, value in (("fh", 3), ("size", 64), ("mode", 0o100644), ("newdir", 9),
                            ("oldnodeid", 11), ("nodeid_out", 12), ("count", 2),
                            ("nlookup", 1), ("offset", 4096), ("unique", 40)):
            if name in fields:
                changes[name] = value
        if row.opcode in (Opcode.WRITE, Opcode.SETXATTR):
            changes["size"] = len(data)
        if row.opcode == Opcode.GETXATTR:
            changes["size"] = 0  # a size probe: the reply is getxattr_out
        if "valid" in fields:
            changes["valid"] = 1 | 8  # FATTR.MODE | FATTR.SIZE
        if "flags" in fields and row.request == "rename2_in":
            changes["flags"] = 1  # RENAME_NOREPLACE
        rec = rec._replace(**changes)
        body = encode_sized(CODECS[row.request], rec, session.sizes[row.request])
    for i in range(row.names):
        body += f"name{i}".encode() + b"\0"
    if row.trailing is Trailing.DATA:
        body += data
    elif row.trailing in (Trailing.FORGETS, Trailing.MAPPINGS):
        body += struct.pack("<QQQQ", 20, 1, 21, 2)
    return body


def entry(session: Session, nodeid: int = 21) -> bytes:
    attr = zero("attr")._replace(ino=nodeid, size=5, mode=0o100644, nlink=1, blksize=4096)
    rec = zero("entry_out")._replace(nodeid=nodeid, generation=1, attr=attr)
    return encode_sized(CODECS["entry_out"], rec, session.sizes["entry_out"])


def dirent(name: bytes, ino: int, off: int) -> bytes:
    d = CODECS["dirent"].encode(zero("dirent")._replace(ino=ino, off=off, namelen=len(name),
                                                        type=8))
    return d + name + bytes(-len(name) % 8)


def reply_body(row: OpInfo, session: Session) -> bytes:
    kind = row.reply
    if kind is Reply.ENTRY:
        return entry(session)
    if kind is Reply.ENTRY_OPEN:
        oo = zero("open_out")._replace(fh=5, open_flags=int(FOPEN.KEEP_CACHE))
        return entry(session) + CODECS["open_out"].encode(oo)
    if kind is Reply.STRUCT:
        name = row.reply_struct
        assert name is not None
        rec = zero(name)
        if name == "open_out":
            rec = rec._replace(fh=5, open_flags=int(FOPEN.DIRECT_IO | FOPEN.KEEP_CACHE))
        if name == "write_out":
            rec = rec._replace(size=7)
        if name == "attr_out":
            rec = rec._replace(attr=zero("attr")._replace(ino=NODE, mode=0o40755, size=4))
        return encode_sized(CODECS[name], rec, session.sizes[name])
    if kind is Reply.DATA:
        return b"hello"
    if kind is Reply.XATTR:
        if row.opcode == Opcode.LISTXATTR:
            return b"user.a\0user.b\0"
        return CODECS["getxattr_out"].encode(zero("getxattr_out")._replace(size=10))
    if kind is Reply.DIRENTS:
        return dirent(b".", NODE, 1) + dirent(b"..", 1, 2) + dirent(b"file", 21, 3)
    if kind is Reply.DIRENTSPLUS:
        return entry(session, NODE) + dirent(b".", NODE, 1) + entry(session) + dirent(
            b"file", 21, 2)
    if kind is Reply.IOCTL:
        return CODECS["ioctl_out"].encode(zero("ioctl_out")) + b"out"
    return b""


def notify_payload(code: int) -> list[bytes]:
    info = NOTIFICATIONS[code]
    parts: list[bytes] = []
    rec: Any = None
    if info.payload is not None:
        rec = zero(info.payload)
        for name, value in (("ino", NODE), ("parent", 1), ("child", NODE), ("nodeid", NODE),
                            ("kh", 99), ("namelen", 3), ("size", 3), ("count", 2),
                            ("notify_unique", 5)):
            if name in rec._fields:
                rec = rec._replace(**{name: value})
        parts.append(CODECS[info.payload].encode(rec))
    if info.trailing == "name":
        parts.append(b"foo\0")
    elif info.trailing == "data":
        parts.append(b"abc")
    elif info.trailing == "nodeids":
        parts.append(struct.pack("<QQ", NODE, 8))
    return parts


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    path = tmp_path / "all.fwcap"
    w = CaptureWriter(path)
    init_req, init_reply, session = init_exchange()
    w.request(init_req)
    w.reply([init_reply])
    unique = 4
    for op, row in sorted(OPS.items()):
        if op == Opcode.INIT:
            continue
        msg = message(op, unique, NODE, request_body(row, session))
        parse_request(msg, session)  # the synthetic request must be valid
        w.request(msg)
        if row.reply is Reply.OPTIONAL:
            w.reply([OUT.pack(16, -errno.EAGAIN, unique)])
        elif not row.no_reply:
            body = reply_body(row, session)
            w.reply([OUT.pack(16 + len(body), 0, unique), body])
        unique += 2
    # an error reply too
    w.request(message(Opcode.LOOKUP, unique, 1, b"missing\0"))
    w.reply([OUT.pack(16, -errno.ENOENT, unique)])
    for code in sorted(NOTIFICATIONS):
        w.notify(encode_notify(code, *notify_payload(code)))
    w.close()
    return path


def run_dump(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["dump", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_every_opcode_and_notification_renders(synthetic: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_dump(capsys, str(synthetic))
    for row in OPS.values():
        req = [ln for ln in lines if f" > {row.name} #" in ln]
        assert req, f"no request line for {row.name}"
        if not row.no_reply:
            rep = [ln for ln in lines if f" < {row.name} #" in ln]
            assert rep, f"no reply line for {row.name}"
            assert all("undecodable" not in ln for ln in rep), rep
            assert all(ln.endswith("us>") for ln in rep), rep
    for info in NOTIFICATIONS.values():
        assert any(f"! NOTIFY {info.code.name}" in ln for ln in lines), info.code.name
    assert not [ln for ln in lines if "malformed" in ln or "undecodable" in ln]
    text = "\n".join(lines)
    # flag names from the table's flag families, errno names, decoded structs
    assert "open_flags=DIRECT_IO|KEEP_CACHE" in text
    assert "flags=NOREPLACE" in text
    assert "= -ENOENT" in text and "= -EAGAIN" in text
    assert "nodeid=21 generation=1 {ino=21 mode=0o100644 size=5" in text
    assert "3 entries: '.' '..' 'file'" in text
    assert "'user.a' 'user.b'" in text
    assert "! NOTIFY INVAL_ENTRY {parent=1 namelen=3 flags=0} 'foo'" in text
    assert "! NOTIFY PRUNE" in text and "[7, 8]" in text


def test_events_api(synthetic: Path) -> None:
    events = list(iter_events(CaptureReader(synthetic)))
    assert {e.direction for e in events} == {"request", "reply", "notify"}
    replies = [e for e in events if e.direction == "reply"]
    assert all(e.latency_ns is not None and e.latency_ns >= 0 for e in replies)
    write = next(e for e in replies if e.name == "WRITE")
    assert write.fields == {"write_out": {"size": 7}}
    for e in events:
        assert render_line(e)
        json.loads(render_json(e))


def test_json_output(synthetic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_dump(capsys, "--json", str(synthetic))
    objs = [json.loads(ln) for ln in lines]
    assert len(objs) == len([r for r in CaptureReader(synthetic) if r.kind != Kind.NOTIFY]) \
        + len(NOTIFICATIONS)
    names = {o["name"] for o in objs}
    assert set(r.name for r in OPS.values()) <= names
    lookup = [o for o in objs if o["name"] == "LOOKUP" and o["dir"] == "reply"]
    assert {o["result"] for o in lookup} == {"OK", "ENOENT"}
    assert all("latency_us" in o for o in lookup)


def test_filters(synthetic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_dump(capsys, "--opcode", "lookup,WRITE", str(synthetic))
    assert lines and all((" LOOKUP #" in ln) or (" WRITE #" in ln) for ln in lines)
    assert len(lines) == 6  # two LOOKUPs and one WRITE, each request + reply
    lines = run_dump(capsys, "--opcode", "INVAL_INODE", "--opcode", "MKDIR", str(synthetic))
    assert len(lines) == 3
    lines = run_dump(capsys, "--nodeid", "1", str(synthetic))
    assert lines and all("nodeid=1 " in ln or "parent=1" in ln or " < " in ln for ln in lines)
    assert any("missing" in ln for ln in lines)
    # nodeid 21 appears only in replies' entries and forgets
    lines = run_dump(capsys, "--nodeid", "21", str(synthetic))
    assert any(" < LOOKUP" in ln for ln in lines)
    assert any("BATCH_FORGET" in ln for ln in lines)
    assert run_dump(capsys, "--nodeid", "424242", str(synthetic)) == []


def test_dump_reports_torn_tail(synthetic: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    data = synthetic.read_bytes()
    torn = tmp_path / "torn.fwcap"
    torn.write_bytes(data[:-40])
    lines = run_dump(capsys, str(torn))
    assert lines
    assert main(["dump", str(torn)]) == 0
    assert "dropped" in capsys.readouterr().err
