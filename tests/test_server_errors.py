"""A failing handler or a malformed message must never stop the server.

* Real mount: an Operations subclass whose ``lookup`` raises ZeroDivisionError
  for one name and whose ``getattr`` raises it for one inode (marked with a
  user.curse xattr), served by a separate process
  (``python -m fusewire mount MODULE:CLASS``).  The client gets EIO, the
  very next request is served, and the server stays up.
* Malformed messages: the Dispatcher is driven directly with garbage bytes
  (hand-picked and from hypothesis); each gets an error reply or is dropped,
  never an exception, and the next valid request is answered.
"""

from __future__ import annotations

import errno
import os
import struct
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusewire.connection import Config, Connection
from fusewire.examples.memfs import MemFS
from fusewire.server.dispatch import Dispatcher

FAULTY_MODULE = textwrap.dedent('''
    """MemFS with deliberate handler bugs (written by tests/test_server_errors.py)."""
    import os
    from fusewire.examples.memfs import MemFS

    class FaultyFS(MemFS):
        def __init__(self):
            # no attribute/entry caching: every stat reaches the server
            super().__init__(entry_timeout=0.0, attr_timeout=0.0)

        def lookup(self, parent_inode, name, ctx):
            if name == b"boom":
                1 / 0
            return super().lookup(parent_inode, name, ctx)

        def getattr(self, inode, ctx):
            node = self._get(inode)
            if node.xattrs and b"user.curse" in node.xattrs:
                raise ZeroDivisionError("getattr of a cursed inode")
            return super().getattr(inode, ctx)
''')


@pytest.fixture
def faulty_mount(tmp_path: Path, fuse_server_factory) -> tuple[Path, object]:  # type: ignore[no-untyped-def]
    moddir = tmp_path / "faultymod"
    moddir.mkdir()
    (moddir / "fusewire_faulty.py").write_text(FAULTY_MODULE)
    srv = fuse_server_factory(["fusewire_faulty:FaultyFS"], tmp_path / "mnt",
                              pythonpath=[str(moddir)])
    return srv.mountpoint, srv


def _errno_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or 0
    return 0


@pytest.mark.fuse
def test_handler_exception_gives_eio_and_serving_continues(faulty_mount) -> None:  # type: ignore[no-untyped-def]
    mnt, srv = faulty_mount
    (mnt / "ok").write_text("fine")
    for _ in range(50):
        assert _errno_of(os.stat, mnt / "boom") == errno.EIO  # lookup raised
        assert (mnt / "ok").read_text() == "fine"              # the next request is served
    fd = os.open(mnt / "cursed", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"data")
        os.setxattr(fd, "user.curse", b"1")  # from now on getattr of this inode raises
        assert _errno_of(os.fstat, fd) == errno.EIO            # getattr raised
        assert (mnt / "ok").read_text() == "fine"
    finally:
        os.close(fd)
    assert _errno_of(os.stat, mnt / "cursed") == errno.EIO
    assert sorted(os.listdir(mnt)) == ["cursed", "ok"]
    os.mkdir(mnt / "d")
    assert os.stat(mnt / "d").st_nlink == 2
    assert srv.proc.poll() is None, "the server died"
    err = srv.stderr()
    assert "ZeroDivisionError" in err, err


# --------------------------------------------------------------------------
# the Dispatcher, in process

HDR = struct.Struct("<IIQQIIIHH")
OUT = struct.Struct("<IiQ")
INIT, GETATTR, LOOKUP = 26, 3, 1
FUSE_ROOT_ID = 1


def _msg(opcode: int, unique: int, nodeid: int, body: bytes = b"", length: int | None = None,
         extlen: int = 0) -> bytes:
    n = HDR.size + len(body) if length is None else length
    return HDR.pack(n, opcode, unique, nodeid, 0, 0, 1234, extlen, 0) + body


def _init_body(minor: int = 36) -> bytes:
    # major, minor, max_readahead, flags, flags2, unused[11]
    return struct.pack("<IIIII", 7, minor, 131072, 0, 0) + bytes(44)


def _getattr(unique: int) -> bytes:
    return _msg(GETATTR, unique, FUSE_ROOT_ID, struct.pack("<IIQ", 0, 0, 0))


def _reply(bufs) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    data = b"".join(bytes(b) for b in bufs)
    length, error, unique = OUT.unpack_from(data)
    assert length == len(data)
    return length, error, unique


