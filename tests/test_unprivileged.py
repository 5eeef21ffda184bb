"""A non-root user mounts and unmounts memfs through fusermount3.

Runs ``python -m fusewire mount memfs MNT`` (background mode) as the system
throwaway user (conftest's ``throwaway_user``: uniquely named, removed
afterwards), writes and reads a file in the mount as that user,
then ``python -m fusewire umount MNT`` as that user, and checks the mount and
the daemon are gone.  The package (and its third-party dependencies) are
staged in a world-readable temporary directory when the user cannot import
them from where they are, and an interpreter the user may execute is chosen.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import conftest
import pytest

pytestmark = [pytest.mark.fuse, pytest.mark.root]


class AsUser:
    def __init__(self, pw: pwd.struct_passwd) -> None:
        self.pw = pw
        self.python = sys.executable
        self.pythonpath: list[str] = [str(conftest.REPO_ROOT)]

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/",
                "LANG": "C.UTF-8", "PYTHONPATH": os.pathsep.join(self.pythonpath),
                "PYTHONDONTWRITEBYTECODE": "1"}

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, user=self.pw.pw_uid, group=self.pw.pw_gid, extra_groups=[],
                              env=self.env(), cwd="/", capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def py(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.run([self.python, *args], timeout=timeout)


def _choose_python(user: AsUser) -> None:
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}",
                  "/usr/bin/python3", "/usr/local/bin/python3"]
    for cand in candidates:
        if os.path.exists(cand):
            user.python = cand
            try:
                if user.py("-c", "pass").returncode == 0:
                    return
            except OSError:  # e.g. EACCES: the interpreter lives under /root
                continue
    pytest.skip(f"no Python interpreter executable by {user.pw.pw_name} "
                f"(tried {candidates})")


def _stage_package(user: AsUser, staging: Path) -> None:
    """Make ``import fusewire`` work for the user, copying what it cannot read."""
    probe = "import fusewire.cli, fusewire.examples.memfs, fusewire.server.loop"
    copied_pkg = False
    for _ in range(10):
        r = user.py("-c", probe)
        if r.returncode == 0:
            return
        missing = re.search(r"No module named '([^'.]+)", r.stderr)
        if not copied_pkg and (missing is None or missing.group(1) == "fusewire"
                               or "Permission denied" in r.stderr):
            shutil.copytree(conftest.REPO_ROOT / "fusewire", staging / "fusewire",
                            ignore=shutil.ignore_patterns("__pycache__"))
            user.pythonpath = [str(staging)]
            copied_pkg = True
        elif missing is not None:
            spec = importlib.util.find_spec(missing.group(1))
            if spec is None or spec.origin is None:
                pytest.skip(f"{user.pw.pw_name} cannot import {missing.group(1)!r}: "
                            f"{r.stderr[-500:]}")
            src = Path(spec.origin)
            if src.name == "__init__.py":
                shutil.copytree(src.parent, staging / src.parent.name,
                                ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                shutil.copy2(src, staging / src.name)
            if str(staging) not in user.pythonpath:
                user.pythonpath.append(str(staging))
        else:
            pytest.skip(f"{user.pw.pw_name} cannot import fusewire: {r.stderr[-800:]}")
        for dirpath, _dirnames, filenames in os.walk(staging):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
    pytest.skip(f"{user.pw.pw_name} still cannot import fusewire after staging")


def _dev_fuse_for_user(user: AsUser) -> int | None:
    """Skip unless the user can open /dev/fuse (fusermount3 opens it with the caller's
    credentials).  Distributions ship /dev/fuse as 0666 (udev); where it is 0600 and we
    are root, it is made 0666 for the test (FUSEWIRE_TEST_CHMOD_DEV_FUSE=0 disables this);
    the old mode is returned so the fixture restores it."""
    probe = "import os; os.close(os.open('/dev/fuse', os.O_RDWR))"
    r = user.py("-c", probe)
    if r.returncode == 0:
        return None
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if os.geteuid() == 0 and os.environ.get("FUSEWIRE_TEST_CHMOD_DEV_FUSE", "1") == "1":
        os.chmod("/dev/fuse", 0o666)
        if user.py("-c", probe).returncode == 0:
            return mode
        os.chmod("/dev/fuse", mode)
    pytest.skip(f"{user.pw.pw_name} cannot open /dev/fuse (mode {oct(mode)}, owner uid "
                f"{os.stat('/dev/fuse').st_uid}; fusermount3 opens it with the caller's "
                f"credentials): {r.stderr.strip().splitlines()[-1] if r.stderr else ''}; "
                "run as root (or with FUSEWIRE_TEST_CHMOD_DEV_FUSE=1) to make it 0666")


def _server_pids(mountpoint: str) -> list[int]:
    """Pids of processes whose command line names our (unique) mountpoint."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if mountpoint.encode() in argv and b"fusewire" in argv:
            pids.append(int(entry))
    return pids


