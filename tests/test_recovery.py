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
import stat
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
from fusewire.testing.procs import children as _children
from fusewire.testing.procs import unmount_and_kill

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="recoverable mounts need root"),
]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Mount:
    path: Path
    keeper: subprocess.Popen[bytes]
    fs: str
    source: Path | None
    log: Path
    pids: set[int] = field(default_factory=set)

    def status(self) -> dict[str, Any]:
        st = commands.status(str(self.path))
        for k in ("server_pid", "spare_pid"):
            if st.get(k):
                self.pids.add(int(st[k]))
        return st

    def wait_new_server(self, old: int | None, timeout: float = 20.0) -> dict[str, Any]:
        st = commands.wait_ready(str(self.path), timeout, after_pid=old)
        assert st is not None, "no successor became ready\n" + self.log.read_text()[-3000:]
        self.status()
        return st

    def backing(self, *parts: str) -> Path | None:
        """The object in the source tree (passthrough), None for memfs."""
        return None if self.source is None else self.source.joinpath(*parts)


def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str | None = None,
           options: list[str] | None = None, fs: str = "memfs",
           keeper_args: list[str] | None = None, env_extra: dict[str, str] | None = None,
           wait: bool = True) -> Mount:
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
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "fusewire.recovery.keeper", fs]
    source = None
    if fs == "passthrough":
        source = tmp_path / "src"
        source.mkdir(exist_ok=True)
        cmd.append(str(source))
    cmd.append(str(mnt))
    for o in options or []:
        cmd += ["-o", o]
    cmd += keeper_args or []
    logpath = tmp_path / "keeper.log"
    log = open(logpath, "ab")  # noqa: SIM115 - closed with the process
    keeper = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    m = Mount(mnt, keeper, fs, source, logpath)
    if wait:
        st = commands.wait_ready(str(mnt), 20.0, keeper=keeper)
        if st is None:          # not handed to the fixture yet: clean up here
            _cleanup(m)
            pytest.fail("the recoverable mount did not become ready\n" + logpath.read_text())
        m.status()
    return m


def _cleanup(m: Mount) -> None:
    unmount_and_kill(m.path, {m.keeper.pid} | m.pids | _children(m.keeper.pid))
    m.keeper.wait(timeout=10)


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from mounts(tmp_path, monkeypatch)


def mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Body of the ``start`` fixture (other test files wrap it in their own fixture)."""
    mounts: list[Mount] = []

    def _go(crash: str | None = None, options: list[str] | None = None,
            fs: str = "memfs", **kw: Any) -> Mount:
        m = _start(tmp_path, monkeypatch, crash, options, fs, **kw)
        mounts.append(m)
        return m

    yield _go
    for m in mounts:
        _cleanup(m)


def client(code: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``code`` in a separate process (a blocked call cannot hang the test runner);
    it prints one JSON object."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                       capture_output=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr.decode()
    out: dict[str, Any] = json.loads(r.stdout)
    return out


FS = ["memfs", "passthrough"]


# ---------------------------------------------------------------------------
# (1) deterministic crash points

POINTS = ["read", "handler", "journal", "reply"]


def _restarts(m: Mount) -> int:
    return int(m.status()["restarts"])


@pytest.mark.parametrize("fs", FS)
@pytest.mark.parametrize("point", POINTS)
def test_crash_during_mkdir(start: Any, point: str, fs: str) -> None:
    m = start(f"{point}:MKDIR:2", fs=fs)
    os.mkdir(m.path / "one")
    os.mkdir(m.path / "two")            # the server dies at `point` of this one
    os.mkdir(m.path / "three")
    assert sorted(os.listdir(m.path)) == ["one", "three", "two"]
    src = m.backing()
    if src is not None:
        assert sorted(os.listdir(src)) == ["one", "three", "two"]
    assert _restarts(m) == 1


@pytest.mark.parametrize("fs", FS)
@pytest.mark.parametrize("point", POINTS)
def test_crash_during_append(start: Any, point: str, fs: str) -> None:
    m = start(f"{point}:WRITE:3", fs=fs)
    p = m.path / "log"
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for i in range(6):
            assert os.write(fd, f"line {i}\n".encode()) == 7
    finally:
        os.close(fd)
    want = b"".join(f"line {i}\n".encode() for i in range(6))
    assert p.read_bytes() == want
    src = m.backing("log")
    if src is not None:
        assert src.read_bytes() == want     # written exactly once on disk
    assert _restarts(m) == 1


@pytest.mark.parametrize("fs", FS)
@pytest.mark.parametrize("point", POINTS)
def test_crash_during_rename(start: Any, point: str, fs: str) -> None:
    m = start(f"{point}:RENAME:1", fs=fs)
    (m.path / "a").write_bytes(b"payload")
    os.rename(m.path / "a", m.path / "b")
    assert not (m.path / "a").exists()
    assert (m.path / "b").read_bytes() == b"payload"
    src = m.backing()
    if src is not None:
        assert sorted(os.listdir(src)) == ["b"]
    assert _restarts(m) == 1


@pytest.mark.parametrize("fs", FS)
@pytest.mark.parametrize("point", POINTS)
def test_crash_during_create_keeps_handle(start: Any, point: str, fs: str) -> None:
    m = start(f"{point}:CREATE:1", fs=fs)
    # O_EXCL: executing the CREATE a second time would fail with EEXIST
    fd = os.open(m.path / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:                                # CREATE dies at `point`; the handle must work
        assert os.write(fd, b"abc") == 3
    finally:
        os.close(fd)
    assert (m.path / "new").read_bytes() == b"abc"
    assert stat.S_IMODE(os.stat(m.path / "new").st_mode) == 0o640
    src = m.backing("new")
    if src is not None:
        assert src.read_bytes() == b"abc"
    assert _restarts(m) == 1


@pytest.mark.parametrize("fs", FS)
def test_crash_before_init_reply(start: Any, fs: str) -> None:
    # The first server dies right after reading INIT: the successor gets the
    # re-sent INIT (bit 63) and answers it normally.
    m = start("read:INIT:1", fs=fs)
    os.mkdir(m.path / "x")
    assert os.listdir(m.path) == ["x"]


@pytest.mark.parametrize("fs", FS)
def test_open_files_and_cwd_survive(start: Any, fs: str) -> None:
    # a read-write handle, an O_APPEND handle and an open directory, all opened
    # before the crash, keep working through the successor
    m = start(fs=fs)
    (m.path / "d").mkdir()
    (m.path / "d" / "rw").write_bytes(b"0123456789")
    out = client(r"""
        import json, os, signal, sys, time
        mnt, pid = sys.argv[1], int(sys.argv[2])
        rw = os.open(os.path.join(mnt, "d", "rw"), os.O_RDWR)
        ap = os.open(os.path.join(mnt, "d", "ap"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        dfd = os.open(os.path.join(mnt, "d"), os.O_RDONLY | os.O_DIRECTORY)
        os.chdir(os.path.join(mnt, "d"))
        os.write(ap, b"before ")
        os.kill(pid, signal.SIGKILL)
        os.pwrite(rw, b"AB", 2)
        os.write(ap, b"after")
        print(json.dumps({"rw": os.pread(rw, 100, 0).decode(),
                          "ap": open("ap").read(), "list": sorted(os.listdir(dfd)),
                          "cwd": sorted(os.listdir("."))}))
    """, str(m.path), str(m.status()["server_pid"]))
    assert out == {"rw": "01AB456789", "ap": "before after", "list": ["ap", "rw"],
                   "cwd": ["ap", "rw"]}
    src = m.backing("d", "rw")
    if src is not None:
        assert src.read_bytes() == b"01AB456789"
    assert _restarts(m) == 1
    # every handle is released again (RELEASE comes asynchronously after the exit)
    deadline = time.monotonic() + 30
    while m.status()["handles"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m.status()["handles"] == 0


def test_manual_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _start(tmp_path, monkeypatch, keeper_args=["--restart", "manual"])
    try:
        st = m.status()
        assert st["spare_pid"] is None
        (m.path / "f").write_text("kept")
        os.kill(st["server_pid"], signal.SIGKILL)
        st2 = _wait_state(m, "stopped")
        assert st2["server_pid"] is None and st2["restarts"] == 1
        assert "manual" in st2["state_reason"]
        r = subprocess.run([sys.executable, "-m", "fusewire", "takeover", str(m.path)],
                           env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=30)
        assert r.returncode == 0
        assert m.status()["state"] == "serving"
        assert (m.path / "f").read_text() == "kept"
    finally:
        _cleanup(m)


def _wait_state(m: Mount, state: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st = m.status()
    while st["state"] != state and time.monotonic() < deadline:
        time.sleep(0.05)
        st = m.status()
    assert st["state"] == state, (st, m.log.read_text()[-3000:])
    return st


def test_restart_limit_then_operator_takeover(start: Any, tmp_path: Path) -> None:
    # Servers that die as soon as they own the mount: the keeper backs off,
    # stops after --max-fast-restarts, says so in status; once the cause is
    # gone an operator's `fusewire takeover` revives the mount, and the call
    # that was blocked meanwhile completes.
    broken = tmp_path / "broken"
    m = start(keeper_args=["--max-fast-restarts", "3"],
              env_extra={"FUSEWIRE_CRASH_FILE": str(broken)})
    (m.path / "f").write_text("kept")
    broken.write_text("")
    os.kill(m.status()["server_pid"], signal.SIGKILL)
    st = _wait_state(m, "stopped")
    assert "restart limit reached" in st["state_reason"]
    assert st["server_pid"] is None and st["fast_failures"] == 4
    assert st["restarts"] >= 2          # the first death plus spares that died on grant
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "fusewire", "status", str(m.path)], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert "stopped" in out and "restart limit reached" in out
    blocked = subprocess.Popen([sys.executable, "-c",
                                "import sys; print(open(sys.argv[1]).read())",
                                str(m.path / "f")], stdout=subprocess.PIPE)
    try:
        broken.unlink()
        r = subprocess.run([sys.executable, "-m", "fusewire", "takeover", str(m.path)],
                           env=env, timeout=60)
        assert r.returncode == 0
        out2, _ = blocked.communicate(timeout=60)
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.wait()
    assert out2.decode().strip() == "kept"
    st = m.status()
    assert st["state"] == "serving" and st["fast_failures"] == 0


@pytest.mark.parametrize("fs", FS)
def test_status_shows_server_keeper_nodes_handles(start: Any, fs: str) -> None:
    m = start(fs=fs)
    (m.path / "a" / "b").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(m.path / "a" / "b" / "held", "w"):
        raw = subprocess.run([sys.executable, "-m", "fusewire", "status", "--json",
                              str(m.path)], env=env, capture_output=True, text=True,
                             timeout=30, check=True).stdout
        st = json.loads(raw)
        text = subprocess.run([sys.executable, "-m", "fusewire", "status", str(m.path)],
                              env=env, capture_output=True, text=True, timeout=30,
                              check=True).stdout
    assert st["keeper_pid"] == m.keeper.pid
    assert st["server_pid"] in _children(m.keeper.pid)
    assert st["state"] == "serving" and st["fs"] == fs
    assert st["nodes"] >= 3                  # a, b, held
    assert st["handles"] == 1                # held
    assert st["journal_bytes"] > 0 and st["journal_records"] > 0
    assert st["protocol"] == "7.45"
    if fs == "passthrough":
        assert st["recovery"] == "handles" and st["node_keys"] == st["nodes"]
        assert st["source"] == str(m.source)
    else:
        assert st["recovery"] == "replay"
    fields = dict(line.split(None, 1) for line in text.splitlines())
    assert fields["keeper_pid"] == str(m.keeper.pid)
    assert fields["server_pid"] == str(st["server_pid"])
    assert fields["handles"] == "1" and fields["state"] == "serving"
    assert int(fields["journal_bytes"]) > 0


def test_cli_mount_passthrough_recoverable(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # `fusewire mount passthrough SRC MNT --recoverable` returns once the mount
    # is ready, with a keeper in the background
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(run))
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "old").write_text("from before the mount")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "fusewire", "mount", "passthrough", str(src),
                        str(mnt), "--recoverable"], env=env, timeout=60, capture_output=True,
                       text=True)
    pids: set[int] = set()
    try:
        st = commands.status(str(mnt))
        pids |= {st["keeper_pid"], st["server_pid"]} | _children(st["keeper_pid"])
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stderr
        assert st["fs"] == "passthrough" and st["recovery"] == "handles"
        assert st["source"] == str(src)
        with open(mnt / "new", "w") as f:
            f.write("a")
            f.flush()
            os.kill(st["server_pid"], signal.SIGKILL)
            st2 = commands.wait_ready(str(mnt), 20.0, after_pid=st["server_pid"])
            assert st2 is not None
            pids |= _children(st["keeper_pid"])
            f.write("b")
        assert (src / "new").read_text() == "ab"
        assert (mnt / "old").read_text() == "from before the mount"
    finally:
        pids |= _children(st["keeper_pid"]) if r.returncode == 0 else set()
        unmount_and_kill(mnt, pids)


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


def _workload(m: Mount, tmp_path: Path, disrupt: Any, rounds: int) -> int:
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
    return total


def _kill(m: Mount) -> None:
    st = m.status()
    old = st["server_pid"]
    os.kill(old, signal.SIGKILL)
    m.wait_new_server(old)


def _upgrade(m: Mount) -> None:
    old = m.status()["server_pid"]
    assert wire.request(wire.socket_path(str(m.path)), {"op": "upgrade"})["ok"]
    m.wait_new_server(old)


def _soak(start: Any, tmp_path: Path, fs: str, kills: int) -> None:
    m = start(fs=fs)
    total = _workload(m, tmp_path, _kill, kills)
    st = m.status()
    assert st["restarts"] == kills
    print(f"soak {fs}: {kills} SIGKILLs, {total} client operations, 0 errors")


@pytest.mark.parametrize("fs", FS)
def test_soak_sigkill(start: Any, tmp_path: Path, fs: str) -> None:
    # the default run's short soak; test_soak_sigkill_long is the real one (-m slow)
    _soak(start, tmp_path, fs, 3)


@pytest.mark.slow
@pytest.mark.parametrize("fs", FS)
def test_soak_sigkill_long(start: Any, tmp_path: Path, fs: str) -> None:
    _soak(start, tmp_path, fs, int(os.environ.get("FUSEWIRE_SOAK_KILLS", "30")))


@pytest.mark.parametrize("fs", FS)
def test_graceful_upgrade_under_load(start: Any, tmp_path: Path, fs: str) -> None:
    m = start(fs=fs)
    _workload(m, tmp_path, _upgrade, 5)
    st = m.status()
    assert st["upgrades"] == 5 and st["restarts"] == 0


@pytest.mark.parametrize("fs", FS)
def test_compaction_under_load(start: Any, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, fs: str) -> None:
    monkeypatch.setenv("FUSEWIRE_COMPACT_RECORDS", "200")
    m = start(fs=fs)
    _workload(m, tmp_path, _kill, 4)
    st = m.status()
    assert st["journal_records"] < 2000
    if fs == "passthrough":
        assert st["node_keys"] == st["nodes"]


def test_big_snapshot_does_not_compact_on_every_reply(start: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A snapshot larger than the compaction threshold must not count as new log.
    monkeypatch.setenv("FUSEWIRE_COMPACT_BYTES", str(1 << 20))
    m = start()
    (m.path / "big").write_bytes(os.urandom(3 << 20))
    # file data is not journaled (memfs keeps it in a memfd): xattr values are, and
    # the snapshot keeps them: > 1 MiB of REQ records compacts into a > 1 MiB snapshot
    for i in range(24):
        os.setxattr(m.path / "big", f"user.x{i}", os.urandom(60 << 10))
    for _ in range(3):
        (m.path / "small").write_bytes(b"x")
    before = m.status()["compactions"]
    assert before >= 1
    for i in range(200):
        os.stat(m.path / "big")
        (m.path / f"f{i}").touch()
    assert m.status()["compactions"] - before <= 1
    assert (m.path / "big").stat().st_size == 3 << 20


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
