"""Crash recovery and live upgrade on real mounts (memfs, keeper + successors).

Every test starts its own keeper (with a private FUSEWIRE_RUN_DIR), and in
teardown unmounts lazily and kills, by pid, only the keeper and the servers
that keeper started.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fusewire.recovery import commands, wire
from fusewire.server import mount as fm

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="recoverable mounts need root"),
]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Mount:
    path: Path
    keeper: subprocess.Popen[bytes]
    pids: set[int] = field(default_factory=set)

    def status(self) -> dict[str, Any]:
        st = commands.status(str(self.path))
        for k in ("server_pid", "spare_pid"):
            if st.get(k):
                self.pids.add(int(st[k]))
        return st

    def wait_new_server(self, old: int | None, timeout: float = 20.0) -> dict[str, Any]:
        st = commands.wait_ready(str(self.path), timeout, after_pid=old)
        assert st is not None, "no successor became ready"
        self.status()
        return st


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str | None = None,
           options: list[str] | None = None) -> Mount:
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(run))
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("FUSEWIRE_CRASH_AT", None)
    if crash:
        env["FUSEWIRE_CRASH_AT"] = crash
    cmd = [sys.executable, "-m", "fusewire.recovery.keeper", "memfs", str(mnt)]
    for o in options or []:
        cmd += ["-o", o]
    log = open(tmp_path / "keeper.log", "ab")  # noqa: SIM115 - closed with the process
    keeper = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    m = Mount(mnt, keeper)
    st = commands.wait_ready(str(mnt), 20.0, keeper=keeper)
    assert st is not None, (tmp_path / "keeper.log").read_text()
    m.status()
    return m


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    mounts: list[Mount] = []

    def _go(crash: str | None = None, options: list[str] | None = None) -> Mount:
        m = _start(tmp_path, monkeypatch, crash, options)
        mounts.append(m)
        return m

    yield _go
    for m in mounts:
        pids = {m.keeper.pid} | m.pids | _children(m.keeper.pid)
        try:
            fm.unmount(str(m.path), lazy=True)
        except OSError:
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        m.keeper.wait(timeout=10)


# ---------------------------------------------------------------------------
# (1) deterministic crash points

POINTS = ["read", "handler", "journal", "reply"]


def _restarts(m: Mount) -> int:
    return int(m.status()["restarts"])


@pytest.mark.parametrize("point", POINTS)
def test_crash_during_mkdir(start: Any, point: str) -> None:
    m = start(f"{point}:MKDIR:2")
    os.mkdir(m.path / "one")
    os.mkdir(m.path / "two")            # the server dies at `point` of this one
    os.mkdir(m.path / "three")
    assert sorted(os.listdir(m.path)) == ["one", "three", "two"]
    assert _restarts(m) == 1


@pytest.mark.parametrize("point", POINTS)
def test_crash_during_append(start: Any, point: str) -> None:
    m = start(f"{point}:WRITE:3")
    p = m.path / "log"
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for i in range(6):
            assert os.write(fd, f"line {i}\n".encode()) == 7
    finally:
        os.close(fd)
    assert p.read_bytes() == b"".join(f"line {i}\n".encode() for i in range(6))
    assert _restarts(m) == 1


@pytest.mark.parametrize("point", POINTS)
def test_crash_during_rename(start: Any, point: str) -> None:
    m = start(f"{point}:RENAME:1")
    (m.path / "a").write_bytes(b"payload")
    os.rename(m.path / "a", m.path / "b")
    assert not (m.path / "a").exists()
    assert (m.path / "b").read_bytes() == b"payload"
    assert _restarts(m) == 1


@pytest.mark.parametrize("point", ["handler", "journal"])
def test_crash_during_create_keeps_handle(start: Any, point: str) -> None:
    m = start(f"{point}:CREATE:1")
    with open(m.path / "new", "wb") as f:      # CREATE dies; the handle must still work
        f.write(b"abc")
    assert (m.path / "new").read_bytes() == b"abc"
    assert _restarts(m) == 1


def test_crash_before_init_reply(start: Any) -> None:
    # The first server dies right after reading INIT: the successor gets the
    # re-sent INIT (bit 63) and answers it normally.
    m = start("read:INIT:1")
    os.mkdir(m.path / "x")
    assert os.listdir(m.path) == ["x"]


def test_manual_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(run))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    keeper = subprocess.Popen([sys.executable, "-m", "fusewire.recovery.keeper", "memfs",
                               str(mnt), "--restart", "manual"], env=env,
                              stdin=subprocess.DEVNULL)
    pids: set[int] = set()
    try:
        st = commands.wait_ready(str(mnt), 20.0, keeper=keeper)
        assert st is not None and st["spare_pid"] is None
        (mnt / "f").write_text("kept")
        os.kill(st["server_pid"], signal.SIGKILL)
        time.sleep(0.3)
        st2 = commands.status(str(mnt))
        assert st2["server_pid"] is None and st2["restarts"] == 1
        r = subprocess.run([sys.executable, "-m", "fusewire", "takeover", str(mnt)], env=env,
                           timeout=30)
        assert r.returncode == 0
        st3 = commands.status(str(mnt))
        pids.add(st3["server_pid"])
        assert (mnt / "f").read_text() == "kept"
    finally:
        pids |= _children(keeper.pid)
        try:
            fm.unmount(str(mnt), lazy=True)
        except OSError:
            pass
        for pid in pids | {keeper.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        keeper.wait(10)


def test_status_refuses_without_keeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(tmp_path))
    with pytest.raises(OSError):
        wire.request(wire.socket_path(str(tmp_path)), {"op": "status"}, 1.0)


# ---------------------------------------------------------------------------
# (2) soak and (3) graceful upgrade under a mixed workload

WORKER = textwrap.dedent(r'''
    import errno, json, os, random, sys, time
    mnt, bind, ident, stop_file, held = sys.argv[1:6]
    ident = int(ident)
    rnd = random.Random(ident)
    errors, ops = [], 0
    def err(what, exc):
        errors.append(f"{what}: {exc!r}")
    home = os.path.join(mnt, f"w{ident}")
    os.makedirs(home, exist_ok=True)
    if ident == 0:
        os.chdir(home)          # relative paths through a cwd inside the mount
        base = "."
    else:
        base = home
    logp = os.path.join(base, "log")
    logfd = os.open(logp, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    heldfd = os.open(held, os.O_RDWR) if ident == 0 else None
    expect_log = b""
    files = {}
    n = 0
    while not os.path.exists(stop_file):
        n += 1
        try:
            op = rnd.randrange(8)
            if op == 0:
                name = f"f{n}"
                data = os.urandom(rnd.randrange(1, 20000))
                with open(os.path.join(base, name), "wb") as f:
                    f.write(data)
                files[name] = data
            elif op == 1 and files:
                name = rnd.choice(sorted(files))
                with open(os.path.join(base, name), "rb") as f:
                    got = f.read()
                if got != files[name]:
                    err("verify", f"{name} {len(got)} != {len(files[name])}")
            elif op == 2 and files:
                old = rnd.choice(sorted(files))
                new = f"r{n}"
                os.rename(os.path.join(base, old), os.path.join(base, new))
                files[new] = files.pop(old)
            elif op == 3 and files:
                name = rnd.choice(sorted(files))
                os.unlink(os.path.join(base, name))
                del files[name]
            elif op == 4:
                names = set(os.listdir(base)) - {"log", "sub"}
                if names != set(files):
                    err("readdir", f"{sorted(names ^ set(files))}")
            elif op == 5:
                rec = f"{ident}:{n}\n".encode()
                if os.write(logfd, rec) != len(rec):
                    err("append", "short")
                expect_log += rec
                if os.pread(logfd, len(expect_log) + 10, 0) != expect_log:
                    err("log", "content")
            elif op == 6:
                for name in list(files)[:5]:
                    st = os.stat(os.path.join(base, name))
                    if st.st_size != len(files[name]):
                        err("stat", name)
                os.makedirs(os.path.join(base, "sub"), exist_ok=True)
            elif op == 7:
                if bind:
                    with open(os.path.join(bind, "marker")) as f:
                        if f.read() != "bound":
                            err("bind", "marker")
                    p = os.path.join(bind, f"b{ident}")
                    with open(p, "w") as f:
                        f.write(str(n))
                    with open(p) as f:
                        if f.read() != str(n):
                            err("bind", "rw")
                if heldfd is not None:
                    os.pwrite(heldfd, str(n).encode().ljust(16), 0)
                    if os.pread(heldfd, 16, 0).strip() != str(n).encode():
                        err("held", "content")
            ops += 1
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                err("ENOTCONN", exc)
            else:
                err(f"op{op}", exc)
    os.close(logfd)
    print(json.dumps({"ops": ops, "errors": errors[:20], "nerrors": len(errors)}))
''')


def _workload(m: Mount, tmp_path: Path, disrupt: Any, rounds: int) -> None:
    shared = m.path / "shared"
    shared.mkdir()
    (shared / "marker").write_text("bound")
    (m.path / "held").write_bytes(b"0".ljust(16))
    bind = tmp_path / "bind"
    bind.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(bind)], check=True)
    stop = tmp_path / "stop"
    procs = []
    try:
        for i in range(3):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(m.path), str(bind), str(i), str(stop),
                 str(m.path / "held")], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(0.5)
        rnd = random.Random(1234)
        for _ in range(rounds):
            time.sleep(rnd.uniform(0.05, 0.4))
            disrupt(m)
        time.sleep(0.5)
        stop.write_text("")
        results = []
        for p in procs:
            out, errout = p.communicate(timeout=120)
            assert p.returncode == 0, errout.decode()
            results.append(json.loads(out))
    finally:
        stop.write_text("")
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", str(bind)], check=False)
    total = sum(r["ops"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    assert not errors, errors
    assert total > 100, results
    assert (shared / "marker").read_text() == "bound"


def _kill(m: Mount) -> None:
    st = m.status()
    old = st["server_pid"]
    os.kill(old, signal.SIGKILL)
    m.wait_new_server(old)


def _upgrade(m: Mount) -> None:
    old = m.status()["server_pid"]
    assert wire.request(wire.socket_path(str(m.path)), {"op": "upgrade"})["ok"]
    m.wait_new_server(old)


def test_soak_sigkill(start: Any, tmp_path: Path) -> None:
    kills = int(os.environ.get("FUSEWIRE_SOAK_KILLS", "10"))
    m = start()
    _workload(m, tmp_path, _kill, kills)
    st = m.status()
    assert st["restarts"] == kills


def test_graceful_upgrade_under_load(start: Any, tmp_path: Path) -> None:
    m = start()
    _workload(m, tmp_path, _upgrade, 5)
    st = m.status()
    assert st["upgrades"] == 5 and st["restarts"] == 0


def test_compaction_under_load(start: Any, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSEWIRE_COMPACT_RECORDS", "200")
    m = start()
    _workload(m, tmp_path, _kill, 4)
    assert m.status()["journal_records"] < 2000


def test_unmount_stops_keeper(start: Any) -> None:
    m = start()
    pid = m.status()["server_pid"]
    fm.unmount(str(m.path), lazy=True)
    m.keeper.wait(timeout=10)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("server survived the unmount")
    assert not os.path.exists(wire.socket_path(str(m.path)))
    with pytest.raises(OSError) as exc:
        os.stat(m.path / "x")
    assert exc.value.errno in (errno.ENOENT, errno.ENOTCONN)
