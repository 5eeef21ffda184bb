"""Multi-process serving (``--processes N``) on real mounts.

passthrough served by two processes: several client processes build, stat,
read, write, rename and unlink trees at the same time; a descriptor held
across hundreds of requests is served by both processes (each takes the
other's open file over); an unlinked open file stays usable; every serving
process ends on unmount, on SIGTERM, and the mount survives a killed child.
memfs is refused with one line.  The POSIX differential suite runs the same
configuration (tests/test_posix.py, ``passthrough-2proc``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import conftest
import pytest

from fusewire.testing.procs import children

pytestmark = pytest.mark.fuse
O_PATH = 0o10000000

CLIENT = textwrap.dedent("""
    import os, sys
    root, tag = sys.argv[1], sys.argv[2]
    base = os.path.join(root, tag)
    os.makedirs(os.path.join(base, "a", "b"))
    for i in range(40):
        p = os.path.join(base, "a", "b", f"f{i}")
        with open(p, "wb") as f:
            f.write(f"{tag}-{i}".encode() * 50)
        assert os.stat(p).st_size == len(f"{tag}-{i}") * 50, p
    for i in range(40):
        p = os.path.join(base, "a", "b", f"f{i}")
        with open(p, "rb") as f:
            assert f.read() == f"{tag}-{i}".encode() * 50, p
        os.rename(p, os.path.join(base, "a", f"g{i}"))
    names = sorted(os.listdir(os.path.join(base, "a")))
    assert names == sorted(["b"] + [f"g{i}" for i in range(40)]), names
    for i in range(0, 40, 2):
        os.unlink(os.path.join(base, "a", f"g{i}"))
    print(len(os.listdir(os.path.join(base, "a"))))
""")


def _tree(pid: int) -> set[int]:
    return {pid} | children(pid)


def _wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """The pids still alive after waiting up to ``timeout`` for them to end."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if os.path.exists(f"/proc/{p}")
                 and not _zombie(p)}
        if alive:
            time.sleep(0.05)
    return alive


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _holders(pids: set[int], target: str) -> set[int]:
    """Which of ``pids`` have ``target`` open (O_PATH node descriptors do not count)."""
    out = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith(target):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    flags = next(int(ln.split()[1], 8) for ln in f if ln.startswith("flags:"))
                if not flags & O_PATH:
                    out.add(pid)
            except OSError:
                continue
    return out


@pytest.fixture
def mp_mount(tmp_path: Path, passthrough_source: Path) -> Iterator[conftest.FuseServer]:
    """passthrough of a private tmpfs, served by 2 processes."""
    if not conftest.IS_ROOT:
        pytest.skip("multi-process passthrough needs root (open_by_handle_at, pidfd_getfd)")
    srv = conftest.start_server(["--processes", "2", "passthrough", str(passthrough_source)],
                                tmp_path / "mnt", tmp_path)
    started = children(srv.proc.pid)
    try:
        yield srv
    finally:
        started |= children(srv.proc.pid)
        srv.close()
        left = _wait_gone(started)
        for pid in left:            # only ever ours: children of the server we started
            os.kill(pid, signal.SIGKILL)
        assert not left, f"serving processes {left} outlived their parent"


def _serving(srv: conftest.FuseServer) -> set[int]:
    """The serving processes: the children of the supervising parent."""
    pids = children(srv.proc.pid)
    assert len(pids) == 2, f"expected two serving children, got {pids}"
    return pids


def test_concurrent_clients(mp_mount: conftest.FuseServer, passthrough_source: Path) -> None:
    root = mp_mount.mountpoint
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, str(root), f"c{k}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        assert out.split() == [b"21"]
    for k in range(4):
        a = passthrough_source / f"c{k}" / "a"
        assert sorted(os.listdir(a)) == sorted(["b"] + [f"g{i}" for i in range(1, 40, 2)])
        assert (a / "g1").read_bytes() == f"c{k}-1".encode() * 50
        assert os.listdir(a / "b") == []
    assert mp_mount.proc.poll() is None
    _serving(mp_mount)


