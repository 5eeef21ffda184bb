"""One blocked request never stops the others (real mounts).

- memfs, plain and recoverable: while one process waits in F_SETLKW and
  another in a blocking flock, stats, listings and create/write/read in the
  same mount answer within a second; the waiters get their locks when the
  holder unlocks; a waiter interrupted by a signal gets EINTR; a deadlock
  is EDEADLK; a lock wait spanning a server crash waits again in the
  successor;
- POSIX locks go when their owner closes any descriptor of the file (dup,
  a second open, a child that exits);
- an async filesystem (examples/async_slow.py) serves stats and reads of
  other files while one read awaits, and an interrupted read is EINTR at once.

Waiters are known to wait when /proc/<pid>/stack shows them inside the FUSE
request (polled with a deadline); children report through their stdout.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, server_env, start_server

from fusewire.server.mount import dev_fuse_problem
from fusewire.testing.procs import children, unmount_and_kill

pytestmark = pytest.mark.fuse

IS_ROOT = os.geteuid() == 0
EXAMPLE = REPO_ROOT / "examples" / "async_slow.py"

#: a child that takes a lock through libc (so that a signal's EINTR is seen,
#: not retried by Python), prints the outcome and, unless told, exits
LOCKER = r"""
import ctypes, errno, fcntl, os, signal, struct, sys, time
path, kind = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGUSR1, lambda *a: None)     # no SA_RESTART: EINTR comes back
fd = os.open(path, os.O_RDWR)
if kind == "flock":
    res = libc.flock(fd, fcntl.LOCK_EX)
else:
    start = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    arg = ctypes.create_string_buffer(struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, start, 10, 0))
    res = libc.fcntl(fd, fcntl.F_SETLKW, arg)
err = ctypes.get_errno()
print("ok" if res == 0 else errno.errorcode.get(err, str(err)), flush=True)
if len(sys.argv) > 4:
    sys.stdin.read()            # hold the lock until told
"""


def _flock_struct(type_: int, start: int, length: int) -> bytes:
    return struct.pack("hhqqi4x", type_, os.SEEK_SET, start, length, 0)


def _in_fuse_request(pid: int, what: str = "fuse_") -> bool:
    try:
        with open(f"/proc/{pid}/stack") as f:
            stack = f.read()
    except OSError:
        return False
    return "request_wait_answer" in stack and what in stack


def wait_blocked(procs: list[subprocess.Popen[str]], what: str = "fuse_setlk",
                 timeout: float = 30.0) -> None:
    """Return once every child sleeps in a FUSE request of kind ``what``."""
    deadline = time.monotonic() + timeout
    while not all(_in_fuse_request(p.pid, what) for p in procs):
        for p in procs:
            assert p.poll() is None, f"child {p.args} exited: {p.communicate()}"
        assert time.monotonic() < deadline, "the children never blocked in the mount"
        time.sleep(0.01)


def locker(path: Path, kind: str, start: int = 0, hold: bool = False
           ) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", LOCKER, str(path), kind, str(start)]
    if hold:
        argv.append("hold")
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def other_owner_sees_lock(path: Path, start: int = 0) -> bool:
    """Whether a fresh process (another lock owner) finds a write lock at ``start``."""
    code = ("import fcntl, os, struct, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, "
            "int(sys.argv[2]), 1, 0))\n"
            "print(struct.unpack('hhqqi4x', got)[0] != fcntl.F_UNLCK)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(start)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out.strip() == "True"


def _kernel_waiting(mnt: Path) -> int:
    """Requests the kernel has sent (or queued) on ``mnt``'s connection and not had
    answered: fusectl's ``waiting`` count (-1 when fusectl is not mounted)."""
    try:
        with open(f"/sys/fs/fuse/connections/{os.minor(os.stat(mnt).st_dev)}/waiting") as f:
            return int(f.read())
    except OSError:
        return -1


def settled(server: Any, mnt: Path, timeout: float = 10.0) -> bool:
    """Wait until the kernel has nothing outstanding on ``mnt`` and the dispatcher
    holds no deferred request; False if that never happens within ``timeout``."""
    deadline = time.monotonic() + timeout
    while _kernel_waiting(mnt) > 0 or server.dispatcher.pending:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def timed(fn: Any, *args: Any) -> float:
    t0 = time.monotonic()
    fn(*args)
    return time.monotonic() - t0


