"""Recovery you can trust (issue 10): bounded outages under repeated crashes,
upgrades that serve the code on disk, safety for filesystems that declare
nothing, the declared recovery contract, and supervision.

All on real mounts, with the keeper/server fixture of test_recovery.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_recovery import FS, REPO, Mount, _workload, mounts

from fusewire.recovery import wire

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="recoverable mounts need root"),
]

SLOW = pytest.mark.skipif(not os.environ.get("FUSEWIRE_SLOW"),
                          reason="slow: set FUSEWIRE_SLOW=1 (or run -m slow) to run")


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from mounts(tmp_path, monkeypatch)


# ---------------------------------------------------------------------------
# (1) bounded outage however often servers die

#: documented bound on the pause after a kill (docs/recovery.md), with room for a
#: machine shared with other test runs
PAUSE_BOUND = 3.0
COMPACT_RECORDS = 300


class Killer:
    """Kills the serving process, then times a write through an fd held across kills."""

    def __init__(self, m: Mount, interval: float) -> None:
        self.m = m
        self.interval = interval
        self.pauses: list[float] = []
        self.records: list[int] = []
        self.fd = -1
        self.last = 0.0

    def __call__(self, m: Mount) -> None:
        if self.fd < 0:
            self.fd = os.open(m.path / "probe", os.O_RDWR | os.O_CREAT, 0o644)
        wait = self.last + self.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)        # pacing of the kills, not synchronisation
        old = m.status()["server_pid"]
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        # a WRITE always reaches the server (no writeback cache): it returns
        # once a successor answers it
        assert os.pwrite(self.fd, b"%d" % len(self.pauses), 0) > 0
        self.pauses.append(time.monotonic() - t0)
        self.last = time.monotonic()
        st = m.wait_new_server(old)
        self.records.append(int(st["journal_records"]))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def _kill_many(start: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fs: str,
               kills: int, interval: float) -> None:
    monkeypatch.setenv("FUSEWIRE_COMPACT_RECORDS", str(COMPACT_RECORDS))
    m = start(fs=fs)
    killer = Killer(m, interval)
    try:
        total = _workload(m, tmp_path, killer, kills)     # asserts 0 client errors
    finally:
        killer.close()
    st = m.status()
    assert st["restarts"] == kills
    # compaction counts the log every server appended since the snapshot: the
    # journal never holds much more than the threshold, whoever wrote it
    assert max(killer.records) <= COMPACT_RECORDS + 60, killer.records
    assert st["compactions"] >= 1
    p = killer.pauses
    assert max(p) < PAUSE_BOUND, p
    third = max(1, kills // 3)
    first, last = statistics.median(p[:third]), statistics.median(p[-third:])
    assert last <= 3 * first + 0.3, p           # no growth from the first kills to the last
    print(f"{fs}: {kills} kills, {total} client ops, pauses first {first * 1000:.0f} ms "
          f"last {last * 1000:.0f} ms max {max(p) * 1000:.0f} ms, records {killer.records}")


@pytest.mark.parametrize("fs", FS)
def test_outage_does_not_grow_under_repeated_kills(start: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    fs: str) -> None:
    _kill_many(start, tmp_path, monkeypatch, fs, kills=10, interval=0.3)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("fs", FS)
def test_outage_does_not_grow_under_40_kills(start: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, fs: str) -> None:
    _kill_many(start, tmp_path, monkeypatch, fs, kills=40, interval=0.5)


# ---------------------------------------------------------------------------
# (5) supervision


def test_status_exact_after_any_number_of_compactions(start: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # every few creates compact the journal; the keeper's figures follow each new
    # journal (the old fd number comes back every other compaction)
    monkeypatch.setenv("FUSEWIRE_COMPACT_RECORDS", "7")
    m = start()
    seen = set()
    for i in range(1, 41):
        (m.path / f"f{i}").touch()
        st = m.status()
        seen.add(st["compactions"])
        assert st["nodes"] == i, (i, st)
    assert len(seen) >= 4


# ---------------------------------------------------------------------------
# (2) `fusewire upgrade` serves the code on disk now

VERSIONED = '''
from fusewire.examples.memfs import MemFS

VERSION = b"{version}"


class FS(MemFS):
    """memfs that tells its code version in an xattr of every inode."""

    def getxattr(self, inode, name, ctx):
        if name == b"user.fwversion":
            return VERSION
        return super().getxattr(inode, name, ctx)
'''


def _wait_spare(m: Mount, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st = m.status()
    while not st.get("spare_ready") and time.monotonic() < deadline:
        time.sleep(0.02)
        st = m.status()
    assert st.get("spare_ready"), (st, m.log.read_text()[-3000:])
    return st


def test_upgrade_and_crash_serve_the_code_on_disk(start: Any, tmp_path: Path) -> None:
    mod = tmp_path / "code"
    mod.mkdir()
    src = mod / "versionedfs.py"
    src.write_text(VERSIONED.format(version="v1"))
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{mod}"}
    m = start(fs="versionedfs:FS", env_extra=env)
    (m.path / "kept").write_text("state survives every version")

    def version() -> bytes:
        return os.getxattr(m.path, "user.fwversion")

    assert version() == b"v1"
    codes = {m.status()["code_version"]}
    for n in (2, 3, 4):
        _wait_spare(m)          # the spare imported the old code before the edit
        src.write_text(VERSIONED.format(version=f"v{n}"))
        old = m.status()["server_pid"]
        if n < 4:
            assert wire.request(wire.socket_path(str(m.path)), {"op": "upgrade"})["ok"]
        else:
            os.kill(old, signal.SIGKILL)        # a crash also restarts into the new code
        st = m.wait_new_server(old)
        assert version() == f"v{n}".encode()
        assert st["code_version"] not in codes
        assert st["replayed_code_version"] in codes     # the journal came from other code
        codes.add(st["code_version"])
        assert (m.path / "kept").read_text() == "state survives every version"
    assert "replays a journal written by code" in m.log.read_text()