def test_open_file_served_by_every_process(mp_mount: conftest.FuseServer,
                                           passthrough_source: Path) -> None:
    pids = _serving(mp_mount)
    path = mp_mount.mountpoint / "held"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for i in range(300):
            assert os.pwrite(fd, b"%08d" % i, 8 * i) == 8
            assert os.pread(fd, 8, 8 * i) == b"%08d" % i
            assert os.fstat(fd).st_size == 8 * (i + 1)
        os.fsync(fd)
        # the kernel hands requests to whichever process waits: both took the file over
        assert _holders(pids, str(passthrough_source / "held")) == pids
    finally:
        os.close(fd)
    assert (passthrough_source / "held").read_bytes() == b"".join(
        b"%08d" % i for i in range(300))
    # RELEASE landed in one process; the other, idle, drops its copy by itself
    # (its sweeper thread sees the release counter move)
    deadline = time.monotonic() + 10
    while _holders(pids, str(passthrough_source / "held")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _holders(pids, str(passthrough_source / "held"))


def test_mixed_workload(mp_mount: conftest.FuseServer, passthrough_source: Path,
                        tmp_path: Path) -> None:
    """The recovery soak's mixed workload (3 clients: a cwd inside the mount, O_APPEND
    logs, a shared held descriptor, a bind mount), on 2 serving processes."""
    from test_recovery import WORKER

    root = mp_mount.mountpoint
    shared = root / "shared"
    shared.mkdir()
    (shared / "marker").write_text("bound")
    (root / "held").write_bytes(b"0".ljust(16))
    bind = tmp_path / "bind"
    bind.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(bind)], check=True)
    stop = tmp_path / "stop"
    procs = []
    try:
        for i in range(3):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(root), str(bind), str(i), str(stop),
                 str(root / "held")], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        # run until every client has appended 100 records to its log (progress, not time)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                (passthrough_source / f"w{i}" / "log").exists()
                and (passthrough_source / f"w{i}" / "log").stat().st_size > 400
                for i in range(3)):
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        stop.write_text("")
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
            results.append(json.loads(out))
    finally:
        stop.write_text("")
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", str(bind)], check=False)
    errors = [e for r in results for e in r["errors"]]
    assert not errors, errors
    assert sum(r["ops"] for r in results) > 300, results
    assert mp_mount.proc.poll() is None


CHURN = textwrap.dedent("""
    import os, sys
    root, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    held = {}
    for n in range(rounds):
        name = os.path.join(root, f"{tag}-{n % 7}")
        data = f"{tag}:{n}:".encode() * (1 + n % 50)
        fd = os.open(name, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        os.write(fd, data)
        os.close(fd)
        held[n % 3] = held.get(n % 3) or os.open(name, os.O_RDONLY)
        fd = os.open(name, os.O_RDONLY)
        got = os.read(fd, len(data) + 10)
        os.close(fd)
        assert got == data, (name, n, got[:40], data[:40])
        if n % 5 == 0:
            os.fstat(held[n % 3])
            os.close(held.pop(n % 3))
        if n % 11 == 0:
            os.rename(name, name + ".r")
            os.unlink(name + ".r")
    print("ok")
""")


