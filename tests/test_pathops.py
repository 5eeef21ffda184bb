"""The path API: table consistency through the emulator, then a real mount of
examples/mirror.py used with ordinary tools (renames of non-empty directories
with files open below them, open-unlink, rename over an open file)."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import conftest
import pytest
import test_differential as differential
from hypothesis import HealthCheck, given, settings
from script_mount import start_script

from fusewire import EntryAttributes, FUSEError, PathAdapter, PathOperations
from fusewire.testing.emulator import KernelEmulator

MIRROR = conftest.REPO_ROOT / "examples" / "mirror.py"
_spec = importlib.util.spec_from_file_location("fusewire_example_mirror", MIRROR)
assert _spec is not None and _spec.loader is not None
mirror = importlib.util.module_from_spec(_spec)
sys.modules["fusewire_example_mirror"] = mirror
_spec.loader.exec_module(mirror)


class DictFS(PathOperations):
    """A tiny in-memory path filesystem: files are bytes, directories are sets."""

    def __init__(self) -> None:
        self.files: dict[str, bytearray] = {}
        self.dirs: set[str] = {"/"}
        self.calls: list[tuple[str, str]] = []

    def getattr(self, path: str, fh: int | None = None) -> EntryAttributes:
        self.calls.append(("getattr", path))
        if path in self.dirs:
            return EntryAttributes(st_mode=0o40755, st_nlink=2)
        if path in self.files:
            return EntryAttributes(st_mode=0o100644, st_size=len(self.files[path]))
        raise FUSEError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [p[len(prefix):] for p in [*self.dirs, *self.files]
                if p.startswith(prefix) and "/" not in p[len(prefix):] and p != prefix]

    def mkdir(self, path: str, mode: int) -> None:
        self.dirs.add(path)

    def create(self, path: str, mode: int, flags: int) -> int:
        self.files[path] = bytearray()
        return 7

    def open(self, path: str, flags: int) -> int:
        self.calls.append(("open", path))
        return 8

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self.calls.append(("read", path))
        return bytes(self.files[path][offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self.calls.append(("write", path))
        f = self.files[path]
        f[offset:offset + len(data)] = data
        return len(data)

    def unlink(self, path: str) -> None:
        del self.files[path]

    def rmdir(self, path: str) -> None:
        self.dirs.remove(path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        for table in (self.files, ):
            for p in [p for p in table if p == old or p.startswith(old + "/")]:
                table[new + p[len(old):]] = table.pop(p)
        for p in [p for p in self.dirs if p == old or p.startswith(old + "/")]:
            self.dirs.remove(p)
            self.dirs.add(new + p[len(old):])


def test_renamed_directory_children_follow() -> None:
    fs = DictFS()
    adapter = PathAdapter(fs)
    e = KernelEmulator(adapter)
    e.mkdir("/a")
    e.mkdir("/a/b")
    h = e.create("/a/b/f")
    e.write(h, b"data")
    ino = e.lookup("/a/b/f")
    e.rename("/a", "/x")
    fs.calls.clear()
    e.write(h, b"DATA", 0)                  # through the handle, after the rename
    assert fs.calls == [("write", "/x/b/f")]
    assert e.read(h, 10, 0) == b"DATA"
    e.close(h)
    assert e.lookup("/x/b/f") == ino        # same node, new path
    assert adapter._spath(ino) == "/x/b/f"
    with pytest.raises(OSError) as info:
        e.stat("/a/b/f")
    assert info.value.errno == errno.ENOENT


def test_open_unlink_hides_then_removes() -> None:
    fs = DictFS()
    e = KernelEmulator(PathAdapter(fs))
    h = e.create("/f")
    e.write(h, b"still here")
    e.unlink("/f")
    hidden = [p for p in fs.files if p.startswith("/.fuse_hidden")]
    assert len(hidden) == 1                     # kept under a hidden name
    assert e.readdir("/") == []                 # ...that nobody sees
    assert e.read(h, 100, 0) == b"still here"
    assert e.fstat(h).nlink == 0
    e.close(h)
    assert fs.files == {}                       # removed at release


def test_forget_drops_nodes() -> None:
    fs = DictFS()
    adapter = PathAdapter(fs)
    e = KernelEmulator(adapter)
    e.mkdir("/d")
    for i in range(5):
        e.close(e.create(f"/d/f{i}"))
    assert len(adapter._nodes) == 7             # root, d, 5 files
    e.evict_all()
    assert set(adapter._nodes) == {1}
    assert adapter._children == {}


def test_errors_and_unimplemented() -> None:
    class Bare(PathOperations):
        def getattr(self, path: str, fh: int | None = None) -> os.stat_result:
            if path == "/":
                return os.stat("/")
            raise FileNotFoundError(errno.ENOENT, path)   # OSError -> its errno

    e = KernelEmulator(PathAdapter(Bare()))
    with pytest.raises(OSError) as info:
        e.stat("/nope")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        e.mkdir("/d")
    assert info.value.errno == errno.ENOSYS


def test_surrogateescape_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    raw = b"caf\xe9"                            # not UTF-8
    (src / os.fsdecode(raw)).write_bytes(b"x")
    e = KernelEmulator(PathAdapter(mirror.Mirror(str(src))))
    assert e.readdir("/") == [raw]
    assert e.stat(b"/" + raw).size == 1


# -- a real mount ------------------------------------------------------------------------


@pytest.fixture
def mirrored(tmp_path: Path, tmpfs_factory: Any) -> Any:
    src = tmpfs_factory()
    srv = start_script([str(MIRROR), str(src), str(tmp_path / "mnt"), "-o",
                        conftest.MOUNT_OPTIONS], tmp_path / "mnt", tmp_path)
    try:
        yield src, srv.mountpoint
    finally:
        srv.close()


def _eventually(cond: Any, timeout: float = 10.0) -> bool:
    """RELEASE is asynchronous: poll ``cond`` until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def _run(*argv: str, cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.mark.fuse
def test_mirror_with_ordinary_tools(mirrored: Any) -> None:
    src, mnt = mirrored
    _run("mkdir", "-p", "a/b/c", cwd=mnt)
    _run("sh", "-c", "echo hello > a/b/c/f && cp a/b/c/f a/g", cwd=mnt)
    fd = os.open(mnt / "a/b/c/f", os.O_RDWR)
    try:
        os.stat(mnt / "a/b/c/f")
        _run("mv", "a", "z", cwd=mnt)               # a non-empty tree, a file open inside
        os.pwrite(fd, b"HELLO", 0)
        os.fchmod(fd, 0o600)
        assert (src / "z/b/c/f").read_bytes() == b"HELLO\n"
        assert (src / "z/b/c/f").stat().st_mode & 0o777 == 0o600
        assert _run("cat", "z/b/c/f", cwd=mnt) == "HELLO\n"
        assert sorted(_run("ls", "z", cwd=mnt).split()) == ["b", "g"]
        assert not (mnt / "a").exists()
        _run("mv", "z/b", "b2", cwd=mnt)            # and again, one level down
        os.fsync(fd)
        os.ftruncate(fd, 2)
        assert (src / "b2/c/f").read_bytes() == b"HE"
        _run("rm", "-r", "b2", cwd=mnt)             # open-unlink through rm
        assert os.pread(fd, 10, 0) == b"HE"
        assert os.fstat(fd).st_nlink == 0
        assert _run("ls", "-a", cwd=mnt).split() == [".", "..", "z"]
    finally:
        os.close(fd)
    assert _eventually(lambda: not [p for p in src.rglob("*")
                                    if p.name.startswith(".fuse_hidden")])
    assert _run("stat", "-c", "%s", "z/g", cwd=mnt).strip() == "6"


@pytest.mark.fuse
def test_rename_over_open_file(mirrored: Any) -> None:
    src, mnt = mirrored
    (mnt / "old").write_bytes(b"old contents")
    (mnt / "new").write_bytes(b"new contents")
    with open(mnt / "old", "rb") as f:
        os.rename(mnt / "new", mnt / "old")         # replaces a file that is open
        assert f.read() == b"old contents"
        assert (mnt / "old").read_bytes() == b"new contents"
        assert sorted(os.listdir(mnt)) == ["old"]
    assert _eventually(lambda: sorted(os.listdir(src)) == ["old"])


@pytest.mark.fuse
def test_cli_mounts_a_path_filesystem(fuse_server_factory: Any, tmp_path: Path) -> None:
    srv = fuse_server_factory(["pathfs_cli:Greeting"], tmp_path / "mnt",
                              pythonpath=[str(Path(__file__).with_name("compat_fs"))])
    mnt = srv.mountpoint
    assert os.listdir(mnt) == ["greeting"]
    assert (mnt / "greeting").read_bytes() == b"greetings from a path filesystem\n"


_DIFF_SETTINGS = dict(max_examples=int(os.environ.get("FUSEWIRE_DIFF_EXAMPLES", "50")),
                      deadline=None, suppress_health_check=list(HealthCheck))


@settings(**_DIFF_SETTINGS)  # type: ignore[arg-type]
@given(ops=differential.OPS)
def test_path_layer_matches_host(ops: list[tuple[Any, ...]]) -> None:
    """Random namespace operations through the emulator (which caches dentries, so
    a stale path below a renamed directory shows) on the mirror, and on a directory."""
    old = os.umask(0o022)
    root = tempfile.mkdtemp(prefix="fusewire-pathdiff-")
    src = tempfile.mkdtemp(prefix="fusewire-pathsrc-")
    try:
        e = KernelEmulator(PathAdapter(mirror.Mirror(src)), umask=0o022)
        for op in ops:
            host, emu = differential._host(root, op), differential._emu(e, op)
            if op[0] == "write" and host[0] == "err" and emu[0] == "err":
                continue
            assert host == emu, (op, host, emu)
    finally:
        os.umask(old)
        shutil.rmtree(root)
        shutil.rmtree(src)


def test_async_path_filesystem_gets_async_faces() -> None:
    """``async def`` methods make the adapter's request methods coroutines (for a server
    that runs coroutine handlers); what the filesystem lacks stays unimplemented."""
    import asyncio
    import inspect

    from fusewire import Operations, RequestContext

    class Slow(PathOperations):
        async def getattr(self, path: str, fh: int | None = None) -> EntryAttributes:
            await asyncio.sleep(0)
            if path in ("/", "/d"):
                return EntryAttributes(st_mode=0o40755, st_nlink=2)
            if path == "/f":
                return EntryAttributes(st_mode=0o100644, st_size=5)
            raise FUSEError(errno.ENOENT)

        async def readdir(self, path: str, fh: int) -> Any:
            for name in ("d", "f"):
                await asyncio.sleep(0)
                yield name

        async def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            await asyncio.sleep(0)
            return b"hello"[offset:offset + size]

    adapter = PathAdapter(Slow())
    cls = type(adapter)
    assert inspect.iscoroutinefunction(cls.lookup) and inspect.iscoroutinefunction(cls.read)
    assert cls.create is Operations.create and cls.getxattr is Operations.getxattr
    assert isinstance(adapter, PathAdapter)
    ctx = RequestContext()

    async def scenario() -> tuple[int, bytes, list[bytes]]:
        attr = await adapter.lookup(1, b"f", ctx)
        fh = (await adapter.open(attr.st_ino, os.O_RDONLY, ctx)).fh
        data = await adapter.read(fh, 1, 3)
        dfh = await adapter.opendir(1, ctx)
        d = adapter._dirs[dfh]
        names = [n for n, _ in await adapter._list(d)]
        return attr.st_size, data, names

    assert asyncio.run(scenario()) == (5, b"ell", [b".", b"..", b"d", b"f"])

    sync = PathAdapter(DictFS())
    assert not inspect.iscoroutinefunction(type(sync).lookup)
    assert type(sync).getxattr is Operations.getxattr       # DictFS has no xattrs


def test_failed_rename_over_open_file_keeps_the_target() -> None:
    class Refusing(DictFS):
        def rename(self, old: str, new: str, flags: int = 0) -> None:
            if old == "/src":
                raise PermissionError(errno.EPERM, old)
            super().rename(old, new, flags)

    fs = Refusing()
    e = KernelEmulator(PathAdapter(fs))
    e.close(e.create("/src"))
    h = e.create("/dst")
    e.write(h, b"kept")
    with pytest.raises(OSError) as info:
        e.rename("/src", "/dst")
    assert info.value.errno == errno.EPERM
    assert sorted(fs.files) == ["/dst", "/src"]        # not left under a hidden name
    assert e.read(h, 10, 0) == b"kept"
    e.close(h)
    assert sorted(fs.files) == ["/dst", "/src"]


def test_open_unlink_without_rename_unlinks() -> None:
    class NoRename(DictFS):
        rename = PathOperations.rename              # not implemented

    fs = NoRename()
    e = KernelEmulator(PathAdapter(fs))
    h = e.create("/f")
    e.unlink("/f")                                  # cannot hide it: a plain unlink
    assert fs.files == {}
    e.close(h)


@pytest.mark.fuse
def test_async_path_filesystem_on_a_mount(tmp_path: Path) -> None:
    """With a server that runs coroutine handlers, other requests are answered while
    an ``async def`` read awaits."""
    import threading

    import fusewire.types

    if not hasattr(fusewire.types, "Pending"):
        pytest.skip("this server does not run async handlers yet (the serving core, issue 11)")
    mnt = tmp_path / "mnt"
    srv = start_script([str(Path(__file__).with_name("compat_fs") / "async_path.py"), str(mnt)],
                       mnt, tmp_path)
    try:
        done: dict[str, Any] = {}
        t0 = time.monotonic()

        def slow() -> None:
            done["slow"] = (mnt / "slow").read_text()
            done["t_slow"] = time.monotonic() - t0

        reader = threading.Thread(target=slow)
        reader.start()
        assert sorted(os.listdir(mnt)) == ["fast", "slow"]
        assert (mnt / "fast").read_text() == "data\n"
        t_fast = time.monotonic() - t0
        reader.join(30)
        assert done["slow"] == "data\n"
        assert t_fast < 1.5 <= done["t_slow"]
    finally:
        srv.close()


def test_reused_inode_number_is_a_new_node() -> None:
    """use_ino: a new file that gets the st_ino of a deleted one the kernel still
    holds is a different object (a new nodeid), not a hard link of the dead one."""
    class Reusing(DictFS):
        use_ino = True
        hard_remove = True                            # unlinked at once, though open

        def getattr(self, path: str, fh: int | None = None) -> EntryAttributes:
            a = super().getattr(path, fh)
            a.st_ino = 100 if path != "/" else 1      # every file gets inode 100
            return a

    adapter = PathAdapter(Reusing())
    e = KernelEmulator(adapter)
    h = e.create("/a")                              # open: the node stays in the table
    old = e.lookup("/a")
    e.unlink("/a")
    e.close(e.create("/b"))
    new = e.lookup("/b")
    assert new != old
    assert adapter._spath(new) == "/b"
    e.close(h)
