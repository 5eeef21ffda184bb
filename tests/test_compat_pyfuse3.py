"""fusewire.compat.pyfuse3: pyfuse3's own example filesystems (hello, hello_asyncio,
tmpfs, passthroughfs, from its source distribution on the registry, downloaded
once and cached), mounted unmodified and used with ordinary tools; the bridge
through the emulator."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest
from script_mount import ScriptServer, start_script

import fusewire
from fusewire.compat import pyfuse3
from fusewire.testing.emulator import KernelEmulator

PYFUSE3_VERSION = "3.5.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusewire"
SHIM = ["-m", "fusewire.compat.pyfuse3"]


def _sdist_examples() -> Path:
    """pyfuse3's examples/ from its sdist: cached, else ``pip download``; skip if neither."""
    root = CACHE / f"pyfuse3-{PYFUSE3_VERSION}"
    examples = root / "examples"
    if (examples / "hello.py").exists():
        return examples
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"pyfuse3-{PYFUSE3_VERSION}.tar.gz"
    if not tarball.exists():
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--no-binary", ":all:", f"pyfuse3=={PYFUSE3_VERSION}", "-d",
                            str(CACHE)], capture_output=True, text=True, timeout=900)
        if r.returncode != 0 or not tarball.exists():
            pytest.skip(f"pyfuse3 {PYFUSE3_VERSION}'s sdist could not be downloaded from the "
                        f"registry: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(f"pyfuse3-{PYFUSE3_VERSION}/examples/")
                   and m.isfile()]
        tar.extractall(CACHE, members=members, filter="data")
    return examples


@pytest.fixture(scope="module")
def examples() -> Path:
    return _sdist_examples()


@pytest.fixture
def needs_trio() -> None:
    pytest.importorskip("trio", reason="trio is not installed (pip install -e '.[test]')")


