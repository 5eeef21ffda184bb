"""Shared fixtures: real fusewire mounts served by a separate process.

``memfs_mount`` and ``passthrough_mount`` start ``python -m fusewire mount
... -f -o default_permissions`` as a child process (client and server in one
process would fight over the GIL, and some syscalls would deadlock while the
serving thread blocks), wait until the mount answers, yield the mountpoint,
and tear everything down: lazy unmount, then SIGTERM (SIGKILL after 5 s) and
reap of exactly the pid we started.

``tmpfs_dir`` is a private tmpfs (mounted by us when root, else a directory
under /dev/shm): the reference filesystem for the differential POSIX tests.
``posix_root`` is parametrized over memfs, passthrough and tmpfs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as _hyp_settings

from fusewire.server.mount import dev_fuse_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT = 15.0
#: A test blocked this long in a syscall on a mount is unblocked by killing its
#: server (the kernel then fails pending requests with ENOTCONN) instead of hanging.
WATCHDOG = float(os.environ.get("FUSEWIRE_TEST_WATCHDOG", "120"))
IS_ROOT = os.geteuid() == 0
#: allow_other so that checks run as another uid (setresuid) reach the mount at
#: all; without it FUSE refuses every other user and permission checks say nothing.
MOUNT_OPTIONS = "default_permissions,allow_other" if IS_ROOT else "default_permissions"

_hyp_settings.register_profile("ci", deadline=None, derandomize=True)
_hyp_settings.register_profile("dev", deadline=None, max_examples=50)
_hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --------------------------------------------------------------------------
# helpers


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_fstype(path: str | os.PathLike[str]) -> str | None:
    """The fstype of the mount whose mountpoint is exactly ``path``, else None."""
    target = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape(fields[4]) == target:
                found = right.split()[0]
    return found


def is_fuse_mounted(path: str | os.PathLike[str]) -> bool:
    fstype = mount_fstype(path)
    return fstype is not None and fstype.startswith("fuse")


def server_env(extra_path: list[str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    paths = [str(REPO_ROOT), *(extra_path or [])]
    env["PYTHONPATH"] = os.pathsep.join(paths) + (os.pathsep + old if old else "")
    return env


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our own child, then SIGKILL if it has not exited within 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _read_stderr(proc: subprocess.Popen[bytes], errfile: Path) -> str:
    try:
        return errfile.read_text(errors="replace")[-4000:]
    except OSError:
        return "<no stderr>"


class FuseServer:
    """A ``python -m fusewire mount`` child process and its mountpoint."""

    def __init__(self, argv_tail: list[str], mountpoint: Path, logdir: Path,
                 options: str = MOUNT_OPTIONS, pythonpath: list[str] | None = None) -> None:
        self.mountpoint = mountpoint
        self.errfile = logdir / f"server-{mountpoint.name}.stderr"
        self.argv = [sys.executable, "-m", "fusewire", "mount", *argv_tail,
                     str(mountpoint), "-f", "-o", options]
        self._err = open(self.errfile, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(self.argv, env=server_env(pythonpath), cwd="/",
                                     stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err)

        self._watchdog: threading.Timer | None = None
        self.watchdog_fired = False

    def stderr(self) -> str:
        return _read_stderr(self.proc, self.errfile)

    def _fire(self) -> None:
        self.watchdog_fired = True
        sys.stderr.write(f"\nwatchdog: killing server of {self.mountpoint} after {WATCHDOG}s\n")
        if self.proc.poll() is None:
            self.proc.kill()

    def rearm(self, seconds: float = WATCHDOG) -> None:
        """(Re)start the watchdog: kill the server if the test is not done in ``seconds``."""
        self.disarm()
        self._watchdog = threading.Timer(seconds, self._fire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def wait_ready(self, timeout: float = MOUNT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                pytest.fail(f"server exited with {self.proc.returncode} before the mount "
                            f"was live: {' '.join(self.argv)}\n--- stderr ---\n{self.stderr()}")
            if is_fuse_mounted(self.mountpoint):
                try:
                    os.stat(self.mountpoint)
                except OSError:
                    pass
                else:
                    self.rearm()
                    return
            time.sleep(0.02)
        self.close()
        pytest.fail(f"mount not live after {timeout}s: {' '.join(self.argv)}\n"
                    f"--- stderr ---\n{self.stderr()}")

    def close(self) -> None:
        self.disarm()
        if is_fuse_mounted(self.mountpoint):
            try:
                from fusewire.server.mount import unmount

                unmount(str(self.mountpoint), lazy=True)
            except (OSError, ImportError):
                subprocess.run(["umount", "-l", str(self.mountpoint)], check=False,
                               stderr=subprocess.DEVNULL)
        stop_process(self.proc)
        self._err.close()


def start_server(argv_tail: list[str], mountpoint: Path, logdir: Path,
                 options: str = MOUNT_OPTIONS, pythonpath: list[str] | None = None) -> FuseServer:
    """Start ``python -m fusewire mount ARGV_TAIL MOUNTPOINT -f -o OPTIONS``; wait until live."""
    problem = dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mountpoint.mkdir(parents=True, exist_ok=True)
    srv = FuseServer(argv_tail, mountpoint, logdir, options, pythonpath)
    srv.wait_ready()
    return srv


def passthrough_problem() -> str | None:
    try:
        importlib.import_module("fusewire.examples.passthrough")
    except ImportError as exc:
        return f"fusewire.examples.passthrough is not importable: {exc}"
    return None


@pytest.fixture
def fuse_server_factory(tmp_path: Path) -> Iterator[object]:
    """``start(argv_tail, mountpoint, options=...)`` -> FuseServer; all torn down."""
    servers: list[FuseServer] = []

    def start(argv_tail: list[str], mountpoint: Path, options: str = MOUNT_OPTIONS,
              pythonpath: list[str] | None = None) -> FuseServer:
        srv = start_server(argv_tail, mountpoint, tmp_path, options, pythonpath)
        servers.append(srv)
        return srv

    yield start
    for srv in reversed(servers):
        srv.close()


# --------------------------------------------------------------------------
# tmpfs


def make_tmpfs() -> tuple[Path, bool]:
    """A fresh private tmpfs (mounted when root, else a dir under /dev/shm)."""
    if IS_ROOT:
        d = Path(tempfile.mkdtemp(prefix="fusewire-tmpfs-"))
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755",
                            "fusewire-test", str(d)], capture_output=True)
        if r.returncode == 0:
            return d, True
        d.rmdir()
    d = Path(tempfile.mkdtemp(prefix="fusewire-tmpfs-", dir="/dev/shm"))
    d.chmod(0o755)
    return d, False


def remove_tmpfs(d: Path, mounted: bool) -> None:
    if mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)
        try:
            d.rmdir()
        except OSError:
            pass
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tmpfs_factory() -> Iterator[object]:
    """``make()`` -> a fresh private tmpfs directory; all removed at teardown."""
    made: list[tuple[Path, bool]] = []

    def make() -> Path:
        made.append(make_tmpfs())
        return made[-1][0]

    yield make
    for d, mounted in reversed(made):
        remove_tmpfs(d, mounted)


@pytest.fixture
def tmpfs_dir(tmpfs_factory: object) -> Path:
    return tmpfs_factory()  # type: ignore[operator, no-any-return]


# --------------------------------------------------------------------------
# mounts


@pytest.fixture
def memfs_mount(tmp_path: Path) -> Iterator[Path]:
    srv = start_server(["memfs"], tmp_path / "memfs-mnt", tmp_path)
    try:
        yield srv.mountpoint
    finally:
        srv.close()


@pytest.fixture
def passthrough_source(tmpfs_factory: object) -> Path:
    """The directory passthrough mirrors: a private tmpfs, so differences are ours."""
    return tmpfs_factory()  # type: ignore[operator, no-any-return]


@pytest.fixture
def passthrough_mount(tmp_path: Path, passthrough_source: Path) -> Iterator[Path]:
    problem = passthrough_problem()
    if problem is not None:
        pytest.skip(problem)
    srv = start_server(["passthrough", str(passthrough_source)],
                       tmp_path / "passthrough-mnt", tmp_path)
    try:
        yield srv.mountpoint
    finally:
        srv.close()


@pytest.fixture(params=["memfs", "passthrough", "tmpfs"])
def posix_root(request: pytest.FixtureRequest) -> Path:
    kind = request.param
    fixture = {"memfs": "memfs_mount", "passthrough": "passthrough_mount",
               "tmpfs": "tmpfs_dir"}[kind]
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------
# a throwaway user

#: Names of users the tests create: ``fwtest-<pid of the pytest process>-<random>``.
THROWAWAY_PREFIX = "fwtest-"


def _account_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run useradd/userdel, retrying while another process holds /etc/passwd's lock.

    Several test runs on one host may add or remove users at the same moment;
    the shadow tools then fail with "cannot lock" (exit 10 for useradd, 10 or
    1 for userdel) instead of waiting.  The retry waits on nothing but the
    lock, which is released within milliseconds.
    """
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    for attempt in range(50):
        if proc.returncode == 0 or "lock" not in proc.stderr:
            break
        time.sleep(0.02 * (attempt + 1))
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc


