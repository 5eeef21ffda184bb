"""Real, unmodified programs inside memfs and passthrough mounts.

cp -a / diff -r / ls / stat / find / du, git clone + fsck + commit, tar -x,
SQLite in WAL mode from two processes, and python -m compileall.  Each test
gets a fresh mount served by a separate process (see conftest.py).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import conftest
import pytest

pytestmark = [pytest.mark.fuse, pytest.mark.programs]

REPO_ROOT = conftest.REPO_ROOT
MEMFS_ACL_BUG = ("memfs accepts setxattr('system.posix_acl_access') (cp -a sets modes that "
                 "way) without applying it to the mode: copied files end up 0600 and dirs 0700")


def run(argv: list[str], cwd: Path | str | None = None, check: bool = True,
        env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(argv[0])
    if exe is None:
        pytest.skip(f"{argv[0]} is not installed")
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} (cwd={cwd}) exited {r.returncode}\n"
                    f"--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(params=["memfs", "passthrough"])
def mnt(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_mount")  # type: ignore[no-any-return]


def make_tree(root: Path) -> Path:
    """A small but varied source tree: nesting, modes, symlinks, hard links, sparse, empty."""
    src = root / "tree"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "a" / "hello.txt").write_text("hello\n")
    (src / "a" / "b" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "a" / "b" / "c" / "deep").write_text("deep\n" * 1000)
    (src / "empty").write_bytes(b"")
    (src / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "exec.sh", 0o755)
    os.chmod(src / "a" / "hello.txt", 0o600)
    os.chmod(src / "a" / "b" / "c", 0o700)
    os.symlink("a/hello.txt", src / "link-rel")
    os.symlink("/nonexistent/target", src / "link-dangling")
    os.link(src / "a" / "hello.txt", src / "hardlink")
    with open(src / "sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    for i in range(50):
        (src / "a" / f"file-{i:03d}").write_text(f"{i}\n" * i)
    return src


def listing(root: Path) -> list[str]:
    """find's view of a tree: path, type, mode, size, link target, mtime."""
    r = run(["find", ".", "-printf", "%P|%y|%m|%s|%l|%T@|%n\n"], cwd=root)
    lines = []
    for line in r.stdout.splitlines():
        path, typ, mode, size, target, mtime, nlink = line.split("|")
        if typ == "d":
            size = nlink = "-"  # directory sizes and nlinks are fs-specific
        lines.append("|".join((path, typ, mode, size, target, mtime, nlink)))
    return sorted(lines)


def test_cp_a_diff_ls_stat_find_du(mnt: Path, tmp_path: Path,
                                   request: pytest.FixtureRequest) -> None:
    src = make_tree(tmp_path)
    dst = mnt / "copy"
    run(["cp", "-a", str(src), str(dst)])
    run(["diff", "-r", "--no-dereference", str(src), str(dst)])
    assert listing(dst) == listing(src)
    ls = run(["ls", "-laR", str(dst)]).stdout
    assert "hello.txt" in ls and "link-rel -> a/hello.txt" in ls
    fmt = "%n|%s|%a|%F|%h|%U|%G|%Y"
    names = ["a/hello.txt", "exec.sh", "link-rel", "sparse", "hardlink", "empty"]
    st_src = run(["stat", "-c", fmt, *names], cwd=src).stdout
    st_dst = run(["stat", "-c", fmt, *names], cwd=dst).stdout
    assert st_dst == st_src
    n_src = run(["find", ".", "-type", "f", "-newer", "exec.sh"], cwd=src).stdout
    n_dst = run(["find", ".", "-type", "f", "-newer", "exec.sh"], cwd=dst).stdout
    assert sorted(n_dst.split()) == sorted(n_src.split())
    du = run(["du", "-s", "--block-size=1", str(dst)]).stdout.split()[0]
    apparent = run(["du", "-s", "--apparent-size", "--block-size=1", str(dst)]).stdout.split()[0]
    assert 300_000 <= int(du) < 5 << 20, "du: the sparse file must not count 5 MiB of blocks"
    assert int(apparent) > 5 << 20
    run(["rm", "-rf", str(dst)])
    assert os.listdir(mnt) == []


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fuse Wire", "GIT_AUTHOR_EMAIL": "fw@example.invalid",
    "GIT_COMMITTER_NAME": "Fuse Wire", "GIT_COMMITTER_EMAIL": "fw@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*",
}


def test_git_clone_fsck_commit(mnt: Path, tmp_path: Path) -> None:
    env = {**os.environ, **GIT_ENV}
    origin = tmp_path / "origin"
    origin.mkdir()
    run(["git", "init", "-q", "-b", "main"], cwd=origin, env=env)
    for i in range(3):
        (origin / f"f{i}.txt").write_text(f"version {i}\n" * (i + 1))
        (origin / "sub").mkdir(exist_ok=True)
        (origin / "sub" / "common").write_text(f"common {i}\n")
        run(["git", "add", "-A"], cwd=origin, env=env)
        run(["git", "commit", "-q", "-m", f"commit {i}"], cwd=origin, env=env)
    clone = mnt / "clone"
    run(["git", "clone", "-q", "--no-hardlinks", str(origin), str(clone)], env=env)
    run(["git", "fsck", "--full", "--strict"], cwd=clone, env=env)
    assert run(["git", "status", "--porcelain"], cwd=clone, env=env).stdout == ""
    (clone / "inside.txt").write_text("written inside the mount\n")
    (clone / "f0.txt").unlink()
    run(["git", "add", "-A"], cwd=clone, env=env)
    run(["git", "commit", "-q", "-m", "inside"], cwd=clone, env=env)
    run(["git", "gc", "-q", "--prune=now"], cwd=clone, env=env)
    run(["git", "fsck", "--full", "--strict"], cwd=clone, env=env)
    log = run(["git", "log", "--format=%s"], cwd=clone, env=env).stdout.split("\n")
    assert log[:4] == ["inside", "commit 2", "commit 1", "commit 0"]
    assert run(["git", "status", "--porcelain"], cwd=clone, env=env).stdout == ""


