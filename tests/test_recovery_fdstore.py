"""Recovery under systemd (the fd store), on real mounts, without systemd.

The test plays the service manager: it binds the ``$NOTIFY_SOCKET`` datagram
socket, keeps the fds the service stores (FDSTORE=1 / FDNAME, SCM_RIGHTS),
drops the ones it removes (FDSTOREREMOVE=1), and starts the service again the
way systemd does: the stored fds at 3, 4, ... and LISTEN_FDS, LISTEN_FDNAMES
and LISTEN_PID (= the pid of the exec'd service) in its environment.  It
kills, by pid, only the services it started.
"""

from __future__ import annotations

import array
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fusewire.recovery import fdstore
from fusewire.server import mount as fm

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
]

REPO = Path(__file__).resolve().parent.parent
FS = ["memfs", "passthrough"]
#: a test still running after this many seconds has its connection aborted (hang guard)
GUARD = float(os.environ.get("FUSEWIRE_TEST_WATCHDOG", "120"))

#: the exec step of a service start: stored fds to 3.., sd_listen_fds variables, exec
EXEC = textwrap.dedent(r"""
    import fcntl, os, sys
    n = int(sys.argv[1])
    fds = [int(x) for x in sys.argv[2:2 + n]]
    names, argv = sys.argv[2 + n], sys.argv[3 + n:]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
        os.close(fd)
    if n:
        os.environ.update(LISTEN_FDS=str(n), LISTEN_FDNAMES=names,
                          LISTEN_PID=str(os.getpid()))
    os.execv(sys.executable, [sys.executable, *argv])
""")


