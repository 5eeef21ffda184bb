"""Recoverable multi-process passthrough (issue 15): ``--recoverable --processes 2``.

Real mounts: a keeper started here (private FUSEWIRE_RUN_DIR) whose servers
serve from two processes each.  Teardown (test_recovery's ``mounts``)
unmounts lazily and kills, by pid, only the keeper and the processes it
started; the serving processes seen here are added to that list.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_recovery as tr

from fusewire.testing.procs import children

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="recoverable multi-process mounts need root"),
]

KEEPER_ARGS = ["--processes", "2"]


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from tr.mounts(tmp_path, monkeypatch)


def _mount(start: Any) -> tr.Mount:
    m: tr.Mount = start(fs="passthrough", keeper_args=KEEPER_ARGS)
    assert len(_serving(m)) == 2
    return m


def _serving(m: tr.Mount) -> set[int]:
    """The serving processes of the current server (its forked children)."""
    pids = children(int(m.status()["server_pid"]))
    m.pids |= pids
    return pids


def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait (bounded) for a condition nothing signals, e.g. a forked replacement."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        select.select([], [], [], 0.02)


def _kill_and_reap(pid: int) -> None:
    """SIGKILL ``pid`` (not our child) and wait for it to be gone (its pidfd)."""
    pfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([pfd], [], [], 20)[0], f"pid {pid} did not die"
    finally:
        os.close(pfd)


def _kill_group(m: tr.Mount) -> None:
    """SIGKILL the whole server: the supervising parent and every serving process."""
    old = int(m.status()["server_pid"])
    for pid in (old, *_serving(m)):
        os.kill(pid, signal.SIGKILL)
    m.wait_new_server(old)
    assert len(_serving(m)) == 2


def test_crash_of_the_whole_server_group_keeps_open_files(start: Any) -> None:
    """SIGKILL of the server and both serving processes: files opened before (in
    either process) keep their fds, data written before and after reaches the
    source, nodes the kernel holds stay valid, no call fails."""
    m = _mount(start)
    fds = []
    for i in range(8):          # enough opens that both processes own some
        fd = os.open(m.path / f"f{i}", os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"before%d" % i, 0)
        fds.append(fd)
    app = os.open(m.path / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(app, b"one\n")
    (m.path / "d").mkdir()
    (m.path / "d" / "x").write_text("x")
    cwd = os.open(m.path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _kill_group(m)
        assert tr._restarts(m) == 1
        for i, fd in enumerate(fds):
            assert os.pread(fd, 20, 0) == b"before%d" % i
            os.pwrite(fd, b"+after", 7)
        os.write(app, b"two\n")
        assert os.listdir(cwd) == ["x"]
        assert os.stat("x", dir_fd=cwd).st_size == 1
        _kill_group(m)          # and again: the adopted table survives its successor
        for i, fd in enumerate(fds):
            assert os.pread(fd, 20, 0) == b"before%d+after" % i
        os.write(app, b"three\n")
    finally:
        for fd in (*fds, app, cwd):
            os.close(fd)
    assert m.source is not None
    for i in range(8):
        assert (m.source / f"f{i}").read_bytes() == b"before%d+after" % i
    assert (m.source / "log").read_bytes() == b"one\ntwo\nthree\n"
    assert tr._restarts(m) == 2


def test_killed_serving_process_loses_no_request(start: Any, tmp_path: Path) -> None:
    """SIGKILL of one serving process under a verifying workload: the parent keeps
    its fd clone, re-sends what it had read and restarts it; 0 client errors."""
    m = _mount(start)

    def kill_one(m: tr.Mount) -> None:
        before = _serving(m)
        _kill_and_reap(sorted(before)[0])
        _until(lambda: len(_serving(m) - before) == 1)     # its replacement

    tr._workload(m, tmp_path, kill_one, 3)
    assert tr._restarts(m) == 0          # the server itself never died
    assert "were re-sent; restarted" in m.log.read_text()


def _crashing_child(start: Any, tmp_path: Path, point: str,
                    group: bool = False) -> tuple[tr.Mount, Path]:
    """A 2-process recoverable passthrough where the first serving process to reach
    ``point`` (``handler:OPCODE:n``) dies there: its handler ran, its reply was never
    written; the parent re-sends the request to whichever process reads next."""
    token = tmp_path / "crashed"
    env = {"FUSEWIRE_CRASH_ONCE": str(token)}
    if group:
        env["FUSEWIRE_CRASH_GROUP"] = "1"
    m: tr.Mount = start(crash=point, fs="passthrough", keeper_args=KEEPER_ARGS,
                        env_extra=env)
    assert len(_serving(m)) == 2
    return m, token


def _answered_from_intent(m: tr.Mount, token: Path) -> None:
    assert token.exists(), "no serving process reached the crash point"
    # the parent logs the death after re-sending and restarting, which can be after
    # the caller already got the answer of the re-sent copy
    _until(lambda: "were re-sent; restarted" in m.log.read_text())
    log = m.log.read_text()
    assert "already took effect: answering from the current state" in log, log[-3000:]
    assert tr._restarts(m) == 0          # one process died, the server did not


def test_resent_mkdir_after_a_serving_process_died_runs_once(start: Any,
                                                              tmp_path: Path) -> None:
    """MKDIR ran in a serving process that died before its reply: the re-sent copy,
    read by another process, finds the intent in the shared table and answers
    success (not EEXIST)."""
    m, token = _crashing_child(start, tmp_path, "handler:MKDIR:1")
    os.mkdir(m.path / "one")
    os.mkdir(m.path / "two")
    assert m.source is not None
    assert sorted(os.listdir(m.source)) == ["one", "two"]
    _answered_from_intent(m, token)


def test_resent_rename_after_the_whole_group_died_runs_once(start: Any,
                                                            tmp_path: Path) -> None:
    """RENAME ran in a serving process that then took the whole server down before
    its reply: the successor adopts the shared table, intent rings included, and
    the re-sent RENAME answers success instead of ENOENT."""
    m, token = _crashing_child(start, tmp_path, "handler:RENAME:1", group=True)
    old = int(m.status()["server_pid"])
    (m.path / "a").write_bytes(b"payload")
    os.rename(m.path / "a", m.path / "b")
    assert token.exists(), "no serving process reached the crash point"
    assert m.source is not None
    assert sorted(os.listdir(m.source)) == ["b"]
    assert (m.path / "b").read_bytes() == b"payload"
    m.wait_new_server(old)
    assert tr._restarts(m) == 1          # the server was replaced, not one process
    assert "already took effect: answering from the current state" in m.log.read_text()


def test_resent_create_rename_unlink_append_run_once(start: Any, tmp_path: Path) -> None:
    """The other non-idempotent requests, each dying once in a serving process after
    its handler ran: O_EXCL CREATE keeps a working handle, RENAME and UNLINK do not
    answer ENOENT, an O_APPEND write lands once."""
    m, token = _crashing_child(start, tmp_path, "handler:CREATE:1")
    fd = os.open(m.path / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        assert os.write(fd, b"abc") == 3
    finally:
        os.close(fd)
    assert (m.path / "new").read_bytes() == b"abc"
    _answered_from_intent(m, token)
    assert m.source is not None
    mnt = m.path                        # every restart below mounts here again
    for point, act in (
            ("handler:RENAME:1", lambda: os.rename(mnt / "new", mnt / "renamed")),
            ("handler:UNLINK:1", lambda: os.unlink(mnt / "renamed"))):
        tr._cleanup(m)
        token.unlink()
        m, token = _crashing_child(start, tmp_path, point)
        assert m.path == mnt
        act()
        _answered_from_intent(m, token)
    assert sorted(os.listdir(m.source)) == []
    tr._cleanup(m)
    token.unlink()
    m, token = _crashing_child(start, tmp_path, "handler:WRITE:2")
    fd = os.open(m.path / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for i in range(4):
            assert os.write(fd, b"line %d\n" % i) == 7
    finally:
        os.close(fd)
    want = b"".join(b"line %d\n" % i for i in range(4))
    assert (m.source / "log").read_bytes() == want       # appended exactly once
    _answered_from_intent(m, token)


def test_graceful_upgrade_keeps_open_files(start: Any) -> None:
    """``upgrade``: the processes finish what they read and stop; the successor
    adopts the table and the clones; open files and the directory fd keep working."""
    m = _mount(start)
    fd = os.open(m.path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"before", 0)
    (m.path / "d").mkdir()
    dfd = os.open(m.path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        old = int(m.status()["server_pid"])
        tr._upgrade(m)
        assert int(m.status()["server_pid"]) != old and len(_serving(m)) == 2
        assert os.pread(fd, 10, 0) == b"before"
        os.pwrite(fd, b"!", 6)
        (m.path / "d" / "y").write_text("y")
        assert os.listdir(dfd) == ["y"]
    finally:
        os.close(fd)
        os.close(dfd)
    assert m.source is not None and (m.source / "f").read_bytes() == b"before!"
    st = m.status()
    assert st["restarts"] == 0 and st["upgrades"] == 1


def _soak(start: Any, tmp_path: Path, kills: int) -> None:
    m = _mount(start)
    total = tr._workload(m, tmp_path, _kill_group, kills)
    assert m.status()["restarts"] == kills
    print(f"soak passthrough --processes 2: {kills} group SIGKILLs, {total} client "
          "operations, 0 errors")


def test_soak_sigkill_group(start: Any, tmp_path: Path) -> None:
    # the default run's short soak; the slow one below is the real one
    _soak(start, tmp_path, 3)


@pytest.mark.slow
def test_soak_sigkill_group_long(start: Any, tmp_path: Path) -> None:
    _soak(start, tmp_path, int(os.environ.get("FUSEWIRE_SOAK_KILLS", "40")))


def test_cli_accepts_passthrough_and_refuses_memfs(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``mount --recoverable --processes 2``: memfs is refused in one line, mounting
    nothing (passthrough is what every other test here mounts)."""
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(tmp_path / "run"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([sys.executable, "-m", "fusewire", "mount", "memfs", str(mnt),
                        "--recoverable", "--processes", "2"],
                       capture_output=True, text=True, timeout=60, check=False,
                       env={**os.environ, "PYTHONPATH": str(tr.REPO)})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "one process's memory" in lines[0], r.stderr
    assert not os.path.ismount(mnt)