def _reap(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


# -- mounts ------------------------------------------------------------------------------


class Recoverable:
    """A ``fusewire.recovery.keeper memfs`` mount; torn down by pid."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 crash: str | None = None) -> None:
        from fusewire.recovery import commands

        run = tmp_path / "run"
        run.mkdir(mode=0o700)
        monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(run))
        self.path = tmp_path / "mnt"
        self.path.mkdir()
        self.log = tmp_path / "keeper.log"
        env = dict(server_env(), FUSEWIRE_RUN_DIR=str(run))
        env.pop("FUSEWIRE_CRASH_AT", None)
        if crash:
            env["FUSEWIRE_CRASH_AT"] = crash
        with open(self.log, "ab") as log:
            self.keeper = subprocess.Popen(
                [sys.executable, "-m", "fusewire.recovery.keeper", "memfs", str(self.path)],
                env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.pids = {self.keeper.pid}
        st = commands.wait_ready(str(self.path), 20.0, keeper=self.keeper)
        assert st is not None, self.log.read_text()
        self.server_pid = int(st["server_pid"])

    def crash_and_wait(self) -> None:
        from fusewire.recovery import commands

        self.pids |= children(self.keeper.pid)
        os.kill(self.server_pid, signal.SIGKILL)
        st = commands.wait_ready(str(self.path), 20.0, after_pid=self.server_pid)
        assert st is not None, self.log.read_text()[-3000:]
        self.server_pid = int(st["server_pid"])

    def close(self) -> None:
        self.pids |= children(self.keeper.pid)
        unmount_and_kill(self.path, self.pids)
        self.keeper.wait(timeout=10)


@pytest.fixture(params=["plain", "workers", "recoverable"])
def lock_mount(request: pytest.FixtureRequest, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Any]]:
    if request.param != "recoverable":
        extra = ["--workers", "2"] if request.param == "workers" else []
        srv = start_server(["memfs", *extra], tmp_path / "memfs-mnt", tmp_path)
        try:
            yield srv.mountpoint, None
        finally:
            srv.close()
        return
    if not IS_ROOT:
        pytest.skip("recoverable mounts need root")
    problem = dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    m = Recoverable(tmp_path, monkeypatch)
    try:
        yield m.path, m
    finally:
        m.close()


# -- blocking locks -------------------------------------------------------------------------


def test_lock_waiters_do_not_stop_the_mount(lock_mount: tuple[Path, Any]) -> None:
    mnt, _ = lock_mount
    f = mnt / "locked"
    f.write_bytes(b"x" * 100)
    fd = os.open(f, os.O_RDWR)
    procs: list[subprocess.Popen[str]] = []
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [locker(f, "posix"), locker(f, "flock")]
        wait_blocked(procs)
        # the mount answers everything else, each call within a second
        slowest = max(
            timed(os.stat, f),
            timed(os.listdir, mnt),
            timed((mnt / "new").write_bytes, b"written while others wait"),
            timed((mnt / "new").read_bytes),
            timed(os.statvfs, mnt),
            timed(os.mkdir, mnt / "d"),
            timed(os.rename, mnt / "new", mnt / "d" / "moved"),
        )
        assert slowest < 1.0
        assert (mnt / "d" / "moved").read_bytes() == b"written while others wait"
        assert all(p.poll() is None for p in procs)
        # the holder unlocks: both waiters get their locks
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_UNLCK, 0, 10))
        fcntl.flock(fd, fcntl.LOCK_UN)
        outs = [p.communicate(timeout=30)[0].strip() for p in procs]
        assert outs == ["ok", "ok"]
    finally:
        os.close(fd)
        _reap(procs)


def test_interrupted_waiter_gets_eintr(lock_mount: tuple[Path, Any]) -> None:
    mnt, _ = lock_mount
    f = mnt / "locked"
    f.write_bytes(b"x" * 100)
    fd = os.open(f, os.O_RDWR)
    procs: list[subprocess.Popen[str]] = []
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [locker(f, "posix"), locker(f, "flock")]
        # and one killed by SIGINT while it waits, as a user's Ctrl-C does
        code = ("import fcntl, os, signal, struct, sys\n"
                "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
                "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, "
                "10, 0))\n"
                "print('granted to a process that was killed', flush=True)\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(f)],
                                      stdout=subprocess.PIPE, text=True))
        wait_blocked(procs)
        for p in procs[:2]:
            os.kill(p.pid, signal.SIGUSR1)
        os.kill(procs[2].pid, signal.SIGINT)
        outs = [p.communicate(timeout=10)[0].strip() for p in procs]
        assert outs == ["EINTR", "EINTR", ""]
        assert procs[2].returncode == -signal.SIGINT
        # unharmed: the holder still holds, and once it closes the lock is free
        # (the killed waiter left the queue instead of being granted the lock)
        assert other_owner_sees_lock(f, 5)
        os.close(fd)
        fd = -1
        assert not other_owner_sees_lock(f, 5)
        assert os.listdir(mnt) == ["locked"]
    finally:
        if fd >= 0:
            os.close(fd)
        _reap(procs)


def test_deadlock_is_edeadlk(lock_mount: tuple[Path, Any]) -> None:
    mnt, _ = lock_mount
    f = mnt / "locked"
    f.write_bytes(b"x" * 100)
    fd = os.open(f, os.O_RDWR)
    procs: list[subprocess.Popen[str]] = []
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 20, 10))
        # the child holds 0..9, then waits for our 20..29
        code = ("import fcntl, os, struct, sys\n"
                "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                "fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, "
                "10, 0))\n"
                "print('holding', flush=True)\n"
                "fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 20, "
                "10, 0))\n"
                "print('ok', flush=True)\n")
        child = subprocess.Popen([sys.executable, "-c", code, str(f)], stdout=subprocess.PIPE,
                                 text=True)
        procs.append(child)
        assert child.stdout is not None and child.stdout.readline() == "holding\n"
        wait_blocked(procs)
        with pytest.raises(OSError) as exc:
            fcntl.fcntl(fd, fcntl.F_SETLKW, _flock_struct(fcntl.F_WRLCK, 0, 10))
        assert exc.value.errno == errno.EDEADLK
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_UNLCK, 20, 10))
        assert child.communicate(timeout=30)[0].strip() == "ok"
    finally:
        os.close(fd)
        _reap(procs)


@pytest.mark.skipif(not IS_ROOT, reason="recoverable mounts need root")
def test_lock_wait_spans_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if dev_fuse_problem() is not None:
        pytest.skip(dev_fuse_problem() or "")
    m = Recoverable(tmp_path, monkeypatch)
    procs: list[subprocess.Popen[str]] = []
    fd = -1
    try:
        f = m.path / "locked"
        f.write_bytes(b"x" * 100)
        fd = os.open(f, os.O_RDWR)
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
        procs = [locker(f, "posix")]
        wait_blocked(procs)
        m.crash_and_wait()
        # the successor got the wait re-sent: it still waits, the mount serves
        assert os.listdir(m.path) == ["locked"]
        wait_blocked(procs)
        assert procs[0].poll() is None
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_UNLCK, 0, 10))
        assert procs[0].communicate(timeout=30)[0].strip() == "ok"
    finally:
        if fd >= 0:
            os.close(fd)
        _reap(procs)
        m.close()


@pytest.mark.skipif(not IS_ROOT, reason="recoverable mounts need root")
def test_granted_wait_is_answered_once_across_a_crash(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The server dies after journaling a waiter's grant, before writing it: the
    successor answers the re-sent F_SETLKW from the journal and holds the lock."""
    if dev_fuse_problem() is not None:
        pytest.skip(dev_fuse_problem() or "")
    m = Recoverable(tmp_path, monkeypatch, crash="journal:SETLKW:1")
    procs: list[subprocess.Popen[str]] = []
    fd = -1
    try:
        f = m.path / "locked"
        f.write_bytes(b"x" * 100)
        fd = os.open(f, os.O_RDWR)
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
        procs = [locker(f, "posix", 0, hold=True)]
        wait_blocked(procs)
        m.pids |= children(m.keeper.pid)
        old = m.server_pid
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_UNLCK, 0, 10))  # grant: crash
        waiter = procs[0]
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "ok"
        from fusewire.recovery import commands

        st = commands.wait_ready(str(m.path), 20.0, after_pid=old)
        assert st is not None and int(st["server_pid"]) != old, m.log.read_text()[-3000:]
        m.server_pid = int(st["server_pid"])
        assert other_owner_sees_lock(f, 5)        # the successor knows the waiter holds it
        assert waiter.stdin is not None
        waiter.stdin.close()
        waiter.wait(30)
        assert not other_owner_sees_lock(f, 5)    # and it went with the waiter's close
    finally:
        if fd >= 0:
            os.close(fd)
        _reap(procs)
        m.close()