@pytest.mark.slow
def test_handle_churn(mp_mount: conftest.FuseServer) -> None:
    """Thousands of opens and releases from 4 clients at once: a number is never
    reused while another process still holds the old file (each read is checked)."""
    rounds = int(os.environ.get("FUSEWIRE_CHURN_ROUNDS", "1000"))
    procs = [subprocess.Popen([sys.executable, "-c", CHURN, str(mp_mount.mountpoint),
                               f"c{k}", str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
        assert out.strip() == b"ok"
    assert "Traceback" not in mp_mount.stderr()


def test_unlinked_open_file(mp_mount: conftest.FuseServer) -> None:
    path = mp_mount.mountpoint / "gone"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"still here")
        os.unlink(path)
        for _ in range(100):
            assert os.fstat(fd).st_size == 10
            assert os.pread(fd, 100, 0) == b"still here"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert not path.exists()


def test_every_process_ends_on_unmount(mp_mount: conftest.FuseServer) -> None:
    pids = _serving(mp_mount) | {mp_mount.proc.pid}
    (mp_mount.mountpoint / "f").write_text("x")
    subprocess.run([sys.executable, "-m", "fusewire", "umount", str(mp_mount.mountpoint)],
                   check=True, env=conftest.server_env())
    assert mp_mount.proc.wait(10) == 0
    assert _wait_gone(pids) == set()
    assert not conftest.is_fuse_mounted(mp_mount.mountpoint)


def test_every_process_ends_on_sigterm(mp_mount: conftest.FuseServer) -> None:
    pids = _serving(mp_mount) | {mp_mount.proc.pid}
    mp_mount.proc.send_signal(signal.SIGTERM)
    assert mp_mount.proc.wait(10) == 0
    assert _wait_gone(pids) == set()
    assert not conftest.is_fuse_mounted(mp_mount.mountpoint)


def test_children_end_when_the_parent_is_killed(mp_mount: conftest.FuseServer) -> None:
    kids = _serving(mp_mount)
    mp_mount.proc.kill()
    mp_mount.proc.wait(10)
    assert _wait_gone(kids) == set()        # PR_SET_PDEATHSIG: nothing keeps serving
    # the connection is gone with its last fd: the mount answers ENOTCONN until unmounted
    with pytest.raises(OSError):
        os.listdir(mp_mount.mountpoint)


def test_processes_auto(tmp_path: Path, passthrough_source: Path) -> None:
    if not conftest.IS_ROOT:
        pytest.skip("multi-process passthrough needs root")
    srv = conftest.start_server(["--processes", "auto", "passthrough", str(passthrough_source)],
                                tmp_path / "mnt", tmp_path)
    try:
        assert len(children(srv.proc.pid)) == len(os.sched_getaffinity(0))
        (srv.mountpoint / "f").write_text("auto")
        assert (passthrough_source / "f").read_text() == "auto"
    finally:
        srv.close()


def test_killed_child_is_reported_and_restarted(mp_mount: conftest.FuseServer,
                                                passthrough_source: Path) -> None:
    parent = mp_mount.proc.pid
    child, other = sorted(_serving(mp_mount))
    held = os.open(mp_mount.mountpoint / "held", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.kill(child, signal.SIGKILL)
        assert _wait_gone({child}) == set()
        deadline = time.monotonic() + 10
        while "restarted" not in mp_mount.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [ln for ln in mp_mount.stderr().splitlines() if "died" in ln]
        assert len(lines) == 1 and f"pid {child}" in lines[0] and "SIGKILL" in lines[0]
        (new,) = children(parent) - {other}
        assert new != child
        assert f"restarted as pid {new}" in lines[0]
        # the new process serves too: files opened before and after the restart
        for i in range(200):
            assert os.pwrite(held, b"%04d" % i, 4 * i) == 4
            (mp_mount.mountpoint / f"after{i % 20}").write_text(str(i))
            assert (mp_mount.mountpoint / f"after{i % 20}").read_text() == str(i)
        assert _holders({other, new}, str(passthrough_source / "held")) == {other, new}
    finally:
        os.close(held)
    assert (passthrough_source / "held").read_bytes() == b"".join(
        b"%04d" % i for i in range(200))
    assert "Traceback" not in mp_mount.stderr()


def _mount_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusewire", "mount", *argv],
                          capture_output=True, text=True, timeout=60, env=conftest.server_env(),
                          cwd="/")


@pytest.mark.parametrize("argv", [
    lambda src, mnt: ["memfs", mnt, "--processes", "2", "-f"],
    lambda src, mnt: ["passthrough", src, mnt, "--processes", "two", "-f"],
    lambda src, mnt: ["passthrough", src, mnt, "--processes", "2", "--workers", "2", "-f"],
    # --recoverable --processes works for passthrough (tests/test_processes_recovery.py)
    lambda src, mnt: ["memfs", mnt, "--processes", "2", "--recoverable"],
    lambda src, mnt: ["passthrough", src, mnt, "--processes", "2", "-o", "kernel_passthrough",
                      "-f"],
], ids=["memfs", "not-a-number", "with-workers", "memfs-recoverable",
         "with-kernel-passthrough"])
def test_refused_with_one_line(tmp_path: Path, passthrough_source: Path,
                               argv: Callable[[str, str], list[str]]) -> None:
    problem = conftest.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _mount_cli(*argv(str(passthrough_source), str(mnt)))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusewire: "), r.stderr
    assert "--processes" in lines[0] or "multiprocess_safe" in lines[0]
    assert not conftest.is_fuse_mounted(mnt)


# -- the shared table, in one process ------------------------------------------------


def test_nodes_trimmed_and_revived_from_the_log(tmpfs_dir: Path) -> None:
    """Idle node descriptors are trimmed (LOOKUP, FORGET); any node comes back by handle."""
    if not conftest.IS_ROOT:
        pytest.skip("open_by_handle_at needs CAP_DAC_READ_SEARCH")
    from fusewire.examples.passthrough import Passthrough
    from fusewire.server.processes import SharedTable
    from fusewire.types import FUSEError, RequestContext

    ctx = RequestContext(uid=0, gid=0, pid=1, umask=0o022)
    for i in range(20):
        (tmpfs_dir / f"f{i}").write_text(str(i))
    ops = Passthrough(str(tmpfs_dir))
    ops.check_multiprocess()
    ops.node_cache = 8
    table = SharedTable()
    ops.attach_shared(table)
    try:
        ids = [ops.lookup(1, f"f{i}".encode(), ctx).st_ino for i in range(20)]
        assert ids == [os.stat(tmpfs_dir / f"f{i}").st_ino for i in range(20)]
        assert len(ops._nodes) <= 9         # trimmed at the start of each LOOKUP
        ops.forget([])                      # and after any FORGET
        assert len(ops._nodes) <= 8
        for i, nodeid in enumerate(ids):    # every id still resolves: revived by handle
            assert ops.getattr(nodeid, ctx).st_size == len(str(i))
        fi = ops.open(ids[3], os.O_RDONLY, ctx)
        assert fi.fh >= table.slot_base
        ops.forget([(ids[3], 1)])
        assert ops.read(fi.fh, 0, 10) == b"3"  # an open file keeps working
        ops.release(fi.fh)
        with pytest.raises(FUSEError):
            ops.read(fi.fh, 0, 10)
        assert table.slot(fi.fh)[0] == 0     # the number is free again
    finally:
        ops.destroy()
        table.close()


def test_shared_node_index() -> None:
    """The node log's indexes: lookups by nodeid and by key, republishing, allocation."""
    from fusewire.server.processes import SharedTable

    table = SharedTable()
    try:
        for ino in range(2, 5002):
            assert table.publish_node((5, ino), ino, b"h%d" % ino) == ino
        assert table.node_handle(777) == b"h777"
        assert table.known_key((5, 777)) == 777
        assert table.known((5, 777), b"h777") and not table.known((5, 777), b"other")
        # the same key with another handle (an inode number reused): newest record wins
        assert table.publish_node((5, 777), 777, b"new") == 777
        assert table.node_handle(777) == b"new" and table.known((5, 777), b"new")
        # ids of other devices come from the shared counter, once per key
        first = table.publish_node((6, 1), None, b"x")
        assert first == 1 << 63 and table.publish_node((6, 1), None, b"x") == first
        assert table.publish_node((6, 2), None, b"y") == first + 1
        assert table.node_handle(first) == b"x" and table.node_handle(123456789) is None
        # a dead process's holder bits go, and released numbers it held become free
        fh = table.claim(42, 0o100000, os.O_RDONLY, lambda n: True)
        table.become(3)
        assert table.hold(fh) == (0, 42, 0o100000, os.O_RDONLY)
        table.become(0)
        assert table.release(fh) == -1
        assert table.slot(fh)[:3] == (2, 0, 1 << 3)     # RELEASED, process 3 still holds it
        table.forget_process(3)
        assert table.slot(fh)[0] == 0                   # FREE
    finally:
        table.close()


def test_node_revived_for_a_non_root_caller(tmpfs_dir: Path) -> None:
    """A process that has not seen a node revives it by handle even while it acts as
    a non-root caller (which has dropped CAP_DAC_READ_SEARCH): no ESTALE.

    Regression: chmod of a file another process created, by its non-root owner,
    failed with ESTALE about half the time on ``passthrough-2proc`` (whichever
    process the kernel happened to pick).
    """
    if not conftest.IS_ROOT:
        pytest.skip("open_by_handle_at needs CAP_DAC_READ_SEARCH")
    from fusewire.examples.passthrough import Passthrough
    from fusewire.server.processes import SharedTable
    from fusewire.types import RequestContext

    root = RequestContext(uid=0, gid=0, pid=1, umask=0o022)
    nobody = RequestContext(uid=65534, gid=65534, pid=1, umask=0o022)
    (tmpfs_dir / "d").mkdir(mode=0o755)
    (tmpfs_dir / "d" / "f").write_text("x")
    (tmpfs_dir / "d" / "f").chmod(0o644)
    first, second = Passthrough(str(tmpfs_dir)), Passthrough(str(tmpfs_dir))
    first.check_multiprocess()
    table = SharedTable()
    first.attach_shared(table)
    second.attach_shared(table)
    try:
        if not second._identity.enabled:
            pytest.skip("this machine cannot switch a thread's credentials")
        dir_id = first.lookup(1, b"d", root).st_ino      # published by the first only
        entry = second.lookup(dir_id, b"f", nobody)     # the second revives "d" as nobody
        assert entry.st_ino == os.stat(tmpfs_dir / "d" / "f").st_ino
        assert second.getattr(dir_id, nobody).st_mode & 0o777 == 0o755
    finally:
        first.destroy()
        second.destroy()
        table.close()


def test_shared_table_outlives_its_processes() -> None:
    """Recovery building block: a table whose serving processes were all SIGKILLed,
    adopted from its memfd, gives back the node log and the handles still open
    (to be reopened at the same numbers); released numbers become free."""
    import signal

    from fusewire.server.processes import FREE, OPEN, SharedTable

    table = SharedTable()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:                        # a serving process: publishes, opens, releases
        try:
            table.become(2)
            for ino in range(2, 50):
                table.publish_node((9, ino), ino, b"h%d" % ino)
            keep = table.claim(7, 0o100000, os.O_RDWR | os.O_APPEND, lambda n: True)
            table.set_backing(keep, 5)
            gone = table.claim(8, 0o100000, os.O_RDONLY, lambda n: True)
            table.become(3)
            table.hold(keep)
            table.become(2)
            table.release(gone)
            os.write(ready_w, b"%d %d" % (keep, gone))
            signal.pause()
        finally:
            os._exit(1)
    adopted = None
    try:
        os.close(ready_w)
        keep, gone = (int(x) for x in os.read(ready_r, 100).split())
        os.kill(pid, signal.SIGKILL)
        assert os.waitpid(pid, 0)[1] & 0x7F == signal.SIGKILL
        adopted = SharedTable.adopt(os.dup(table.fileno()))
        assert (adopted.slot_base, adopted.nslots) == (table.slot_base, table.nslots)
        assert adopted.pid_of(2) == pid                  # until the successor clears it
        opens = adopted.orphan_all()
        assert opens == [(keep, 7, 0o100000, os.O_RDWR | os.O_APPEND, 5)]
        assert adopted.slot(keep)[:3] == (OPEN, 0, 0)    # open, nobody holds it
        assert adopted.slot(gone)[0] == FREE
        assert adopted.pid_of(2) == 0 and adopted.pid_of(0) == os.getpid()
        nodes = adopted.node_records()
        assert len(nodes) == 48 and nodes[17] == ((9, 17), b"h17")
        # the successor allocates on: a new handle never takes the open one's number
        fresh = adopted.claim(9, 0o100000, os.O_RDONLY, lambda n: True)
        assert fresh != keep and table.slot(fresh)[0] == OPEN   # the same memory
        other = os.memfd_create("not-a-table")
        try:
            with pytest.raises(ValueError):
                SharedTable.adopt(other)
        finally:
            os.close(other)
    finally:
        os.close(ready_r)
        if adopted is not None:
            adopted.close()
        table.close()


def test_a_stop_signal_inside_stop_does_not_deadlock(tmp_path: Path) -> None:
    """A stop signal whose handler runs while this thread is already inside
    ``Server.stop`` (holding the stop event's non-reentrant lock) must not wait for
    that lock: it happened to a serving process given SIGTERM twice (parent death
    and a stop) and left it hung, the mount with it.  Run in a child process so a
    regression cannot hang the test run."""
    code = textwrap.dedent("""
        import signal, sys, threading
        from fusewire.examples.memfs import MemFS
        from fusewire.server import Server

        class Event(threading.Event):
            def set(self):
                with self._cond:
                    self._flag = True
                    signal.raise_signal(signal.SIGUSR1)   # handler runs here, lock held
                    self._cond.notify_all()

        server = Server(MemFS(), sys.argv[1], "fsname=t")
        server._stop = Event()
        signal.signal(signal.SIGUSR1, lambda s, f: server.stop())
        server.stop()
        assert server._stop.is_set()
        server.close(unmount=False)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