class FakeSystemd:
    """The parts of a service manager the fd store protocol uses.

    Like the real one, it reads the notify socket all the time (a thread): a
    service whose notifications are not read blocks in sendmsg once the
    datagram queue is full.
    """

    def __init__(self, tmp: Path, argv: list[str], env: dict[str, str]) -> None:
        self.path = str(tmp / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.argv = argv
        self.env = dict(env, NOTIFY_SOCKET=self.path)
        self.store: list[tuple[str, int]] = []
        self.messages: list[str] = []
        self.ready = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = tmp / "service.log"
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # -- the notify socket ------------------------------------------------------

    def _run(self) -> None:
        while not self.closed:
            readable, _, _ = select.select([self.sock], [], [], 0.1)
            if readable:
                with self.cond:
                    if not self.closed:
                        self._one()
                    self.cond.notify_all()

    def _one(self) -> None:
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
        except BlockingIOError:
            return
        fds: list[int] = []
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(blob[:len(blob) - len(blob) % a.itemsize])
                fds += list(a)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(data.decode())
        if fields.get("FDSTORE") == "1":
            name = fields.get("FDNAME", "stored")
            self.store += [(name, fd) for fd in fds]
            fds = []
        if fields.get("FDSTOREREMOVE") == "1":
            name = fields.get("FDNAME", "")
            for n, fd in [x for x in self.store if x[0] == name]:
                os.close(fd)
                self.store.remove((n, fd))
        if fields.get("READY") == "1":
            self.ready += 1
        for fd in fds:                  # fds sent without FDSTORE=1 are dropped
            os.close(fd)

    def drain(self) -> None:
        """Wait until every message already sent has been processed."""
        with self.cond:
            while select.select([self.sock], [], [], 0)[0]:
                self.cond.wait(0.05)

    def wait_ready(self, count: int, timeout: float = 30.0) -> None:
        def done() -> bool:
            return self.ready >= count or (bool(self.procs) and self.procs[-1].poll() is not None)

        with self.cond:
            self.cond.wait_for(done, timeout)
        self.drain()
        assert self.ready >= count, self.log.read_text()[-3000:]

    def names(self) -> list[str]:
        with self.cond:
            return sorted(n for n, _ in self.store)

    # -- (re)starting the service ------------------------------------------------

    def start(self) -> subprocess.Popen[bytes]:
        with self.cond:
            fds = [fd for _, fd in self.store]
            names = ":".join(n for n, _ in self.store)
            cmd = [sys.executable, "-c", EXEC, str(len(fds)), *map(str, fds), names,
                   *self.argv]
            with open(self.log, "ab") as log:
                p = subprocess.Popen(cmd, env=self.env, pass_fds=fds, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        with self.cond:
            self.closed = True
            for _, fd in self.store:
                os.close(fd)
            self.store.clear()
        self.thread.join(5)
        self.sock.close()


def _abort_connection(dev: int) -> None:
    """Hang guard: abort (only) the test's own FUSE connection through fusectl."""
    try:
        with open(f"/sys/fs/fuse/connections/{os.minor(dev)}/abort", "w") as f:
            f.write("1")
    except OSError:
        pass


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[FakeSystemd, Path]] = []
    devs: list[int] = []
    # if a test blocks on its mount, fail it instead of hanging the whole run
    guard = threading.Timer(GUARD, lambda: [_abort_connection(d) for d in devs])
    guard.daemon = True
    guard.start()

    def _make(fs: str, env_extra: dict[str, str] | None = None) -> tuple[FakeSystemd, Path]:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        argv = ["-m", "fusewire", "fdstore", fs]
        if fs == "passthrough":
            (tmp_path / "src").mkdir()
            argv.append(str(tmp_path / "src"))
        argv.append(str(mnt))
        env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
        sd = FakeSystemd(tmp_path, argv, env)
        sd.on_mount = devs.append     # type: ignore[attr-defined]
        made.append((sd, mnt))
        return sd, mnt

    try:
        yield _make
    finally:
        guard.cancel()
        for sd, mnt in made:
            try:
                fm.unmount(str(mnt), lazy=True)
            except OSError:
                pass
            sd.close()


def _first_start(sd: FakeSystemd, mnt: Path) -> subprocess.Popen[bytes]:
    p = sd.start()
    sd.wait_ready(1)
    sd.on_mount(os.stat(mnt).st_dev)  # type: ignore[attr-defined]
    return p


CLIENT = textwrap.dedent(r"""
    import json, os, signal, sys
    mnt, pid = sys.argv[1], int(sys.argv[2])
    held = os.open(os.path.join(mnt, "d", "held"), os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(held, b"before", 0)
    os.chdir(os.path.join(mnt, "d"))
    os.kill(pid, signal.SIGKILL)
    # everything below blocks until the manager has started the service again
    os.pwrite(held, b"after!", 0)
    with open("new", "w") as f:
        f.write("x")
    os.rename("new", "renamed")
    print(json.dumps({"held": os.pread(held, 100, 0).decode(),
                      "list": sorted(os.listdir(".")),
                      "keep": open(os.path.join(mnt, "keep")).read()}))
""")


@pytest.mark.parametrize("fs", FS)
def test_fdstore_survives_sigkill(service: Any, fs: str) -> None:
    sd, mnt = service(fs)
    first = _first_start(sd, mnt)
    # memfs keeps file data in a memfd of its own (ReplayRecovery.recovery_fds)
    stored = (["fsdata.0"] if fs == "memfs" else []) + ["fuse", "journal.0"]
    assert sd.names() == stored
    assert os.path.ismount(mnt)
    (mnt / "d").mkdir()
    (mnt / "keep").write_text("kept")
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(mnt), str(first.pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert first.wait(30) == -signal.SIGKILL
        sd.drain()
        # the manager holds the connection: the mount is alive, the client waits
        assert sd.names() == stored
        second = sd.start()
        sd.wait_ready(2)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err.decode()
    assert json.loads(out) == {"held": "after!", "list": ["held", "renamed"], "keep": "kept"}
    assert second.poll() is None
    assert sd.names() == stored                     # the successor stored nothing new
    status = [m for m in sd.messages if "READY=1" in m]
    assert "restarted" in status[-1]
    if fs == "passthrough":
        src = mnt.parent / "src"
        assert (src / "d" / "held").read_bytes() == b"after!"
        assert sorted(os.listdir(src / "d")) == ["held", "renamed"]
    # unmount: the service empties its store entries and exits 0
    fm.unmount(str(mnt))
    assert second.wait(30) == 0
    sd.drain()
    assert sd.store == []


@pytest.mark.parametrize("fs", FS)
def test_fdstore_compaction_and_graceful_restart(service: Any, fs: str) -> None:
    sd, mnt = service(fs, {"FUSEWIRE_COMPACT_RECORDS": "40"})
    srv = _first_start(sd, mnt)
    for i in range(60):
        (mnt / f"f{i}").write_text(str(i))
    sd.drain()
    names = sd.names()
    if fs == "memfs":                           # the data memfd, stored once
        assert names[0] == "fsdata.0", names
        names = names[1:]
    assert len(names) == 2 and names[0] == "fuse", names
    generation = int(names[1].split(".")[1])
    assert generation > 0                       # compactions swapped the stored journal
    # `systemctl restart`: SIGTERM, graceful hand-over, start again
    srv.send_signal(signal.SIGTERM)
    assert srv.wait(30) == 0
    sd.drain()
    assert any("STOPPING=1" in m for m in sd.messages)
    srv = sd.start()
    sd.wait_ready(2)
    assert sorted(os.listdir(mnt)) == sorted(f"f{i}" for i in range(60))
    assert all((mnt / f"f{i}").read_text() == str(i) for i in range(60))
    # and a crash after that
    os.kill(srv.pid, signal.SIGKILL)
    srv.wait(30)
    sd.drain()
    srv = sd.start()
    sd.wait_ready(3)
    assert (mnt / "f59").read_text() == "59"
    os.unlink(mnt / "f0")
    assert len(os.listdir(mnt)) == 59


def test_listen_fds_protocol(tmp_path: Path) -> None:
    # sd_listen_fds: only for the process named by LISTEN_PID; fds from 3, with names
    probe = textwrap.dedent(r"""
        import json, os, sys
        sys.path.insert(0, sys.argv[1])
        os.environ["LISTEN_PID"] = str(os.getpid() + int(sys.argv[2]))
        from fusewire.recovery.fdstore import listen_fds
        got = listen_fds()
        print(json.dumps({"got": got, "left": "LISTEN_FDS" in os.environ,
                          "read": [os.read(fd, 10).decode() for _, fd in got]}))
    """)
    files = []
    for i, text in enumerate(("alpha", "beta")):
        p = tmp_path / f"f{i}"
        p.write_text(text)
        files.append(os.open(p, os.O_RDONLY))
    try:
        outs = []
        for offset in ("0", "1"):       # LISTEN_PID right, then wrong
            cmd = [sys.executable, "-c", EXEC, "2", *map(str, files), "one:two",
                   "-c", probe, str(REPO), offset]
            r = subprocess.run(cmd, pass_fds=files, capture_output=True, timeout=30,
                               check=True)
            outs.append(json.loads(r.stdout))
    finally:
        for fd in files:
            os.close(fd)
    assert outs[0] == {"got": [["one", 3], ["two", 4]], "left": False,
                       "read": ["alpha", "beta"]}
    assert outs[1] == {"got": [], "left": False, "read": []}


def test_notify_sends_fds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
    r, w = os.pipe()
    try:
        assert fdstore.notify("FDSTORE=1\nFDNAME=pipe", [w])
        data, anc, _, _ = sock.recvmsg(100, socket.CMSG_SPACE(4))
        assert data == b"FDSTORE=1\nFDNAME=pipe"
        (level, kind, blob), = anc
        got = array.array("i", blob[:4])[0]
        os.write(got, b"via store")
        os.close(got)
        assert os.read(r, 20) == b"via store"
    finally:
        os.close(r)
        os.close(w)
        sock.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not fdstore.notify("READY=1")
    with pytest.raises(OSError) as exc:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
        fdstore.notify("READY=1")
    assert exc.value.errno in (errno.ENOENT, errno.ECONNREFUSED)