# -- locks go with any close ------------------------------------------------------------------


def test_posix_locks_go_with_any_close(memfs_mount: Path) -> None:
    f = memfs_mount / "f"
    f.write_bytes(b"x" * 100)
    # dup: closing the copy drops the lock taken through the original
    fd = os.open(f, os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
    assert other_owner_sees_lock(f)
    os.close(os.dup(fd))
    assert not other_owner_sees_lock(f)
    # a second open of the same file: closing it drops the lock of the first
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
    os.close(os.open(f, os.O_RDONLY))
    assert not other_owner_sees_lock(f)
    # "lock the region I just unlocked by closing a dup" works for another owner
    fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
    os.close(os.dup(fd))
    holder = locker(f, "posix", 0, hold=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
    finally:
        _reap([holder])
    os.close(fd)
    # a child's locks go when it exits (its close), not some time after
    code = ("import fcntl, os, struct, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 10, 0))\n")
    subprocess.run([sys.executable, "-c", code, str(f)], check=True, timeout=30)
    assert not other_owner_sees_lock(f)
    # fork: the child's own lock goes with the child, the parent's stays
    fd = os.open(f, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 50, 10))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert not other_owner_sees_lock(f, 0)
        assert other_owner_sees_lock(f, 55)
    finally:
        os.close(fd)


# -- async handlers ------------------------------------------------------------------------------


@pytest.fixture
def async_mount(tmp_path: Path) -> Iterator[tuple[Path, float]]:
    problem = dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mnt = tmp_path / "svc"
    mnt.mkdir()
    delay = 1.0
    err = open(tmp_path / "async.stderr", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), str(mnt), "--delay", str(delay)],
                            env=server_env(), stdout=err, stderr=err, stdin=subprocess.DEVNULL)
    try:
        from conftest import is_fuse_mounted

        deadline = time.monotonic() + 15
        while not is_fuse_mounted(mnt):
            assert proc.poll() is None, (tmp_path / "async.stderr").read_text()
            assert time.monotonic() < deadline, "the async example did not mount"
            time.sleep(0.02)
        yield mnt, delay
    finally:
        unmount_and_kill(mnt, [proc.pid])
        proc.wait(10)
        err.close()