def _remove_stale_throwaway_users() -> None:
    """Delete users left by test runs that died before their teardown (their pid is gone)."""
    for entry in pwd.getpwall():
        name = entry.pw_name
        if not name.startswith(THROWAWAY_PREFIX):
            continue
        pid = name[len(THROWAWAY_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _account_tool(["userdel", name])


@contextlib.contextmanager
def make_throwaway_user() -> Iterator[pwd.struct_passwd]:
    """Create a uniquely named system user; delete it when the block ends.

    The name is ``fwtest-<pid>-<random>``, so concurrent runs on one host
    never share or delete each other's user; it has no home directory and no
    login shell.  Skips unless root with useradd/userdel.  Users left by runs
    that were killed before their teardown are removed first.
    """
    import secrets

    if not IS_ROOT:
        pytest.skip("creating a user needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    _remove_stale_throwaway_users()
    name = f"{THROWAWAY_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    proc = _account_tool(["useradd", "--system", "--no-create-home",
                          "--shell", "/usr/sbin/nologin", name])
    if proc.returncode != 0:
        pytest.skip(f"cannot create user {name}: {proc.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        proc = _account_tool(["userdel", name])
        if proc.returncode != 0:
            sys.stderr.write(f"conftest: could not remove user {name}: {proc.stderr}\n")


@pytest.fixture(scope="session")
def throwaway_user() -> Iterator[pwd.struct_passwd]:
    """A system user created for this test session and removed afterwards.

    See :func:`make_throwaway_user`; yields its ``pwd.struct_passwd``.
    """
    with make_throwaway_user() as user:
        yield user


# --------------------------------------------------------------------------
# threads that block


@pytest.fixture
def start_blocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """``start_blocked(fn) -> Thread``: run ``fn`` in a thread, return once it blocks.

    "Blocks" means the thread entered ``threading.Condition.wait`` (which
    ``Event.wait`` uses too): a lock waiter is then queued and parked, so the
    test can act on it (unlock, interrupt, provoke a deadlock) knowing the
    order, instead of sleeping and hoping the thread got there.  Fails the
    test if ``fn`` finishes or has not blocked within 10 s.  Threads still
    running at teardown are joined (5 s).
    """
    original = threading.Condition.wait
    watched: dict[int, threading.Event] = {}
    started: list[threading.Thread] = []

    def wait(self: threading.Condition, timeout: float | None = None) -> bool:
        parked = watched.get(threading.get_ident())
        if parked is not None:
            parked.set()
        return original(self, timeout)

    monkeypatch.setattr(threading.Condition, "wait", wait)

    def start(fn: Any) -> threading.Thread:
        parked = threading.Event()
        ready = threading.Event()

        def body() -> None:
            watched[threading.get_ident()] = parked
            ready.set()
            fn()

        t = threading.Thread(target=body, daemon=True)
        t.start()
        started.append(t)
        assert ready.wait(10), "the thread did not start"
        # ``parked`` is set from inside the thread's Condition.wait; the main
        # thread's own waits (this one included) are not watched.
        assert parked.wait(10), "the thread did not block"
        return t

    yield start
    for t in started:
        t.join(5)
