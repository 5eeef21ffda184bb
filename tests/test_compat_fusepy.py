"""fusewire.compat.fusepy: fusepy-API filesystems of our own (tests/compat_fs/),
run unmodified through ``python -m fusewire.compat.fusepy``, mounted for real and
used with ordinary tools; the bridge's conversions through the emulator."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import conftest
import pytest
from script_mount import start_script

from fusewire.compat import fusepy
from fusewire.testing.emulator import KernelEmulator

FS_DIR = Path(__file__).with_name("compat_fs")
SHIM = ["-m", "fusewire.compat.fusepy"]


def _run(*argv: str, cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout


def _emulate(ops: Any, **kw: Any) -> KernelEmulator:
    defaults = {"raw_fi": False, "use_ino": False, "hard_remove": False,
                "timeouts": (1.0, 1.0, 0.0), "direct_io": False, "keep_cache": False}
    defaults.update(kw)
    return KernelEmulator(fusepy._Adapter(fusepy.bridge_for(ops, **defaults)))


# -- the bridge, through the emulator ---------------------------------------------------


def test_dict_attributes_and_times() -> None:
    class FS(fusepy.Operations):
        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
            if path == "/f":
                return {"st_mode": stat.S_IFREG | 0o640, "st_size": 1000, "st_mtime": 1.5,
                        "st_atime": 2}
            raise fusepy.FuseOSError(errno.ENOENT)

    a = _emulate(FS()).stat("/f")
    assert (a.mode, a.size, a.nlink, a.blocks) == (stat.S_IFREG | 0o640, 1000, 1, 2)
    assert (a.mtime, a.mtimensec, a.atime) == (1, 500_000_000, 2)


def test_use_ns_and_negative_errno_returns() -> None:
    class FS(fusepy.Operations):
        use_ns = True

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_mtime": 3_000_000_007}
            return -errno.EACCES            # mfusepy style

        def mkdir(self, path: str, mode: int) -> int:
            return -errno.EDQUOT

    e = _emulate(FS())
    root = e.stat("/")
    assert (root.mtime, root.mtimensec) == (3, 7)
    with pytest.raises(OSError) as info:
        e.stat("/x")
    assert info.value.errno == errno.EACCES
    with pytest.raises(OSError) as info:
        e.mkdir("/d")
    assert info.value.errno == errno.EDQUOT


def test_defaults_none_and_call_routing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="fuse.log-mixin")
    seen: list[tuple[str, str]] = []

    class FS(fusepy.LoggingMixIn, fusepy.Operations):
        def __call__(self, op: str, path: str, *args: Any) -> Any:
            seen.append((op, path))
            return super().__call__(op, path, *args)

        listxattr = None

    e = _emulate(FS())
    with pytest.raises(OSError) as info:
        e.mkdir("/d")                       # inherited default: read-only
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        e.listxattr("/")                    # None: not implemented at all
    assert info.value.errno == errno.ENOSYS
    assert e.readdir("/") == []
    assert ("mkdir", "/d") in seen and ("readdir", "/") in seen
    assert "-> mkdir /d" in caplog.text                     # LoggingMixIn


def test_install_aliases_fuse_and_mfusepy(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("fuse", "mfusepy"):   # restored (or removed) by monkeypatch
        monkeypatch.setitem(sys.modules, k, None)
    fusepy.install()
    import fuse  # type: ignore[import-not-found]
    import mfusepy  # type: ignore[import-not-found]

    assert fuse is fusepy and mfusepy is fusepy
    assert fuse.ENOTSUP == errno.EOPNOTSUPP
    assert issubclass(fuse.FuseOSError, OSError)


# -- real mounts -------------------------------------------------------------------------------


@pytest.mark.fuse
def test_tree_with_ordinary_tools(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    srv = start_script([*SHIM, str(FS_DIR / "fusepy_tree.py"), str(mnt)], mnt, tmp_path)
    try:
        _run("mkdir", "-p", "a/b", cwd=mnt)
        _run("sh", "-c", "echo hello > a/b/f && cp a/b/f a/g && cat a/b/f a/g > a/h", cwd=mnt)
        assert _run("cat", "a/h", cwd=mnt) == "hello\nhello\n"
        _run("mv", "a", "z", cwd=mnt)                  # a directory with children
        assert sorted(_run("ls", "z", cwd=mnt).split()) == ["b", "g", "h"]
        assert _run("cat", "z/b/f", cwd=mnt) == "hello\n"
        os.symlink("b/f", mnt / "z/s")
        assert os.readlink(mnt / "z/s") == "b/f" and (mnt / "z/s").read_text() == "hello\n"
        os.link(mnt / "z/g", mnt / "z/g2")
        assert os.stat(mnt / "z/g2").st_nlink == 2
        os.chmod(mnt / "z/g", 0o600)
        assert stat.S_IMODE(os.stat(mnt / "z/g").st_mode) == 0o600
        assert _run("stat", "-c", "%s %a %h %F", "z/g", cwd=mnt).split() == [
            "6", "600", "2", "regular", "file"]
        os.utime(mnt / "z/g", (1_000_000_000, 1_000_000_000.25))
        assert os.stat(mnt / "z/g").st_mtime == 1_000_000_000.25
        with open(mnt / "z/g", "r+b") as f:
            f.seek(10)
            f.write(b"!")
            f.truncate(12)
        assert (mnt / "z/g").read_bytes() == b"hello\n\0\0\0\0!\0"
        os.setxattr(mnt / "z/g", "user.k", b"v")
        assert os.getxattr(mnt / "z/g", "user.k") == b"v"
        assert os.listxattr(mnt / "z/g") == ["user.k"]
        with pytest.raises(OSError) as info:
            os.setxattr(mnt / "z/g", "trusted.k", b"v")
        assert info.value.errno == errno.EOPNOTSUPP
        os.removexattr(mnt / "z/g", "user.k")
        with pytest.raises(OSError) as info:
            os.getxattr(mnt / "z/g", "user.k")
        assert info.value.errno == errno.ENODATA
        sv = os.statvfs(mnt)
        assert (sv.f_blocks, sv.f_bavail, sv.f_bsize) == (1000, 600, 4096)
        st = os.stat(mnt / "z/b/f")
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())   # fuse_get_context
        with pytest.raises(OSError) as info:
            os.rmdir(mnt / "z")
        assert info.value.errno == errno.ENOTEMPTY
        _run("rm", "-r", "z", cwd=mnt)
        assert os.listdir(mnt) == []
    finally:
        srv.close()


@pytest.mark.fuse
def test_mirror_raw_fi_use_ino(tmp_path: Path, tmpfs_factory: Any) -> None:
    src = tmpfs_factory()
    mnt = tmp_path / "mnt"
    srv = start_script([*SHIM, str(FS_DIR / "fusepy_mirror.py"), str(src), str(mnt)], mnt,
                       tmp_path)
    try:
        (mnt / "f").write_bytes(b"data")
        assert (src / "f").read_bytes() == b"data"
        os.mkdir(mnt / "d")
        os.link(mnt / "f", mnt / "d/f2")               # use_ino: one inode, two names
        a, b = os.stat(mnt / "f"), os.stat(mnt / "d/f2")
        assert a.st_ino == b.st_ino and b.st_nlink == 2
        os.rename(mnt / "d", mnt / "e")
        assert (mnt / "e/f2").read_bytes() == b"data"
        with pytest.raises(OSError) as info:
            os.getxattr(mnt / "f", "user.x")            # getxattr = None
        assert info.value.errno == errno.EOPNOTSUPP
        _run("cp", "f", "e/copy", cwd=mnt)
        assert (src / "e/copy").read_bytes() == b"data"
        _run("rm", "-r", "e", cwd=mnt)
        assert sorted(os.listdir(src)) == ["f"]
    finally:
        srv.close()


@pytest.mark.fuse
def test_daemon_mode_returns_once_mounted(tmp_path: Path) -> None:
    problem = conftest.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pidfile = tmp_path / "pid"
    env = conftest.server_env()
    env["TREE_PIDFILE"] = str(pidfile)
    r = subprocess.run([sys.executable, *SHIM, str(FS_DIR / "fusepy_tree.py"), str(mnt),
                        "daemon"], env=env, cwd="/", timeout=60, capture_output=True)
    daemon = int(pidfile.read_text()) if pidfile.exists() else 0
    try:
        assert r.returncode == 0, r.stderr.decode()
        assert conftest.is_fuse_mounted(mnt)            # mounted before the parent exited
        (mnt / "x").write_text("in the daemon")
        assert (mnt / "x").read_text() == "in the daemon"
    finally:
        if conftest.is_fuse_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        deadline = time.monotonic() + 10
        while daemon and time.monotonic() < deadline:
            try:
                os.kill(daemon, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            if daemon:
                os.kill(daemon, signal.SIGKILL)
    assert daemon and daemon != os.getpid()


@pytest.mark.fuse
def test_mount_failure_is_one_line(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("from fuse import FUSE, Operations\n"
                      f"FUSE(Operations(), {str(tmp_path / 'missing')!r}, foreground=True)\n")
    r = subprocess.run([sys.executable, *SHIM, str(script)], env=conftest.server_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot mount" in lines[0] and "Traceback" not in r.stderr


@pytest.mark.parametrize("module", ["fusewire.compat.fusepy", "fusewire.compat.pyfuse3"])
def test_runner_mistakes_are_one_line(module: str, tmp_path: Path) -> None:
    """No script, or a script that is not there: exit 2 with a usage line or one error line."""
    r = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"usage: python -m {module} SCRIPT.py")
    assert "Traceback" not in r.stderr
    missing = tmp_path / "nope.py"
    r = subprocess.run([sys.executable, "-m", module, str(missing)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"{module}: {missing}: no such file"]