READER = r"""
import ctypes, errno, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGUSR1, lambda *a: None)
fd = os.open(sys.argv[1], os.O_RDONLY)
buf = ctypes.create_string_buffer(4096)
t0 = time.monotonic()
n = libc.read(fd, buf, 4096)
err = ctypes.get_errno()
print(buf.raw[:n].decode() if n >= 0 else errno.errorcode[err], time.monotonic() - t0,
      flush=True)
"""


def test_async_read_does_not_stop_other_requests(async_mount: tuple[Path, float]) -> None:
    mnt, delay = async_mount
    reader = subprocess.Popen([sys.executable, "-c", READER, str(mnt / "slow")],
                              stdout=subprocess.PIPE, text=True)
    try:
        wait_blocked([reader], "ksys_read")
        t0 = time.monotonic()
        for i in range(20):
            os.stat(mnt / f"key{i:02d}")
            assert (mnt / f"key{i:02d}").read_bytes() == f"value of key{i:02d}\n".encode()
        assert sorted(os.listdir(mnt))[:2] == ["key00", "key01"]
        elapsed = time.monotonic() - t0
        assert elapsed < 0.6, f"20 stats and reads took {elapsed:.2f}s behind one slow read"
        assert reader.poll() is None              # still awaiting its second
        out, _ = reader.communicate(timeout=30)
        text, took = out.rsplit(" ", 1)
        assert text == "value of slow\n" and float(took) >= delay * 0.9
    finally:
        _reap([reader])


def test_interrupted_async_read_is_eintr(tmp_path: Path) -> None:
    problem = dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mnt = tmp_path / "svc"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), str(mnt), "--delay", "60"],
                            env=server_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reader = None
    try:
        from conftest import is_fuse_mounted

        deadline = time.monotonic() + 15
        while not is_fuse_mounted(mnt):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        reader = subprocess.Popen([sys.executable, "-c", READER, str(mnt / "slow")],
                                  stdout=subprocess.PIPE, text=True)
        wait_blocked([reader], "ksys_read")
        t0 = time.monotonic()
        os.kill(reader.pid, signal.SIGUSR1)
        out, _ = reader.communicate(timeout=10)
        assert time.monotonic() - t0 < 2
        assert out.split()[0] == "EINTR"
        # the server is unharmed and the cancelled handler left nothing behind
        assert (mnt / "key03").read_bytes() == b"value of key03\n"
    finally:
        if reader is not None:
            _reap([reader])
        unmount_and_kill(mnt, [proc.pid])
        proc.wait(10)
        assert proc.stderr is not None
        log = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert "Traceback" not in log, log


