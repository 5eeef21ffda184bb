"""The fused fast paths (fusewire/server/fastpath.py) answer exactly as the generic path.

Two dispatchers over two fresh memfs instances get the same messages with the
clock pinned: one serves through its fast paths, the other is forced onto the
generic path (an observer is set, which turns the fast paths off).  Every
reply must be byte-identical, the lookup counts the same, and the fast
dispatcher must really have taken its fast paths (it parses no request the
generic way for them).  Malformed and unusual messages (no NUL, trailing
bytes, a short body, extensions, flags that need more work) must fall back
and get the generic answer, handler bugs must give the same EIO and log
line, and a deferred reply must work from a fast path.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fusewire.connection import Connection, Request
from fusewire.examples.memfs import MemFS
from fusewire.opcodes import Opcode
from fusewire.recovery_api import pin_clock
from fusewire.server.dispatch import Dispatcher
from fusewire.structs.codec import CODECS
from fusewire.types import FUSEError, RequestContext

HDR = struct.Struct("<IIQQIIIHH")
OUT = struct.Struct("<IiQ")
ROOT = 1
FAST_OPS = {Opcode.LOOKUP, Opcode.FORGET, Opcode.GETATTR, Opcode.UNLINK, Opcode.CREATE,
            Opcode.WRITE, Opcode.FLUSH, Opcode.RELEASE, Opcode.GETXATTR}


def _msg(opcode: int, unique: int, nodeid: int, body: bytes = b"", *, uid: int = 0,
         extlen: int = 0, length: int | None = None) -> bytes:
    n = HDR.size + len(body) if length is None else length
    return HDR.pack(n, opcode, unique, nodeid, uid, uid, 4321, extlen, 0) + body


def _init() -> bytes:
    return _msg(Opcode.INIT, 1, 0, struct.pack("<IIIII", 7, 45, 131072, 0x7FFFFFFF, 0)
                + bytes(44))


class _Counting(Connection):
    """A connection that counts the requests parsed the generic way, by opcode."""

    def __init__(self) -> None:
        super().__init__()
        self.generic: list[int] = []

    def receive(self, buf: Any) -> Request:
        req = super().receive(buf)
        self.generic.append(req.opcode)
        return req


def _fs(factory: Callable[[], MemFS]) -> MemFS:
    fs = factory()
    fs._generation = 7          # random per instance otherwise
    return fs


def _pair(factory: Callable[[], MemFS] = MemFS) -> tuple[Dispatcher, Dispatcher]:
    fast = Dispatcher(_fs(factory), _Counting())
    slow = Dispatcher(_fs(factory), _Counting())
    slow.observer = lambda req: None        # any observer: the generic path only
    for d in (fast, slow):
        bufs, _ = d.dispatch(_init())
        assert bufs is not None
    return fast, slow


def _both(fast: Dispatcher, slow: Dispatcher, msg: bytes) -> tuple[bytes | None, list[int]]:
    got_f, lk_f = fast.dispatch(msg)
    got_s, lk_s = slow.dispatch(msg)
    bytes_f = None if got_f is None else b"".join(bytes(b) for b in got_f)
    bytes_s = None if got_s is None else b"".join(bytes(b) for b in got_s)
    opcode = HDR.unpack_from(msg)[1] if len(msg) >= HDR.size else None
    assert bytes_f == bytes_s, f"opcode {opcode}: fast {bytes_f!r} != generic {bytes_s!r}"
    assert lk_f == lk_s
    assert fast.nodes.counts == slow.nodes.counts
    assert fast.conn.inflight == slow.conn.inflight
    return bytes_f, lk_f


def _errno(reply: bytes | None) -> int:
    assert reply is not None
    length, error, _ = OUT.unpack_from(reply)
    assert length == len(reply)
    return -error


@pytest.fixture(autouse=True)
def _pinned_clock() -> Iterator[None]:
    pin_clock(1_700_000_000_123_456_789)
    yield
    pin_clock(None)


def _small_file(fast: Dispatcher, slow: Dispatcher, name: bytes, u: int,
                write_flags: int = 0) -> int:
    """The bench's small-file sequence: LOOKUP (miss), CREATE, GETXATTR, WRITE,
    FLUSH, RELEASE; returns the new nodeid."""
    assert _errno(_both(fast, slow, _msg(Opcode.LOOKUP, u, ROOT, name + b"\0"))[0]) \
        == errno.ENOENT
    reply, lookups = _both(fast, slow, _msg(Opcode.CREATE, u + 1, ROOT,
                                            struct.pack("<IIII", os.O_WRONLY | os.O_CREAT
                                                        | os.O_EXCL, 0o100644, 0o022, 0)
                                            + name + b"\0"))
    assert reply is not None and _errno(reply) == 0 and len(reply) == 16 + 128 + 16
    nodeid = struct.unpack_from("<Q", reply, 16)[0]
    fh = struct.unpack_from("<Q", reply, 16 + 128)[0]
    assert lookups == [nodeid]
    assert _errno(_both(fast, slow, _msg(Opcode.GETXATTR, u + 2, nodeid,
                                         struct.pack("<II", 0, 0)
                                         + b"security.capability\0"))[0]) == errno.ENODATA
    data = b"s" * 4096
    reply, _ = _both(fast, slow, _msg(Opcode.WRITE, u + 3, nodeid,
                                      struct.pack("<QQIIQII", fh, 0, len(data), write_flags,
                                                  0, os.O_WRONLY, 0) + data))
    assert reply is not None and struct.unpack_from("<I", reply, 16)[0] == len(data)
    assert _errno(_both(fast, slow, _msg(Opcode.FLUSH, u + 4, nodeid,
                                         struct.pack("<QIIQ", fh, 0, 0, 77)))[0]) == 0
    assert _errno(_both(fast, slow, _msg(Opcode.RELEASE, u + 5, nodeid,
                                         struct.pack("<QIIQ", fh, os.O_WRONLY, 0, 0)))[0]) == 0
    return nodeid


def test_small_file_sequence_is_byte_identical_and_fast() -> None:
    fast, slow = _pair()
    fast.conn.generic.clear()    # type: ignore[attr-defined]
    for i in range(3):
        name = f"f{i}".encode()
        nodeid = _small_file(fast, slow, name, 100 + 10 * i)
        reply, _ = _both(fast, slow, _msg(Opcode.GETATTR, 107 + 10 * i, nodeid,
                                          struct.pack("<IIQ", 0, 0, 0)))
        assert _errno(reply) == 0
        reply, lookups = _both(fast, slow, _msg(Opcode.LOOKUP, 108 + 10 * i, ROOT,
                                                name + b"\0"))
        assert _errno(reply) == 0 and lookups == [nodeid]
        assert _errno(_both(fast, slow, _msg(Opcode.UNLINK, 109 + 10 * i, ROOT,
                                             name + b"\0"))[0]) == 0
        assert fast.nodes.counts[nodeid] == 2
        assert _both(fast, slow, _msg(Opcode.FORGET, 0, nodeid, struct.pack("<Q", 2))) \
            == (None, [])
        assert nodeid not in fast.nodes.counts
        assert nodeid not in fast.ops._inodes          # type: ignore[attr-defined]
    assert set(fast._fast or {}) == {int(op) for op in FAST_OPS}
    # the fast dispatcher parsed none of these the generic way
    assert fast.conn.generic == []                     # type: ignore[attr-defined]
    assert len(slow.conn.generic) > 20                 # type: ignore[attr-defined]
    assert not fast.conn.inflight


def test_xattr_replies_and_errors_match() -> None:
    fast, slow = _pair()
    nodeid = _small_file(fast, slow, b"x", 10)
    value = b"hello"
    setx = struct.pack("<IIII", len(value), 0, 0, 0) + b"user.k\0" + value
    assert _errno(_both(fast, slow, _msg(Opcode.SETXATTR, 20, nodeid, setx))[0]) == 0
    for u, size, want in ((21, 0, 0), (22, 1, errno.ERANGE), (23, 100, 0)):
        reply, _ = _both(fast, slow, _msg(Opcode.GETXATTR, u, nodeid,
                                          struct.pack("<II", size, 0) + b"user.k\0"))
        assert _errno(reply) == want
    reply, _ = _both(fast, slow, _msg(Opcode.GETXATTR, 24, nodeid,
                                      struct.pack("<II", 100, 0) + b"user.k\0"))
    assert reply is not None and reply[16:] == value
    # caller without read permission on a user.* xattr: EACCES from the handler
    chmod = CODECS["setattr_in"].zero()._replace(valid=1, mode=0o100000)   # FATTR_MODE
    reply, _ = _both(fast, slow, _msg(Opcode.SETATTR, 25, nodeid,
                                      CODECS["setattr_in"].encode(chmod)))
    assert _errno(reply) == 0
    reply, _ = _both(fast, slow, _msg(Opcode.GETXATTR, 26, nodeid,
                                      struct.pack("<II", 100, 0) + b"user.k\0", uid=1000))
    assert _errno(reply) == errno.EACCES


def test_errors_and_unusual_messages_fall_back_to_the_same_answer() -> None:
    fast, slow = _pair()
    nodeid = _small_file(fast, slow, b"a", 10)
    fh = 1
    cases = [
        _msg(Opcode.LOOKUP, 30, ROOT, b"a"),                         # no NUL
        _msg(Opcode.LOOKUP, 31, ROOT, b"a\0b\0"),                    # trailing bytes
        _msg(Opcode.LOOKUP, 32, ROOT, b"a\0", length=41),            # header length lies
        _msg(Opcode.LOOKUP, 33, 999, b"a\0"),                        # stale parent
        _msg(Opcode.LOOKUP, 34, ROOT, b"a\0", extlen=1),             # bad extension
        _msg(Opcode.UNLINK, 35, ROOT, b"nope\0"),                    # ENOENT
        _msg(Opcode.CREATE, 36, ROOT, b"\0\0\0\0"),                  # short create_in
        _msg(Opcode.CREATE, 37, ROOT, struct.pack("<IIII", os.O_CREAT | os.O_EXCL, 0o100644,
                                                  0, 0) + b"a\0"),   # EEXIST
        _msg(Opcode.WRITE, 38, nodeid, struct.pack("<QQIIQII", fh, 0, 9, 0, 0, 0, 0)
             + b"abc"),                                              # size says 9, 3 come
        _msg(Opcode.WRITE, 39, nodeid, struct.pack("<QQIIQII", 4242, 0, 3, 0, 0, 0, 0)
             + b"abc"),                                              # EBADF
        _msg(Opcode.FLUSH, 40, nodeid, struct.pack("<QIIQ", fh, 0, 0, 0) + b"x"),
        _msg(Opcode.RELEASE, 41, nodeid, struct.pack("<QIIQ", 4242, 0, 2, 5)),  # FLOCK_UNLOCK
        _msg(Opcode.GETATTR, 42, 999, struct.pack("<IIQ", 0, 0, 0)),  # ESTALE
        _msg(Opcode.GETATTR, 43, nodeid, struct.pack("<II", 0, 0)),   # short getattr_in
        _msg(Opcode.GETXATTR, 44, nodeid, struct.pack("<II", 0, 0)),  # no name
        _msg(Opcode.GETXATTR, 45, nodeid, struct.pack("<II", 0, 0) + b"system.x\0"),
        _msg(Opcode.FORGET, 0, 12345, struct.pack("<Q", 1)),         # never looked up
        _msg(Opcode.FORGET, 0, nodeid, struct.pack("<Q", 1) + b"zz"),
        b"\x05\x00",                                                 # garbage
    ]
    for m in cases:
        _both(fast, slow, m)
    assert not fast.conn.inflight and not slow.conn.inflight


def test_write_kill_suidgid_from_the_fast_path() -> None:
    fast, slow = _pair()
    for d in (fast, slow):
        d.ops.mknod(ROOT, b"s", 0o106755, 0, RequestContext())   # type: ignore[attr-defined]
    reply, _ = _both(fast, slow, _msg(Opcode.LOOKUP, 10, ROOT, b"s\0"))
    nodeid = struct.unpack_from("<Q", reply or b"", 16)[0]
    reply, _ = _both(fast, slow, _msg(Opcode.OPEN, 11, nodeid,
                                      struct.pack("<II", os.O_WRONLY, 0)))
    fh = struct.unpack_from("<Q", reply or b"", 16)[0]
    _both(fast, slow, _msg(Opcode.WRITE, 12, nodeid,
                           struct.pack("<QQIIQII", fh, 0, 1, 4, 0, os.O_WRONLY, 0) + b"z",
                           uid=1000))
    reply, _ = _both(fast, slow, _msg(Opcode.GETATTR, 13, nodeid,
                                      struct.pack("<IIQ", 0, 0, 0)))
    mode = struct.unpack_from("<I", reply or b"", 16 + 16 + 60)[0]
    assert mode & 0o6000 == 0, oct(mode)


class _Buggy(MemFS):
    """Handlers with bugs: an exception, a wrong return type, an errno out of range."""

    def flush(self, fh: int, lock_owner: int = 0) -> None:
        raise ZeroDivisionError("flush bug")

    def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        if name == b"user.wrong":
            return "text"          # type: ignore[return-value]
        if name == b"user.errno":
            raise FUSEError(100000)
        return super().getxattr(inode, name, ctx)


def test_handler_bugs_give_the_same_eio_and_log_line(caplog: pytest.LogCaptureFixture) -> None:
    fast, slow = _pair(_Buggy)
    nodeid = 0
    caplog.set_level(logging.ERROR, logger="fusewire.server.dispatch")
    lines: list[list[str]] = []
    for d in (fast, slow):
        caplog.clear()
        reply, _ = d.dispatch(_msg(Opcode.CREATE, 10, ROOT, struct.pack(
            "<IIII", os.O_WRONLY | os.O_CREAT, 0o100644, 0, 0) + b"b\0"))
        data = b"".join(bytes(b) for b in reply or [])
        nodeid = struct.unpack_from("<Q", data, 16)[0]
        got = []
        for u, m in ((11, _msg(Opcode.FLUSH, 11, nodeid, struct.pack("<QIIQ", 1, 0, 0, 0))),
                     (12, _msg(Opcode.GETXATTR, 12, nodeid, struct.pack("<II", 0, 0)
                               + b"user.wrong\0")),
                     (13, _msg(Opcode.GETXATTR, 13, nodeid, struct.pack("<II", 0, 0)
                               + b"user.errno\0"))):
            reply, _ = d.dispatch(m)
            data = b"".join(bytes(b) for b in reply or [])
            assert OUT.unpack_from(data) == (16, -errno.EIO, u)
            got.append(data)
        lines.append([r.getMessage() for r in caplog.records])
        assert not d.conn.inflight
    assert lines[0] == lines[1]
    assert any("FLUSH unique=0xb" in line and "raised; answering EIO" in line
               for line in lines[0])
    assert any("GETXATTR unique=0xc" in line and "returned an unusable value" in line
               for line in lines[0])


def test_a_pending_raised_on_a_fast_path_is_deferred() -> None:
    """A handler on a fast path raises ctx.defer(): the request stays in flight and
    the later answer is encoded by the generic code."""
    fs = MemFS()
    d = Dispatcher(fs, Connection())
    d.dispatch(_init())
    done: list[Any] = []
    d.attach(done.append)
    reply, _ = d.dispatch(_msg(Opcode.CREATE, 10, ROOT, struct.pack(
        "<IIII", os.O_WRONLY | os.O_CREAT, 0o100644, 0, 0) + b"c\0"))
    data = b"".join(bytes(b) for b in reply or [])
    nodeid = struct.unpack_from("<Q", data, 16)[0]
    later: list[Any] = []
    original = fs.getxattr

    def getxattr(inode: int, name: bytes, ctx: RequestContext) -> bytes:
        if name == b"user.later":
            p = ctx.defer()
            later.append(p)
            raise p
        return original(inode, name, ctx)

    fs.getxattr = getxattr          # type: ignore[method-assign]
    reply, lookups = d.dispatch(_msg(Opcode.GETXATTR, 11, nodeid, struct.pack("<II", 100, 0)
                                     + b"user.later\0"))
    assert reply is None and lookups == []
    assert 11 in d.pending and 11 in d.conn.inflight
    later[0].reply(b"v")
    assert done == [later[0]]
    bufs, _ = d.complete(done[0])
    data = b"".join(bytes(b) for b in bufs or [])
    assert OUT.unpack_from(data) == (17, 0, 11) and data[16:] == b"v"
    assert not d.pending and not d.conn.inflight


def test_observer_or_handle_set_later_sees_every_request() -> None:
    """Setting an observer, debug or a replacement handle() after INIT turns the fast
    paths off at once; clearing it turns them on again."""
    fast, _slow = _pair()
    getattr_msg = _msg(Opcode.GETATTR, 10, ROOT, struct.pack("<IIQ", 0, 0, 0))
    fast.dispatch(getattr_msg)
    assert fast._fast and Opcode.GETATTR in fast._fast
    seen: list[int] = []
    fast.observer = lambda req: seen.append(req.opcode)
    fast.dispatch(getattr_msg)
    assert seen == [Opcode.GETATTR]
    fast.observer = None
    fast.dispatch(getattr_msg)
    assert seen == [Opcode.GETATTR]
    real = fast.handle
    handled: list[int] = []

    def spy(req: Request) -> Any:
        handled.append(req.opcode)
        return real(req)

    fast.handle = spy                       # type: ignore[method-assign]
    fast.dispatch(getattr_msg)
    assert handled == [Opcode.GETATTR]


def test_an_interrupt_before_its_request_is_forgotten_when_answered() -> None:
    """The kernel may send an INTERRUPT before the request it names reaches the
    server: the fast path retires the mark with the reply, as the generic path does."""
    fast, slow = _pair()
    nodeid = _small_file(fast, slow, b"i", 10)
    seen: list[bool] = []
    for d in (fast, slow):
        real_flush = d.ops.flush

        def flush(fh: int, lock_owner: int = 0, real: Any = real_flush) -> None:
            seen.append(True)
            real(fh, lock_owner)

        d.ops.flush = flush                     # type: ignore[method-assign]
    _both(fast, slow, _msg(Opcode.INTERRUPT, 99, 0, struct.pack("<Q", 50)))
    assert 50 in fast.conn.interrupts and 50 in slow.conn.interrupts
    reply, _ = _both(fast, slow, _msg(Opcode.FLUSH, 50, nodeid, struct.pack("<QIIQ", 1, 0, 0, 0)))
    assert _errno(reply) == 0 and seen == [True, True]
    assert not fast.conn.interrupts and not slow.conn.interrupts


def test_the_fused_create_and_release_records_are_the_generic_records() -> None:
    """The recording fast paths write a CREATE (with its new node's ADD) and a
    RELEASE by one pack each; the journal bytes are exactly those of the generic
    :meth:`RecoveryJournal.record_fields`, for a new and a known node, in replay
    mode (whole request) and header-only mode, and the handle bookkeeping agrees."""
    from fusewire import recovery_api as clock
    from fusewire.recovery import journal as jn
    from fusewire.recovery.recording import CrashHook, RecoveryJournal

    create = _msg(Opcode.CREATE, 10, ROOT, struct.pack(
        "<IIII", os.O_WRONLY | os.O_CREAT, 0o100644, 0o022, 0) + b"name\0")
    entry = struct.pack("<QQQQII", 7, 1, 1, 0, 0, 0) + bytes(88)
    create_reply = struct.pack("<IiQ", 16 + 128 + 16, 0, 10) + entry + struct.pack(
        "<QIi", 99, 0, 0)
    release = _msg(Opcode.RELEASE, 11, 7, struct.pack("<QIIQ", 99, 0x8001, 0, 0))
    release_reply = struct.pack("<IiQ", 16, 0, 11)

    def journal(keep_body: bool) -> tuple[RecoveryJournal, int]:
        fd = os.memfd_create("fused-records")
        writer = jn.JournalWriter(fd, 0)
        nodes = jn.JournaledNodeTable()
        nodes.writer = writer
        return RecoveryJournal(writer, nodes, jn.JournalState(), CrashHook(None),
                               keep_body=keep_body), fd

    clock.pin_clock(1_234_567_890)
    try:
        for keep_body in (True, False):
            for known in (False, True):
                (a, fa), (b, fb) = journal(keep_body), journal(keep_body)
                try:
                    for rj in (a, b):
                        if known:
                            rj.nodes.counts[7] = 1
                        rj.nodes.add((7,))
                    assert a.record_create(create, create_reply, 7)
                    b.raw = create
                    b.record_fields(Opcode.CREATE, ROOT, os.O_WRONLY | os.O_CREAT, 0, 0,
                                    [create_reply], [7])
                    assert a.handles == b.handles == {99: (7, os.O_WRONLY | os.O_CREAT)}
                    a.record_release(release, release_reply)
                    b.raw = release
                    b.record_fields(Opcode.RELEASE, 7, 0, 99, 0, [release_reply], [])
                    assert a.handles == b.handles == {}
                    assert a.writer.records == b.writer.records == (2 if known else 3)
                    assert jn.read_all(fa) == jn.read_all(fb)
                    state = jn.load(jn.read_all(fa))
                    assert [struct.unpack_from("<I", r, 4)[0] for _t, r, _ in state.requests] \
                        == [Opcode.CREATE, Opcode.RELEASE]
                    assert (7 in state.nodes) is not known     # ADD: a new node only
                finally:
                    os.close(fa)
                    os.close(fb)
        # pending ADDs that are not the new node: the fused CREATE declines
        (a, fa) = journal(True)
        try:
            a.nodes.add((8,))
            assert not a.record_create(create, create_reply, 7)
            assert a.writer.records == 0 and a.nodes.pending == [8]
        finally:
            os.close(fa)
    finally:
        clock.pin_clock(None)


def test_a_recording_dispatcher_keeps_the_idempotent_fast_paths() -> None:
    """A recoverable server's recording dispatcher serves GETATTR, LOOKUP and
    GETXATTR by their fast paths (nothing to journal) and everything else the
    generic way; a node's first lookup through the fast path is journaled (ADD,
    before the reply is returned), repeated lookups write nothing, and the
    journal read back holds the node.  (The recording dispatcher reads the real
    clock, so its replies are not compared byte for byte here.)"""
    from fusewire.recovery import journal as jn
    from fusewire.recovery.recording import CrashHook, RecordingDispatcher, RecoveryJournal

    fd = os.memfd_create("fastpath-journal")
    try:
        writer = jn.JournalWriter(fd, 0)             # a new journal (MAGIC first)
        nodes = jn.JournaledNodeTable()
        nodes.writer = writer
        rj = RecoveryJournal(writer, nodes, jn.JournalState(), CrashHook(None))
        conn = _Counting()
        d = RecordingDispatcher(_fs(MemFS), conn, nodes=nodes, journal=rj)
        d.rjournal = rj
        assert d.dispatch(_init())[0] is not None
        reply, lookups = d.dispatch(_msg(Opcode.CREATE, 10, ROOT, struct.pack(
            "<IIII", os.O_WRONLY | os.O_CREAT, 0o100644, 0o022, 0) + b"f\0"))
        assert reply is not None
        nodeid = lookups[0]
        fh = struct.unpack_from("<Q", b"".join(reply), 16 + 128)[0]
        assert d.dispatch(_msg(Opcode.RELEASE, 11, nodeid,
                               struct.pack("<QIIQ", fh, 0, 0, 0)))[0] is not None
        assert conn.generic == [Opcode.INIT]             # CREATE, RELEASE: fast, recorded
        state = jn.load(jn.read_all(fd))
        assert [struct.unpack_from("<I", r, 4)[0] for _t, r, _ in state.requests] == [
            Opcode.CREATE, Opcode.RELEASE]
        assert state.nodes.get(nodeid, 0) >= 1 and 10 in state.replies
        # the kernel forgets the node: it leaves the table (journaled)
        assert d.dispatch(_msg(Opcode.FORGET, 12, nodeid, struct.pack("<Q", 1)))[0] is None
        assert nodeid not in nodes.counts
        size = writer.offset
        reply, lookups = d.dispatch(_msg(Opcode.LOOKUP, 13, ROOT, b"f\0"))
        assert reply is not None and _errno(b"".join(reply)) == 0
        assert lookups == [nodeid] and nodes.counts[nodeid] == 1
        grew = writer.offset - size
        assert grew > 0                                   # the first lookup: an ADD record
        for u in range(14, 22):                           # a known node: nothing written
            assert d.dispatch(_msg(Opcode.LOOKUP, u, ROOT, b"f\0"))[1] == [nodeid]
            assert d.dispatch(_msg(Opcode.GETATTR, u + 100, nodeid, bytes(16)))[0]
            assert _errno(b"".join(d.dispatch(_msg(
                Opcode.GETXATTR, u + 200, nodeid, struct.pack("<II", 0, 0)
                + b"security.capability\0"))[0] or [b""])) == errno.ENODATA
        assert writer.offset - size == grew
        assert nodes.counts[nodeid] == 9
        assert conn.generic == [Opcode.INIT, Opcode.FORGET]   # the rest by the fast paths
        assert jn.load(jn.read_all(fd)).nodes.get(nodeid, 0) >= 1
        # a re-sent CREATE (after a takeover) takes the generic path, where the
        # journal answers one it recorded (tests/test_recovery.py crash points)
        assert d.dispatch(_msg(Opcode.CREATE, 50 | 1 << 63, ROOT, struct.pack(
            "<IIII", os.O_WRONLY | os.O_CREAT, 0o100644, 0o022, 0) + b"g\0"))[0]
        assert conn.generic[-1] == Opcode.CREATE
    finally:
        os.close(fd)