def _seconds(lines: list[str]) -> list[str]:
    """tar's default (gnu) format keeps whole-second mtimes."""
    out = []
    for line in lines:
        f = line.split("|")
        f[5] = f[5].split(".")[0]
        out.append("|".join(f))
    return out


def test_tar_extract_matches_source(mnt: Path, tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    shutil.copytree(REPO_ROOT / "fusewire", src / "pkg",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tarball = tmp_path / "tree.tar"
    run(["tar", "-cf", str(tarball), "-C", str(tmp_path), "tree"])
    run(["tar", "-xpf", str(tarball), "-C", str(mnt)])
    run(["diff", "-r", "--no-dereference", str(src), str(mnt / "tree")])
    assert _seconds(listing(mnt / "tree")) == _seconds(listing(src))
    with tarfile.open(tarball) as tf:
        names = {m.name for m in tf.getmembers()}
    found = set(run(["find", "tree"], cwd=mnt).stdout.split())
    assert found == names


SQLITE_WRITER = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], timeout=30)
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    seen = db.execute("SELECT count(*) FROM t WHERE who = 'parent'").fetchone()[0]
    with db:
        db.executemany("INSERT INTO t (who, n) VALUES ('child', ?)", [(i,) for i in range(500)])
    print(mode, seen)
    db.close()
""")


def test_sqlite_wal_two_processes(mnt: Path) -> None:
    path = mnt / "db.sqlite"
    db = sqlite3.connect(path, timeout=30)
    try:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        with db:
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, n INTEGER)")
            db.executemany("INSERT INTO t (who, n) VALUES ('parent', ?)",
                           [(i,) for i in range(300)])
        # a read transaction stays open while the other process writes
        reader = sqlite3.connect(path, timeout=30)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 300
        r = subprocess.run([sys.executable, "-c", SQLITE_WRITER, str(path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["wal", "300"]
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 300  # snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 800
        reader.close()
        assert db.execute("SELECT count(*), sum(n) FROM t WHERE who='child'").fetchone() == \
            (500, sum(range(500)))
        assert (mnt / "db.sqlite-wal").exists()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    # reopen cold from yet another process
    r = subprocess.run([sys.executable, "-c",
                        "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]);"
                        "print(d.execute('select count(*) from t').fetchone()[0])", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "800", r.stderr


LOCKF_CHILD = ("import fcntl, os, sys\n"
               "fd = os.open(sys.argv[1], os.O_RDWR)\n"
               "fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)\n"
               "print('lockf-ok', flush=True)\n")


def _blocked_lock_waiters() -> set[int]:
    """Pids /proc/locks shows waiting for a lock ("->" lines)."""
    with open("/proc/locks") as f:
        return {int(fields[5]) for fields in (line.split() for line in f)
                if len(fields) > 5 and fields[1] == "->"}


def test_blocking_locks_wait_for_the_holder(passthrough_mount: Path) -> None:
    """flock(1) and a blocking F_SETLKW from other processes wait for the holder
    and get the lock once it closes its descriptor, while the mount keeps serving.

    Passthrough leaves locks to the kernel; when it served them itself, the
    waiter held the only serving thread and the holder's close hung the mount.
    """
    if shutil.which("flock") is None:
        pytest.skip("flock is not installed")
    p = passthrough_mount / "lockfile"
    p.write_bytes(b"x" * 100)
    fd = os.open(p, os.O_RDWR)
    children: list[subprocess.Popen[str]] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
        for argv in (["flock", "-x", str(p), "-c", "echo flock-ok"],
                     [sys.executable, "-c", LOCKF_CHILD, str(p)]):
            children.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                             stdin=subprocess.DEVNULL))
        pids = {c.pid for c in children}
        deadline = time.monotonic() + 60
        while not pids <= _blocked_lock_waiters():
            assert all(c.poll() is None for c in children), "a waiter did not wait"
            assert time.monotonic() < deadline, "the waiters never blocked on the locks"
            time.sleep(0.02)
        assert p.stat().st_size == 100 and "lockfile" in os.listdir(passthrough_mount)
        os.close(fd)                    # drops the POSIX lock and the flock
        fd = -1
        outs = [c.communicate(timeout=60)[0] for c in children]
        assert [c.returncode for c in children] == [0, 0]
        assert outs == ["flock-ok\n", "lockf-ok\n"]
    finally:
        if fd >= 0:
            os.close(fd)
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait(10)


def test_compileall_and_import(mnt: Path) -> None:
    dst = mnt / "site" / "fusewire"
    shutil.copytree(REPO_ROOT / "fusewire", dst, ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "compileall", "-q", "-j", "1", str(dst)])
    pycs = list(dst.rglob("*.pyc"))
    sources = [p for p in dst.rglob("*.py")]
    assert len(pycs) == len(sources) > 5
    env = {**os.environ, "PYTHONPATH": str(mnt / "site"), "PYTHONDONTWRITEBYTECODE": "1"}
    r = run([sys.executable, "-c",
             "import fusewire.server.dispatch, fusewire.examples.memfs as m; print(m.__file__)"],
            env=env, cwd="/")
    assert r.stdout.strip().startswith(str(mnt))