# -- the async path without a mount, and inside the caller's event loop ------------------------


def _service_fs(delay: float = 0.0) -> Any:
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import async_slow
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    keys = ["slow", *(f"key{i:02d}" for i in range(20))]
    return async_slow.ServiceFS(async_slow.Service(keys, delay))


def test_async_handlers_through_the_emulator() -> None:
    """Without a serving loop (emulator, replay) async handlers run to completion inline;
    readdir's token filled in an earlier pass reaches the reply."""
    from fusewire.testing.emulator import KernelEmulator

    emu = KernelEmulator(_service_fs())
    assert emu.stat("/key05").size == len(b"value of key05\n")
    assert sorted(emu.readdir("/"))[:2] == [b"key00", b"key01"]
    h = emu.open("/key07")
    assert emu.read(h, 100) == b"value of key07\n"
    emu.close(h)
    assert emu.dispatcher.async_handlers >= {"lookup", "getattr", "read", "readdir"}
    assert not emu.dispatcher.pending


def test_serve_async_joins_the_callers_loop(tmp_path: Path) -> None:
    import asyncio
    import threading

    from fusewire.server import Server

    if dev_fuse_problem() is not None:
        pytest.skip(dev_fuse_problem() or "")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = Server(_service_fs(), str(mnt), "fsname=svc")
    ticks: list[int] = []

    async def app() -> None:
        async def ticker() -> None:          # the application's own work goes on
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        try:
            await server.serve_async(install_signals=False)
        finally:
            t.cancel()

    thread = threading.Thread(target=asyncio.run, args=(app(),), daemon=True)
    server.mount()
    thread.start()
    try:
        assert (mnt / "key03").read_bytes() == b"value of key03\n"
        assert len(os.listdir(mnt)) == 21
        assert ticks
    finally:
        server.close()
        thread.join(10)
    assert not thread.is_alive()