def _run(*argv: str, cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout


def _mount(script: Path, args: list[str], mnt: Path, tmp: Path) -> ScriptServer:
    return start_script([*SHIM, str(script), *args, str(mnt)], mnt, tmp)


def _tools_workout(mnt: Path, *, into_renamed_tree: bool = True) -> None:
    """What a user does first: write, read, mkdir, rename a tree, links, chmod, times.

    pyfuse3's passthroughfs keeps a path per inode and updates only the renamed
    directory's own path, so below a renamed directory it looks up stale paths
    (the example's own limitation, the same on pyfuse3): ``into_renamed_tree``
    False leaves that step out for it.
    """
    _run("sh", "-c", "echo hello > a && mkdir -p d/e && echo x > d/e/f", cwd=mnt)
    assert _run("cat", "a", cwd=mnt) == "hello\n"
    tree = "d"
    if into_renamed_tree:
        _run("mv", "d", "z", cwd=mnt)
        tree = "z"
    assert _run("cat", f"{tree}/e/f", cwd=mnt) == "x\n"
    os.symlink("a", mnt / "s")
    assert os.readlink(mnt / "s") == "a" and _run("cat", "s", cwd=mnt) == "hello\n"
    os.link(mnt / "a", mnt / "h")
    assert os.stat(mnt / "h").st_nlink == 2
    os.chmod(mnt / "a", 0o600)
    assert stat.S_IMODE(os.stat(mnt / "a").st_mode) == 0o600
    os.utime(mnt / "a", ns=(10**18, 10**18))
    assert os.stat(mnt / "a").st_mtime_ns == 10**18
    os.truncate(mnt / "a", 2)
    assert (mnt / "a").read_bytes() == b"he"
    _run("cp", "a", "c", cwd=mnt)
    _run("rm", "-r", tree, "h", cwd=mnt)
    assert sorted(n for n in os.listdir(mnt)) == ["a", "c", "s"]
    with pytest.raises(OSError) as info:
        os.rmdir(mnt / "a")
    assert info.value.errno == errno.ENOTDIR


# -- pyfuse3's published examples, unmodified ------------------------------------------------


@pytest.mark.fuse
def test_hello_trio(examples: Path, tmp_path: Path, needs_trio: None) -> None:
    srv = _mount(examples / "hello.py", [], tmp_path / "mnt", tmp_path)
    try:
        assert os.listdir(srv.mountpoint) == ["message"]
        assert _run("cat", "message", cwd=srv.mountpoint) == "hello world\n"
        with pytest.raises(OSError) as info:
            (srv.mountpoint / "message").write_text("no")
        assert info.value.errno == errno.EACCES
    finally:
        srv.close()


@pytest.mark.fuse
def test_hello_asyncio(examples: Path, tmp_path: Path) -> None:
    srv = _mount(examples / "hello_asyncio.py", [], tmp_path / "mnt", tmp_path)
    try:
        assert _run("ls", cwd=srv.mountpoint).split() == ["message"]
        assert (srv.mountpoint / "message").read_text() == "hello world\n"
        assert os.stat(srv.mountpoint / "message").st_mtime == 1438467123.985654
    finally:
        srv.close()


@pytest.mark.fuse
def test_tmpfs(examples: Path, tmp_path: Path, needs_trio: None) -> None:
    srv = _mount(examples / "tmpfs.py", [], tmp_path / "mnt", tmp_path)
    try:
        _tools_workout(srv.mountpoint)
    finally:
        srv.close()


@pytest.mark.fuse
def test_passthroughfs(examples: Path, tmp_path: Path, tmpfs_factory: Any,
                       needs_trio: None) -> None:
    src = tmpfs_factory()
    (src / "existing").write_text("was here\n")
    srv = _mount(examples / "passthroughfs.py", [str(src)], tmp_path / "mnt", tmp_path)
    try:
        assert _run("cat", "existing", cwd=srv.mountpoint) == "was here\n"
        (src / "existing").unlink()
        _tools_workout(srv.mountpoint, into_renamed_tree=False)
        assert sorted(os.listdir(src)) == ["a", "c", "s"]
        assert (src / "c").read_bytes() == b"he"
    finally:
        srv.close()


# -- the bridge, through the emulator (coroutines that never suspend run inline) -------------


def _sync_runner() -> pyfuse3._Runner:
    def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        coro = fn(*args)
        try:
            coro.send(None)                      # type: ignore[attr-defined]
        except StopIteration as done:
            return done.value
        raise AssertionError("a test handler suspended")

    runner = pyfuse3._Runner()
    runner.call = run
    return runner


class _Flat(pyfuse3.Operations):
    """Files in the root only, pyfuse3 style."""

    def __init__(self) -> None:
        self.files: dict[bytes, tuple[int, bytearray]] = {}
        self.modes: dict[int, int] = {}
        self.xattr: dict[bytes, bytes] = {}

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o755
        else:
            data = next(d for i, d in self.files.values() if i == ino)
            a.st_mode = self.modes[ino]
            a.st_size = len(data)
        return a

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if name not in self.files:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.files[name][0])

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        ino = len(self.modes) + 2
        self.modes[ino] = mode
        self.files[name] = (ino, bytearray())
        return self._attr(ino)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for i, (name, (ino, _)) in enumerate(list(self.files.items())[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i + 1):
                break

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self.xattr[name] = value


def test_bridge_semantics() -> None:
    fs = _Flat()
    bridge = pyfuse3._bridge_for(fs, _sync_runner())
    e = KernelEmulator(bridge)
    e.mkdir("/d", 0o750)
    assert fs.modes[2] == stat.S_IFDIR | 0o750      # pyfuse3 adds S_IFDIR for mkdir
    assert e.stat("/d").mode == stat.S_IFDIR | 0o750
    assert e.readdir("/") == [b"d"]
    e.setxattr("/", b"user.k", b"v", 1)               # flags are not pyfuse3's to see
    assert fs.xattr == {b"user.k": b"v"}
    with pytest.raises(OSError) as info:
        e.unlink("/d")                                # not overridden: ENOSYS
    assert info.value.errno == errno.ENOSYS
    assert type(bridge).unlink is fusewire.Operations.unlink   # ENOSYS without a thread hop


def test_install_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("pyfuse3", "pyfuse3.asyncio", "pyfuse3_asyncio"):  # monkeypatch restores them
        monkeypatch.setitem(sys.modules, k, None)
    pyfuse3.install()
    import pyfuse3 as aliased  # type: ignore[import-not-found]
    import pyfuse3.asyncio as aio  # type: ignore[import-not-found]

    assert aliased is pyfuse3
    aio.enable()
    assert pyfuse3._asyncio_mode()
    aio.disable()
    assert pyfuse3.default_options == frozenset({"default_permissions"})


@pytest.mark.fuse
def test_terminate_and_close(tmp_path: Path) -> None:
    """terminate() from a handler ends main(); close() unmounts (hello's xattr command)."""
    script = tmp_path / "fs.py"
    script.write_text(
        "import asyncio, errno, stat, sys\n"
        "import pyfuse3, pyfuse3.asyncio\n"
        "pyfuse3.asyncio.enable()\n"
        "class FS(pyfuse3.Operations):\n"
        "    async def getattr(self, inode, ctx=None):\n"
        "        a = pyfuse3.EntryAttributes(); a.st_ino = inode\n"
        "        a.st_mode = stat.S_IFDIR | 0o755; return a\n"
        "    async def setxattr(self, inode, name, value, ctx):\n"
        "        await asyncio.sleep(0.01)   # a handler that really suspends\n"
        "        pyfuse3.terminate()\n"
        "pyfuse3.init(FS(), sys.argv[1], set(pyfuse3.default_options))\n"
        "asyncio.run(pyfuse3.main())\n"
        "pyfuse3.close()\n"
        "print('closed')\n")
    mnt = tmp_path / "mnt"
    srv = start_script([*SHIM, str(script), str(mnt)], mnt, tmp_path)
    try:
        os.setxattr(mnt, "user.command", b"terminate")
        srv.proc.wait(timeout=30)
        assert srv.proc.returncode == 0, srv.stderr()
        assert not conftest.is_fuse_mounted(mnt)
    finally:
        srv.close()


_ = Iterator
