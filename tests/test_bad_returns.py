"""A handler that returns the wrong type never kills the server.

* Real mount: ``BadFS`` (memfs underneath) is served by a separate process.
  A control file outside the mount names one handler and one wrong value
  (``str``, ``None``, an int, a wrong tuple, a record of the wrong type...);
  that handler then returns the wrong value.  For every reply kind the
  caller gets EIO, the server logs one line naming the request (opcode,
  unique, nodeid) and the handler, and the next request is served.
* In process: every opcode of the table whose handler returns something is
  driven through the Dispatcher with each wrong value; the reply is an
  error whose buffers ``writev`` accepts, never an exception, and the next
  request is answered (this covers what a mount cannot reach: BMAP needs a
  block device, STATX and TMPFILE depend on the kernel's choices).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import struct
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FuseServer, start_server

from fusewire.types import EntryAttributes, FileInfo, StatvfsData

BAD_MODULE = textwrap.dedent('''
    """MemFS whose handlers return wrong values on request (tests/test_bad_returns.py)."""
    import os
    import struct

    from fusewire.examples.memfs import MemFS
    from fusewire.types import EntryAttributes, FileInfo, StatvfsData

    CONTROL = os.environ["FUSEWIRE_BAD_CONTROL"]

    VALUES = {
        "str": "text",
        "none": None,
        "int": 42,
        "neg": -1,
        "huge": 2 ** 70,
        "float": 1.5,
        "tuple": ("a", "b"),
        "list": [1, 2, 3],
        "attrs": EntryAttributes(5, st_mode=0o100644),
        "badattrs": EntryAttributes(5, st_mode="x"),
        "fileinfo": FileInfo(fh=1),
        "statvfs": StatvfsData(),
    }

    def _wanted(name):
        try:
            with open(CONTROL) as f:
                handler, _, value = f.read().strip().partition("=")
        except OSError:
            return None
        return value if handler == name else None

    def _bad(name, good):
        value = _wanted(name)
        if value is None:
            return good
        if value == "swapped":
            return good[::-1]
        if value == "fi_str":
            return (good[0], "text")
        if value == "attr_none":
            return (good[0], None)
        return VALUES[value]

    class BadFS(MemFS):
        def __init__(self):
            # no caching: every stat, lookup and read reaches the server
            super().__init__(entry_timeout=0.0, attr_timeout=0.0)

        def open(self, inode, flags, ctx):
            fi = super().open(inode, flags, ctx)
            fi.keep_cache = False
            fi.direct_io = True
            return _bad("open", fi)

        def create(self, parent_inode, name, mode, flags, ctx):
            fi, attr = super().create(parent_inode, name, mode, flags, ctx)
            fi.keep_cache = False
            fi.direct_io = True
            return _bad("create", (fi, attr))

        def ioctl(self, fh, cmd, arg, in_data, out_size, flags, ctx):
            return _bad("ioctl", (0, bytes(out_size)))

        def poll(self, fh, kh, events, flags, ctx):
            return _bad("poll", events & 1)

        def readdir(self, fh, start_id, token):
            value = _wanted("readdir")
            if value is None:
                return super().readdir(fh, start_id, token)
            if start_id == 0:
                # the entry a buggy readdir hands to the token
                name = {"str": "text", "none": None, "slash": b"a/b"}.get(value, b"x")
                attr = None if value == "attrnone" else EntryAttributes(
                    5, st_mode=0o100644)
                token.add(name, attr, 1)
            return None

    def _wrap(name):
        base = getattr(MemFS, name)

        def method(self, *args):
            return _bad(name, base(self, *args))
        method.__name__ = name
        setattr(BadFS, name, method)

    for _name in ("lookup", "getattr", "setattr", "mknod", "mkdir", "symlink", "link",
                  "read", "write", "readlink", "getxattr", "listxattr", "statfs",
                  "opendir", "lseek", "copy_file_range", "getlk", "access"):
        _wrap(_name)
''')

#: handler -> wrong values it is tried with on the real mount
CASES: dict[str, list[str]] = {
    "lookup": ["str", "none", "int", "tuple", "fileinfo", "badattrs"],
    "getattr": ["str", "none", "int", "tuple", "fileinfo", "badattrs"],
    "setattr": ["str", "none", "fileinfo"],
    "mkdir": ["str", "none", "int", "fileinfo"],
    "mknod": ["str", "none"],
    "symlink": ["str", "none"],
    "link": ["str", "none"],
    "create": ["str", "none", "int", "tuple", "swapped", "fi_str", "attr_none"],
    "open": ["str", "none", "neg", "huge", "attrs"],
    "read": ["str", "none", "int", "list", "tuple"],
    "write": ["str", "none", "neg", "huge", "float"],
    "readlink": ["str", "none", "int", "list"],
    "getxattr": ["str", "none", "int", "list"],
    "listxattr": ["str", "none", "int", "tuple"],
    "statfs": ["str", "none", "int", "attrs"],
    "opendir": ["str", "none", "fileinfo", "neg"],
    "readdir": ["str", "none", "slash", "attrnone"],
    "lseek": ["str", "none", "neg", "huge"],
    "copy_file_range": ["str", "none", "neg"],
    "getlk": ["str", "none", "int", "tuple"],
    "ioctl": ["str", "none", "int", "tuple", "fi_str"],
    "poll": ["str", "none", "neg", "huge"],
}

#: the opcode(s) whose request the failing handler serves
OPCODE = {
    "lookup": "LOOKUP", "getattr": "GETATTR", "setattr": "SETATTR", "mkdir": "MKDIR",
    "mknod": "MKNOD", "symlink": "SYMLINK", "link": "LINK", "create": "CREATE",
    "open": "OPEN", "read": "READ", "write": "WRITE", "readlink": "READLINK",
    "getxattr": "GETXATTR", "listxattr": "LISTXATTR", "statfs": "STATFS",
    "opendir": "OPENDIR", "readdir": "READDIR", "lseek": "LSEEK",
    "copy_file_range": "COPY_FILE_RANGE", "getlk": "GETLK", "ioctl": "IOCTL", "poll": "POLL",
}


class BadMount:
    def __init__(self, srv: FuseServer, control: Path) -> None:
        self.srv = srv
        self.mnt = srv.mountpoint
        self.control = control
        self.counter = 0

    def fail(self, handler: str, value: str) -> None:
        self.control.write_text(f"{handler}={value}")

    def heal(self) -> None:
        self.control.write_text("")

    def log_mark(self) -> int:
        return self.srv.errfile.stat().st_size

    def log_since(self, mark: int) -> str:
        with open(self.srv.errfile, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def fresh(self, prefix: str) -> Path:
        self.counter += 1
        return self.mnt / f"{prefix}{self.counter}"


@pytest.fixture(scope="module")
def bad_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadMount]:
    tmp = tmp_path_factory.mktemp("badreturns")
    moddir = tmp / "mod"
    moddir.mkdir()
    (moddir / "fusewire_badfs.py").write_text(BAD_MODULE)
    control = tmp / "control"
    control.write_text("")
    os.environ["FUSEWIRE_BAD_CONTROL"] = str(control)
    try:
        srv = start_server(["fusewire_badfs:BadFS"], tmp / "mnt", tmp,
                           pythonpath=[str(moddir)])
    finally:
        del os.environ["FUSEWIRE_BAD_CONTROL"]
    try:
        m = BadMount(srv, control)
        (m.mnt / "file").write_bytes(b"0123456789")
        os.symlink("file", m.mnt / "sym")
        os.setxattr(m.mnt / "file", "user.a", b"value")
        (m.mnt / "dir").mkdir()
        (m.mnt / "dir" / "inside").write_bytes(b"")
        yield m
    finally:
        srv.close()


def _errno_of(fn: Callable[[], Any]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


def _with_fd(path: Path, flags: int, body: Callable[[int], Any]) -> Callable[[], Any]:
    def run() -> Any:
        fd = os.open(path, flags)
        try:
            return body(fd)
        finally:
            os.close(fd)
    return run


_IOCTL_CMD = (2 << 30) | (8 << 16) | (ord("x") << 8) | 1  # _IOR('x', 1, u64)


def _poll(fd: int) -> Any:
    p = select.poll()
    p.register(fd, select.POLLIN)
    got = p.poll(0)
    if got and got[0][1] & select.POLLERR:
        # the kernel turns an error reply to FUSE_POLL into POLLERR
        raise OSError(errno.EIO, "POLLERR")
    return got


def _readlink(m: BadMount) -> Callable[[], Any]:
    def run() -> Any:
        # a new symlink each time: the kernel caches a target once read
        link = m.fresh("r")
        os.symlink("file", link)
        return os.readlink(link)
    return run


def _copy(m: BadMount) -> Callable[[], Any]:
    def run() -> Any:
        src = os.open(m.mnt / "file", os.O_RDONLY)
        dst = os.open(m.mnt / "dir" / "inside", os.O_WRONLY)
        try:
            return os.copy_file_range(src, dst, 4, 0, 0)
        finally:
            os.close(src)
            os.close(dst)
    return run


def _operation(m: BadMount, handler: str) -> Callable[[], Any]:
    """A client call that makes the server run ``handler`` (fresh names each time)."""
    f = m.mnt / "file"
    getlk = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
    calls: dict[str, Callable[[], Any]] = {
        "lookup": lambda: os.stat(f),
        "getattr": _with_fd(f, os.O_RDONLY, os.fstat),
        "setattr": lambda: os.chmod(f, 0o644),
        "mkdir": lambda: os.mkdir(m.fresh("d")),
        "mknod": lambda: os.mkfifo(m.fresh("p")),
        "symlink": lambda: os.symlink("file", m.fresh("s")),
        "link": lambda: os.link(f, m.fresh("l")),
        "create": lambda: os.close(os.open(m.fresh("c"), os.O_CREAT | os.O_EXCL | os.O_RDWR)),
        "open": lambda: os.close(os.open(f, os.O_RDONLY)),
        "read": _with_fd(f, os.O_RDONLY, lambda fd: os.pread(fd, 10, 0)),
        "write": _with_fd(f, os.O_WRONLY, lambda fd: os.pwrite(fd, b"0123", 0)),
        "readlink": _readlink(m),
        "getxattr": lambda: os.getxattr(f, "user.a"),
        "listxattr": lambda: os.listxattr(f),
        "statfs": lambda: os.statvfs(m.mnt),
        "opendir": lambda: os.listdir(m.mnt / "dir"),
        "readdir": lambda: os.listdir(m.mnt / "dir"),
        "lseek": _with_fd(f, os.O_RDONLY, lambda fd: os.lseek(fd, 0, os.SEEK_DATA)),
        "copy_file_range": _copy(m),
        "getlk": _with_fd(f, os.O_RDWR, lambda fd: fcntl.fcntl(fd, fcntl.F_GETLK, getlk)),
        "ioctl": _with_fd(f, os.O_RDONLY,
                          lambda fd: fcntl.ioctl(fd, _IOCTL_CMD, bytes(8))),
        "poll": _with_fd(f, os.O_RDONLY, _poll),
    }
    return calls[handler]


@pytest.mark.fuse
@pytest.mark.parametrize(("handler", "value"),
                         [(h, v) for h, values in CASES.items() for v in values])
def test_wrong_return_is_eio_and_serving_continues(bad_mount: BadMount, handler: str,
                                                   value: str) -> None:
    m = bad_mount
    op = _operation(m, handler)
    assert _errno_of(op) == 0, f"{handler} fails even with a good value"
    before = m.log_mark()
    m.fail(handler, value)
    try:
        got = _errno_of(op)
    finally:
        m.heal()
    assert got == errno.EIO, f"{handler} returning {value}: errno {got}"
    assert m.srv.proc.poll() is None, f"the server died:\n{m.srv.stderr()}"
    # the next request is served, and the same operation works again
    assert (m.mnt / "file").stat().st_size == 10
    assert _errno_of(op) == 0
    log = m.log_since(before)
    opname = OPCODE[handler]
    pattern = (rf"{opname}\w* unique=0x[0-9a-f]+ nodeid=\d+ handler "
               rf"BadFS\.{handler}\b")
    assert re.search(pattern, log), f"no log line naming the request:\n{log}"
    assert "Traceback" not in log or handler == "readdir", log


@pytest.mark.fuse
def test_log_line_names_the_request(bad_mount: BadMount) -> None:
    """One line per failure: opcode, unique, the nodeid asked about, the handler."""
    m = bad_mount
    ino = (m.mnt / "file").stat().st_ino
    before = m.log_mark()
    m.fail("read", "str")
    try:
        assert _errno_of(_with_fd(m.mnt / "file", os.O_RDONLY,
                                  lambda fd: os.pread(fd, 10, 0))) == errno.EIO
    finally:
        m.heal()
    line = [ln for ln in m.log_since(before).splitlines() if "BadFS.read" in ln]
    assert len(line) == 1, line
    assert "READ unique=0x" in line[0] and f"nodeid={ino} " in line[0], line
    assert "read() must return bytes, not str" in line[0], line


# --------------------------------------------------------------------------
# every opcode, in process


VALID_ATTRS = EntryAttributes(0, st_mode=0o100644)  # a negative entry, a valid attr


def _all_bad_values() -> list[Any]:

    return ["text", None, 42, -1, 2 ** 70, 1.5, ("a", "b"), (0, "text"), [1, 2, 3],
            EntryAttributes(5, st_mode="x"), VALID_ATTRS,
            FileInfo(fh=1), StatvfsData(), object()]


def test_every_opcode_survives_every_wrong_value() -> None:
    from fusewire.connection import Config, Connection
    from fusewire.opcodes.flags import Opcode
    from fusewire.opcodes.table import OPS, Reply
    from fusewire.operations import Operations
    from fusewire.server.dispatch import Dispatcher
    from fusewire.structs.codec import CODECS
    from fusewire.wire import KERNEL_FLAGS, encode_init, encode_request

    good = EntryAttributes(1, st_mode=0o040755, st_nlink=2)

    class Wrong(Operations):
        value: Any = None

        def getattr(self, inode: int, ctx: Any) -> EntryAttributes:
            return good if inode == 1 else self.value

    # every handler the table names returns the current wrong value
    rows = [row for row in OPS.values() if row.handler and row.reply is not Reply.NONE
            and row.handler not in ("init", "destroy", "access", "forget")]
    for row in rows:
        if row.handler != "getattr":
            setattr(Wrong, row.handler, lambda self, *a, **k: self.value)  # type: ignore[misc]
    ops = Wrong()
    d = Dispatcher(ops, Connection(Config()))
    bufs, _ = d.dispatch(encode_init(45, KERNEL_FLAGS, unique=1))
    assert bufs is not None
    session = d.conn.session
    assert session is not None
    unique = 2
    served = 0
    for row in rows:
        for value in _all_bad_values():
            ops.value = value
            names: tuple[bytes, ...] = tuple(b"n" for _ in range(row.names))
            arg = None
            if row.request is not None:
                arg = CODECS[row.request].zero()
                for field, v in (("size", 4096), ("out_size", 8), ("blocksize", 512),
                                 ("len", 100)):
                    if field in arg._fields and row.opcode not in (Opcode.WRITE,
                                                                   Opcode.SETXATTR):
                        arg = arg._replace(**{field: v})
            if row.opcode == Opcode.WRITE:
                arg = None  # encode_request sizes it from the data
            msg = encode_request(session, row.opcode, unique, 2, arg=arg, names=names,
                                 data=b"abcd" if row.opcode == Opcode.WRITE else b"")
            bufs, lookups = d.dispatch(msg)  # never raises
            if bufs is None:
                continue
            joined = b"".join(bytes(memoryview(b)) for b in bufs)  # writev would accept it
            length, error, got = struct.unpack_from("<IiQ", joined)
            assert got == unique and length == len(joined)
            if error == 0:
                # only a value that is valid for this reply kind may succeed
                assert (row.reply in (Reply.EMPTY, Reply.DIRENTS, Reply.DIRENTSPLUS)
                        or value == 42 or value is VALID_ATTRS
                        or (row.handler, type(value)) in (("open", FileInfo),
                                                          ("statfs", StatvfsData))), \
                    (row.name, value)
            else:
                assert lookups == [], (row.name, value, lookups)
            unique += 1
            ops.value = None
            bufs, _ = d.dispatch(encode_request(session, Opcode.GETATTR, unique, 1))
            assert bufs is not None
            assert struct.unpack_from("<IiQ", bytes(bufs[0]))[1] == 0
            unique += 1
            served += 1
    assert served > 100, served


def test_loop_answers_eio_for_a_reply_writev_refuses() -> None:
    """Last line of defence: a reply part writev cannot send becomes EIO, the loop goes on."""
    import socket
    import threading

    from fusewire.examples.memfs import MemFS
    from fusewire.server.loop import Server

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv = Server(MemFS(), "/nonexistent", fd=theirs.fileno())
    real = srv.dispatcher.dispatch
    calls: list[int] = []

    def dispatch(buf: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            unique = struct.unpack_from("<Q", bytes(buf), 8)[0]
            return [struct.pack("<IiQ", 20, 0, unique), "text"], []  # writev: TypeError
        return real(buf)

    srv.dispatcher.dispatch = dispatch  # type: ignore[method-assign]
    os.set_blocking(theirs.fileno(), False)
    t = threading.Thread(target=srv.serve, kwargs={"install_signals": False}, daemon=True)
    t.start()
    try:
        from fusewire.wire import KERNEL_FLAGS, encode_init

        ours.settimeout(10)
        ours.send(struct.pack("<IIQQIIIHH", 40, 15, 7, 1, 0, 0, 0, 0, 0))  # a READ-like header
        length, error, unique = struct.unpack("<IiQ", ours.recv(4096))
        assert (length, error, unique) == (16, -errno.EIO, 7)
        ours.send(encode_init(45, KERNEL_FLAGS, unique=8))    # the loop still serves
        length, error, unique = struct.unpack_from("<IiQ", ours.recv(4096))
        assert (error, unique) == (0, 8)
    finally:
        srv.stop()
        t.join(5)
        ours.close()
        theirs.close()
    assert not t.is_alive()