@pytest.fixture
def unpriv(throwaway_user: pwd.struct_passwd) -> Iterator[tuple[AsUser, Path]]:
    if os.geteuid() != 0:
        pytest.skip("switching to the test user needs root")
    problem = conftest.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    from fusewire.server.mount import fusermount_path

    try:
        fm = fusermount_path()
    except (OSError, RuntimeError) as exc:
        pytest.skip(f"fusermount3 not found: {exc}")
    mode = os.stat(fm).st_mode
    if not (mode & stat.S_ISUID and os.stat(fm).st_uid == 0):
        pytest.skip(f"{fm} is not setuid root (mode {oct(mode)})")
    pw = throwaway_user
    user = AsUser(pw)
    _choose_python(user)
    restore_mode = _dev_fuse_for_user(user)
    base = Path(tempfile.mkdtemp(prefix="fusewire-unpriv-", dir="/tmp"))
    os.chmod(base, 0o755)
    staging = base / "pkg"
    staging.mkdir(mode=0o755)
    mnt = base / "mnt"
    mnt.mkdir()
    os.chown(mnt, pw.pw_uid, pw.pw_gid)
    os.chmod(mnt, 0o755)
    try:
        _stage_package(user, staging)
        yield user, mnt
    finally:
        if conftest.is_fuse_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        deadline = time.monotonic() + 5
        while _server_pids(str(mnt)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in _server_pids(str(mnt)):  # only the daemon this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)
        if restore_mode is not None:
            os.chmod("/dev/fuse", restore_mode)


def _mount_entry(mnt: Path) -> str | None:
    target = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and conftest._unescape(fields[4]) == target:
                return line
    return None


def test_unprivileged_mount_write_read_umount(unpriv: tuple[AsUser, Path]) -> None:
    user, mnt = unpriv
    r = user.py("-m", "fusewire", "mount", "memfs", str(mnt), timeout=30)
    assert r.returncode == 0, f"mount as {user.pw.pw_name} failed: {r.stderr}"
    line = _mount_entry(mnt)
    assert line is not None and " fuse" in line, f"not mounted: {line}"
    assert f"user_id={user.pw.pw_uid}" in line, line
    assert "nosuid" in line and "nodev" in line, line
    pids = _server_pids(str(mnt))
    assert pids, "no daemon found"
    for pid in pids:
        assert os.stat(f"/proc/{pid}").st_uid == user.pw.pw_uid, "the daemon must not run as root"
    script = (
        "import os, sys; m = sys.argv[1]; p = os.path.join(m, 'hello.txt');"
        "open(p, 'w').write('written by an unprivileged user');"
        "print(open(p).read()); st = os.stat(p); print(st.st_uid, st.st_gid);"
        "os.mkdir(os.path.join(m, 'd')); print(sorted(os.listdir(m)))"
    )
    r = user.py("-c", script, str(mnt))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["written by an unprivileged user",
                                     f"{user.pw.pw_uid} {user.pw.pw_gid}", "['d', 'hello.txt']"]
    r = user.py("-m", "fusewire", "umount", str(mnt))
    assert r.returncode == 0, f"umount as {user.pw.pw_name} failed: {r.stderr}"
    assert _mount_entry(mnt) is None, "still mounted after umount"
    deadline = time.monotonic() + 5
    while _server_pids(str(mnt)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _server_pids(str(mnt)) == [], "the daemon did not exit after umount"


def test_other_user_cannot_umount(unpriv: tuple[AsUser, Path]) -> None:
    """The mount belongs to its user: nobody else (uid 65534) may unmount it."""
    user, mnt = unpriv
    r = user.py("-m", "fusewire", "mount", "memfs", str(mnt), timeout=30)
    assert r.returncode == 0, r.stderr
    nobody = AsUser(pwd.getpwuid(65534))
    nobody.python, nobody.pythonpath = user.python, user.pythonpath
    r = nobody.py("-m", "fusewire", "umount", str(mnt))
    assert r.returncode != 0
    assert _mount_entry(mnt) is not None
    r = user.py("-m", "fusewire", "umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert _mount_entry(mnt) is None


def test_throwaway_user_is_unique_and_removed() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root")
    with conftest.make_throwaway_user() as pw:
        name = pw.pw_name
        assert name.startswith(f"{conftest.THROWAWAY_PREFIX}{os.getpid()}-")
        assert pwd.getpwnam(name).pw_uid == pw.pw_uid != 0
        assert pw.pw_shell.endswith("nologin")
        with conftest.make_throwaway_user() as other:
            assert other.pw_name != name and other.pw_uid != pw.pw_uid
        with pytest.raises(KeyError):
            pwd.getpwnam(other.pw_name)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):  # userdel removed the user's own group too
        grp.getgrnam(name)


def test_unprivileged_recoverable_mount_needs_no_environment(
        unpriv: tuple[AsUser, Path]) -> None:
    """A normal user's ``--recoverable`` works with no FUSEWIRE_RUN_DIR or XDG_RUNTIME_DIR:
    the keeper's socket and log go to a per-user directory; a crash is recovered."""
    from fusewire.testing.procs import children

    user, mnt = unpriv
    env = user.env()
    assert "FUSEWIRE_RUN_DIR" not in env and "XDG_RUNTIME_DIR" not in env
    pids: set[int] = set()
    status = [user.python, "-c", "import json, sys; from fusewire.recovery import commands; "
              "print(json.dumps(commands.status(sys.argv[1])))", str(mnt)]
    try:
        r = user.py("-m", "fusewire", "mount", "memfs", str(mnt), "--recoverable", timeout=60)
        assert r.returncode == 0, f"--recoverable as {user.pw.pw_name} failed: {r.stderr}"
        st = json.loads(user.run(status).stdout)
        pids |= {st["keeper_pid"]} | children(st["keeper_pid"])
        assert os.stat(f"/proc/{st['keeper_pid']}").st_uid == user.pw.pw_uid
        r = user.py("-c", "import sys; open(sys.argv[1] + '/f', 'w').write('kept')", str(mnt))
        assert r.returncode == 0, r.stderr
        os.kill(st["server_pid"], signal.SIGKILL)
        r = user.py("-c", "import sys; print(open(sys.argv[1] + '/f').read())", str(mnt))
        assert r.returncode == 0 and r.stdout.strip() == "kept", r.stderr
        st2 = json.loads(user.run(status).stdout)
        assert st2["restarts"] == 1 and st2["server_pid"] != st["server_pid"]
        pids |= children(st["keeper_pid"])
        r = user.py("-m", "fusewire", "umount", str(mnt))
        assert r.returncode == 0, r.stderr
        assert _mount_entry(mnt) is None
        deadline = time.monotonic() + 10
        while [p for p in pids if _running(p)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _running(p)], "processes left after umount"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False