def test_sync_filesystems_never_import_asyncio() -> None:
    code = ("import sys\n"
            "from fusewire.examples.memfs import MemFS\n"
            "from fusewire.server import Server\n"
            "s = Server(MemFS(), '/nonexistent')\n"
            "print(not s.dispatcher.async_handlers, 'asyncio' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], env=server_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["True", "False"], out.stderr


# -- the lock table and Pending, without a mount ------------------------------------------------


def _ctx(unique: int) -> Any:
    from fusewire.types import DeferrableContext

    return DeferrableContext(unique=unique)


def test_lock_table_waiters_are_deferred_replies() -> None:
    from fusewire.locks import OFFSET_MAX, LockTable
    from fusewire.types import FUSEError, Lock, Pending

    t = LockTable()
    t.setlk(1, 0xA, Lock(0, 9, fcntl.F_WRLCK, 10), False, _ctx(2))
    with pytest.raises(FUSEError) as again:
        t.setlk(1, 0xB, Lock(5, 5, fcntl.F_RDLCK, 11), False, _ctx(4))
    assert again.value.errno == errno.EAGAIN
    with pytest.raises(Pending) as w1:
        t.setlk(1, 0xB, Lock(5, 5, fcntl.F_RDLCK, 11), True, _ctx(6))
    with pytest.raises(Pending) as w2:
        t.setlk(1, 0xC, Lock(0, OFFSET_MAX, fcntl.F_WRLCK, 12), True, _ctx(10))
    assert t.waiting(1) == 2 and not w1.value.done
    # 0xA now waiting for 0xB (which waits for 0xA) would deadlock
    t.setlk(1, 0xB, Lock(100, 100, fcntl.F_WRLCK, 11), False, _ctx(12))
    with pytest.raises(FUSEError) as dead:
        t.setlk(1, 0xA, Lock(100, 100, fcntl.F_WRLCK, 10), True, _ctx(14))
    assert dead.value.errno == errno.EDEADLK
    # an interrupt takes 0xC out of the queue with EINTR
    w2.value.interrupt()
    assert w2.value.outcome == (False, errno.EINTR) and t.waiting(1) == 1
    # FLUSH of the holder (any close) grants the reader
    got: list[Pending] = []
    w1.value.bind(got.append)
    t.unlock_owner(1, 0xA)
    assert got == [w1.value] and w1.value.outcome == (True, None)
    assert t.getlk(1, 0xD, Lock(5, 5, fcntl.F_WRLCK)).pid == 11
    assert not w1.value.reply(None)                 # exactly once
    assert t.waiting() == 0


def test_lock_table_flock_waiters_and_release() -> None:
    from fusewire.locks import LockTable
    from fusewire.types import Pending

    t = LockTable()
    t.flock(1, 0xF1, fcntl.LOCK_SH, False, _ctx(2), fh=1)
    t.flock(1, 0xF2, fcntl.LOCK_SH, False, _ctx(4), fh=2)
    with pytest.raises(Pending) as w:
        t.flock(1, 0xF3, fcntl.LOCK_EX, True, _ctx(6), fh=3)
    t.flock(1, 0xF1, fcntl.LOCK_UN, False, _ctx(8), fh=1)
    assert not w.value.done
    t.release(1, 2)                                  # the last close of open file 2
    assert w.value.outcome == (True, None)
    assert t.flocks[1] == {0xF3: (fcntl.LOCK_EX, 3)}
    t.forget(1)
    assert not t.flocks and not t.posix


def test_interrupt_leaves_nothing_behind(tmp_path: Path) -> None:
    """An interrupted async read: EINTR at once, and the server keeps no task, no
    pending entry, no in-flight or interrupt mark for it."""
    from fusewire.server import Server
    from fusewire.server.loop import serve_in_thread

    if dev_fuse_problem() is not None:
        pytest.skip(dev_fuse_problem() or "")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = Server(_service_fs(delay=60), str(mnt), "fsname=svc")
    thread = serve_in_thread(server)
    reader = None
    try:
        reader = subprocess.Popen([sys.executable, "-c", READER, str(mnt / "slow")],
                                  stdout=subprocess.PIPE, text=True)
        wait_blocked([reader], "ksys_read")
        d = server.dispatcher
        assert len(d.pending) == 1 and len(d._tasks) == 1
        os.kill(reader.pid, signal.SIGUSR1)
        out, _ = reader.communicate(timeout=10)
        assert out.split()[0] == "EINTR"
        assert (mnt / "key01").read_bytes() == b"value of key01\n"   # a later request
        # (key01's own task is forgotten by a callback just after its reply went out)
        deadline = time.monotonic() + 10
        while d._tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not d.pending and not d._tasks
        assert not server.conn.inflight and not server.conn._interrupted
    finally:
        if reader is not None:
            _reap([reader])
        server.close()
        thread.join(10)
    assert not thread.is_alive()


def test_async_forget_and_sync_only_handlers() -> None:
    import asyncio
    import stat as st

    from fusewire import EntryAttributes, Operations
    from fusewire.server.dispatch import Dispatcher
    from fusewire.testing.emulator import KernelEmulator

    forgotten: list[tuple[int, int]] = []

    class FS(Operations):
        async def lookup(self, parent_inode: int, name: bytes,  # type: ignore[override]
                         ctx: Any) -> EntryAttributes:
            assert asyncio.current_task() is not None
            async with asyncio.timeout(5):          # needs a current task
                await asyncio.sleep(0.001)
            return EntryAttributes(5, st_mode=st.S_IFREG | 0o644)

        def getattr(self, inode: int, ctx: Any) -> EntryAttributes:
            mode = st.S_IFDIR | 0o755 if inode == 1 else st.S_IFREG | 0o644
            return EntryAttributes(inode, st_mode=mode)

        async def forget(self, inode_list: Any) -> None:  # type: ignore[override]
            await asyncio.sleep(0)
            forgotten.extend(inode_list)

    emu = KernelEmulator(FS())
    assert emu.lookup("/a") == 5
    assert emu.dispatcher.nodes.counts == {5: 1}
    emu.forget(5, 1)
    assert forgotten == [(5, 1)] and emu.dispatcher.nodes.counts == {}

    class BadInit(Operations):
        async def init(self) -> None:  # type: ignore[override]
            pass

    from fusewire.connection import Connection

    with pytest.raises(TypeError, match=r"BadInit\.init must be a plain def"):
        Dispatcher(BadInit(), Connection())


def test_async_filesystem_with_deferred_locks(tmp_path: Path) -> None:
    """Deferred replies inside the async path: an async ``flock`` whose lock table
    defers, and a sync ``setlk`` run in a pass (SETLK calls flock's opcode path)."""
    from fusewire.examples.memfs import MemFS
    from fusewire.server import Server
    from fusewire.server.loop import serve_in_thread

    class AsyncLockFS(MemFS):
        async def flock(self, fh: int, owner: int, op: int,  # type: ignore[override]
                        sleep: bool, ctx: Any) -> None:
            MemFS.flock(self, fh, owner, op, sleep, ctx)

    if dev_fuse_problem() is not None:
        pytest.skip(dev_fuse_problem() or "")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = Server(AsyncLockFS(entry_timeout=0, attr_timeout=0), str(mnt), "fsname=alk")
    thread = serve_in_thread(server)
    procs: list[subprocess.Popen[str]] = []
    fd = -1
    try:
        f = mnt / "locked"
        f.write_bytes(b"x" * 100)
        fd = os.open(f, os.O_RDWR)
        fcntl.fcntl(fd, fcntl.F_SETLK, _flock_struct(fcntl.F_WRLCK, 0, 10))
        fcntl.flock(fd, fcntl.LOCK_EX)
        procs = [locker(f, "posix"), locker(f, "flock"), locker(f, "flock")]
        wait_blocked(procs)
        assert timed(os.listdir, mnt) < 1.0
        os.kill(procs[2].pid, signal.SIGUSR1)
        assert procs[2].communicate(timeout=10)[0].strip() == "EINTR"
        os.close(fd)
        fd = -1
        assert [p.communicate(timeout=30)[0].strip() for p in procs[:2]] == ["ok", "ok"]
        # The lockers' last close sends a background RELEASE whose flock unlock runs
        # in the async handler (in flight while it runs): nothing may stay pending
        # once the kernel has no request outstanding on this connection.
        assert settled(server, mnt), f"left in flight: {list(server.dispatcher.pending)}"
    finally:
        if fd >= 0:
            os.close(fd)
        _reap(procs)
        server.close()
        thread.join(10)


def test_sync_handler_answers_later_from_another_thread(tmp_path: Path) -> None:
    """``raise ctx.defer()`` in a sync handler, ``reply()`` from a timer thread: the
    single serving thread serves other requests meanwhile and writes the reply."""
    import stat as st
    import threading

    from fusewire import EntryAttributes, FUSEError, Operations
    from fusewire.server import Server
    from fusewire.server.loop import serve_in_thread

    class LaterFS(Operations):
        """GETATTR of inode 2 by a waiting pid is answered 0.5 s later by a timer."""

        def _attr(self, inode: int) -> EntryAttributes:
            if inode == 1:
                return EntryAttributes(1, st_mode=st.S_IFDIR | 0o755, st_nlink=2)
            return EntryAttributes(inode, st_mode=st.S_IFREG | 0o444, st_size=5)

        def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> EntryAttributes:
            if name in (b"later", b"now"):
                return self._attr(2 if name == b"later" else 3)
            raise FUSEError(errno.ENOENT)

        def getattr(self, inode: int, ctx: Any) -> EntryAttributes:
            if inode == 2 and ctx.can_defer and ctx.pid in waiting_pids:
                pending = ctx.defer()
                threading.Timer(0.5, pending.reply, args=(self._attr(2),)).start()
                deferred.set()
                raise pending
            return self._attr(inode)

    if dev_fuse_problem() is not None:
        pytest.skip(dev_fuse_problem() or "")
    waiting_pids: set[int] = set()
    deferred = threading.Event()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    server = Server(LaterFS(), str(mnt), "fsname=later")
    thread = serve_in_thread(server)
    child = None
    try:
        code = ("import os, sys, time\n"
                "sys.stdin.readline()\n"
                "t = time.monotonic(); st = os.stat(sys.argv[1])\n"
                "print(st.st_size, time.monotonic() - t, flush=True)\n")
        child = subprocess.Popen([sys.executable, "-c", code, str(mnt / "later")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        waiting_pids.add(child.pid)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert deferred.wait(30)
        assert timed(os.stat, mnt / "now") < 0.4        # served while the stat waits
        size, took = child.communicate(timeout=30)[0].split()
        assert size == "5" and float(took) >= 0.3
        assert not server.dispatcher.pending
    finally:
        if child is not None:
            _reap([child])
        server.close()
        thread.join(10)
