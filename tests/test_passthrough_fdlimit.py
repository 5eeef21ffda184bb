"""Passthrough serves a tree with more nodes than its descriptor limit (issue 13).

Nodes keep the source's file handles and open their descriptors lazily through
a bounded cache (fusewire/examples/passthrough_fdcache.py).  The default run
lowers the server's RLIMIT_NOFILE to 1024 and walks a 3,000-file tree: every
file is stat'ed, opened and read through a real mount, and the node
descriptors the server holds stay within the cache's limit.  The full
100,000-file case is ``@pytest.mark.slow`` (and bench/fdlimit.py measures it).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import conftest
import pytest

from fusewire.examples.passthrough import Passthrough
from fusewire.recovery import commands
from fusewire.server import mount as fm
from fusewire.server.loop import Server, serve_in_thread
from fusewire.testing.procs import children, unmount_and_kill

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(os.geteuid() != 0,
                                 reason="reopening nodes by handle needs CAP_DAC_READ_SEARCH")]

LIMIT = 1024


@pytest.fixture
def low_nofile() -> Iterator[int]:
    """This process's soft RLIMIT_NOFILE at ``LIMIT`` (server and client share it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
    try:
        yield LIMIT
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _make_tree(src: Path, count: int) -> None:
    per_dir = 1000
    for i in range(count):
        d = src / f"d{i // per_dir}"
        if i % per_dir == 0:
            d.mkdir()
        (d / f"f{i}").write_bytes(b"%d\n" % i)


def _walk(src: Path, mnt: Path, count: int, limit: int) -> Passthrough:
    fs = Passthrough(str(src))
    assert fs._fdcache is not None, "no descriptor cache: source without file handles?"
    assert fs._fdcache.limit <= limit // 4
    server = Server(fs, str(mnt))
    thread = serve_in_thread(server)
    dog = threading.Timer(conftest.WATCHDOG * 4, lambda: fm.abort_connection(str(mnt)))
    dog.daemon = True
    dog.start()
    try:
        per_dir = 1000
        for i in range(count):
            p = mnt / f"d{i // per_dir}" / f"f{i}"
            assert os.stat(p).st_size == len(b"%d\n" % i)
        for i in range(count):
            p = mnt / f"d{i // per_dir}" / f"f{i}"
            fd = os.open(p, os.O_RDONLY)
            try:
                assert os.read(fd, 64) == b"%d\n" % i
            finally:
                os.close(fd)
        held = fs._fdcache.open_count()
        assert held <= fs._fdcache.limit, held
        assert len(os.listdir("/proc/self/fd")) < limit
        assert fs._fdcache.reopened > 0        # descriptors were closed and reopened
        assert len(fs._nodes) > limit          # more nodes known than descriptors allowed
    finally:
        dog.cancel()
        server.stop()
        thread.join(10)
        server.close()
    return fs


def test_tree_larger_than_the_descriptor_limit(tmp_path: Path, tmpfs_dir: Path,
                                               low_nofile: int) -> None:
    if conftest.dev_fuse_problem() is not None:
        pytest.skip(conftest.dev_fuse_problem() or "")
    _make_tree(tmpfs_dir, 3000)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _walk(tmpfs_dir, mnt, 3000, low_nofile)


def _read_all(mnt: Path, count: int) -> None:
    for i in range(count):
        p = mnt / f"d{i // 1000}" / f"f{i}"
        assert os.stat(p).st_size == len(b"%d\n" % i)
        fd = os.open(p, os.O_RDONLY)
        try:
            assert os.read(fd, 64) == b"%d\n" % i
        finally:
            os.close(fd)


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_recoverable_tree_larger_than_the_descriptor_limit(
        tmp_path: Path, tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--recoverable`` with RLIMIT_NOFILE 1024 (soft and hard, so recovery cannot raise
    it): 3,000 files read before and after the server is killed and its successor
    revives the nodes by handle; both servers stay under the limit."""
    if conftest.dev_fuse_problem() is not None:
        pytest.skip(conftest.dev_fuse_problem() or "")
    count = 3000
    _make_tree(tmpfs_dir, count)
    run, mnt = tmp_path / "run", tmp_path / "mnt"
    run.mkdir(mode=0o700)
    mnt.mkdir()
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(run))
    env = dict(os.environ, PYTHONPATH=str(conftest.REPO_ROOT))

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))

    r = subprocess.run([sys.executable, "-m", "fusewire", "mount", "passthrough",
                        str(tmpfs_dir), str(mnt), "--recoverable"], env=env, timeout=60,
                       capture_output=True, text=True, preexec_fn=low)
    pids: set[int] = set()
    st: dict[str, int] = {}
    try:
        assert r.returncode == 0, r.stderr
        st = commands.status(str(mnt))
        pids |= {st["keeper_pid"], st["server_pid"]} | children(st["keeper_pid"])
        _read_all(mnt, count)
        assert _fd_count(st["server_pid"]) < LIMIT
        os.kill(st["server_pid"], signal.SIGKILL)
        st2 = commands.wait_ready(str(mnt), 30.0, after_pid=st["server_pid"])
        assert st2 is not None
        pids |= children(st["keeper_pid"])
        _read_all(mnt, count)
        assert _fd_count(st2["server_pid"]) < LIMIT
    finally:
        if st:
            pids |= children(st["keeper_pid"])
        unmount_and_kill(mnt, pids)


@pytest.mark.slow
def test_hundred_thousand_files_under_the_default_limit(tmp_path: Path,
                                                        tmpfs_dir: Path) -> None:
    if conftest.dev_fuse_problem() is not None:
        pytest.skip(conftest.dev_fuse_problem() or "")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(20000, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        _make_tree(tmpfs_dir, 100_000)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        _walk(tmpfs_dir, mnt, 100_000, limit)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_flush_at_the_descriptor_limit_succeeds(tmp_path: Path) -> None:
    """flush's dup has no descriptor left (EMFILE): the client's close(2) still succeeds."""
    from fusewire.types import RequestContext

    (tmp_path / "f").write_bytes(b"x")
    fs = Passthrough(str(tmp_path))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        ctx = RequestContext(uid=0, gid=0, pid=os.getpid())
        attr = fs.lookup(1, b"f", ctx)
        fh = fs.open(attr.st_ino, os.O_RDONLY, ctx).fh
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        with pytest.raises(OSError) as exc:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        assert exc.value.errno == errno.EMFILE
        fs.flush(fh, 0)                         # no FUSEError(EMFILE)
        for fd in fillers:
            os.close(fd)
        fillers.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        fs.release(fh)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        fs.destroy()