@pytest.fixture
def dispatcher() -> Dispatcher:
    d = Dispatcher(MemFS(), Connection(Config()))
    bufs, _ = d.dispatch(_msg(INIT, 1, 0, _init_body()))
    assert bufs is not None
    assert _reply(bufs)[1] == 0
    return d


def _assert_alive(d: Dispatcher, unique: int) -> None:
    bufs, _ = d.dispatch(_getattr(unique))
    assert bufs is not None, "a valid GETATTR after garbage got no reply"
    length, error, got_unique = _reply(bufs)
    assert (error, got_unique) == (0, unique)
    assert length > 16


def _check_garbage(d: Dispatcher, garbage: bytes, unique: int) -> None:
    bufs, _ = d.dispatch(garbage)  # must not raise
    if bufs is not None:
        _, error, _ = _reply(bufs)
        assert error < 0, f"garbage {garbage[:48]!r} got a success reply"
    _assert_alive(d, unique)


GARBAGE = {
    "empty": b"",
    "three_bytes": b"\x01\x02\x03",
    "short_header": HDR.pack(40, GETATTR, 7, 1, 0, 0, 0, 0, 0)[:39],
    "len_too_big": _msg(GETATTR, 7, 1, struct.pack("<IIQ", 0, 0, 0), length=4096),
    "len_too_small": _msg(GETATTR, 7, 1, struct.pack("<IIQ", 0, 0, 0), length=20),
    "len_zero": _msg(GETATTR, 7, 1, b"", length=0),
    "unknown_opcode": _msg(9999, 7, 1, b"xyz"),
    "opcode_zero": _msg(0, 7, 1),
    "getattr_no_body": _msg(GETATTR, 7, 1),
    "lookup_no_nul": _msg(LOOKUP, 7, 1, b"name-without-terminator"),
    "lookup_empty": _msg(LOOKUP, 7, 1),
    "bad_nodeid": _msg(GETATTR, 7, 0xDEADBEEF, struct.pack("<IIQ", 0, 0, 0)),
    "second_init": _msg(INIT, 7, 0, _init_body()),
    "bogus_extlen": _msg(GETATTR, 7, 1, struct.pack("<IIQ", 0, 0, 0), extlen=200),
    "write_short": _msg(16, 7, 1, struct.pack("<QQII", 0, 0, 1000, 0)),
    "all_ones": b"\xff" * 80,
    "zeros": bytes(80),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_malformed_message_then_valid_request(dispatcher: Dispatcher, name: str) -> None:
    _check_garbage(dispatcher, GARBAGE[name], 1000)
    # and again: no state left behind by the bad message
    _check_garbage(dispatcher, GARBAGE[name], 1001)


def test_garbage_before_init() -> None:
    d = Dispatcher(MemFS(), Connection(Config()))
    for g in (b"", b"\x00" * 7, _getattr(5), _msg(INIT, 6, 0, b"\x07\x00")):
        d.dispatch(g)  # errors or drops, never raises
    bufs, _ = d.dispatch(_msg(INIT, 8, 0, _init_body()))
    assert bufs is not None and _reply(bufs)[1:] == (0, 8)
    _assert_alive(d, 9)


@given(st.binary(max_size=300))
def test_random_bytes_never_stop_the_dispatcher(data: bytes) -> None:
    d = Dispatcher(MemFS(), Connection(Config()))
    d.dispatch(_msg(INIT, 1, 0, _init_body()))
    _check_garbage(d, data, 2)


@given(st.integers(0, 60), st.integers(0, 2**32 - 1), st.binary(max_size=120),
       st.integers(0, 2**64 - 1), st.one_of(st.none(), st.integers(0, 400)))
def test_random_headers_never_stop_the_dispatcher(opcode: int, junk: int, body: bytes,
                                                   nodeid: int, length: int | None) -> None:
    d = Dispatcher(MemFS(), Connection(Config()))
    d.dispatch(_msg(INIT, 1, 0, _init_body()))
    if opcode in (INIT, 38, 42):  # INIT, DESTROY, BATCH_FORGET: not garbage-safe to replay
        opcode = 9999
    msg = _msg(opcode, 77, nodeid % 5, body, length)
    bufs, _ = d.dispatch(msg)  # must not raise; success is allowed for valid-by-chance input
    if bufs is not None:
        _reply(bufs)
    _assert_alive(d, 78)
