"""Recoverable memfs keeps file data in a memfd the keeper holds (issue 10 point 6).

The journal records a WRITE's header only and snapshots carry block maps, so a
successor finds the bytes in the memfd the dead server wrote.  Unit tests check
that a replay (no bytes touched) rebuilds exactly the live server's block maps,
whatever was freed and reused in between; the real-mount tests SIGKILL servers
and read everything back, and check that the journal and the server's memory do
not grow with the data beyond it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fusewire import recovery_api
from fusewire.examples.memfs import (
    CHUNK_SIZE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    SEEK_DATA,
    SEEK_HOLE,
    MemFS,
)
from fusewire.opcodes.flags import Opcode
from fusewire.recovery import journal as jn
from fusewire.recovery.takeover import CrashHook, RecordingDispatcher, RecoveryJournal
from fusewire.types import EntryAttributes, RequestContext, SetattrFields

ROOT = 1
CTX = RequestContext(uid=0, gid=0, pid=1, umask=0o022)
MiB = 1 << 20
NAMES = [b"a", b"b", b"c"]


def sa(**kw: bool) -> SetattrFields:
    return SetattrFields(**kw)


# ---------------------------------------------------------------------------
# unit: a replay rebuilds the live block maps without touching a byte


class _Live:
    """A block-store MemFS driven like a server, with a model of every file."""

    def __init__(self, fs: MemFS) -> None:
        self.fs = fs
        self.ino: dict[bytes, int] = {}
        self.fh: dict[bytes, int] = {}
        self.model: dict[bytes, bytearray] = {}

    def apply(self, op: tuple[Any, ...], replay: bool) -> None:
        """One request; ``replay``: as a successor re-executes it (zeros for WRITE data,
        no FORGET: the replayed log has none)."""
        fs = self.fs
        kind, name = op[0], op[1]
        if name not in self.fh:         # CREATE (a request of its own)
            fi, attr = fs.create(ROOT, name, stat.S_IFREG | 0o644, os.O_RDWR, CTX)
            self.fh[name], self.ino[name] = fi.fh, attr.st_ino
            self.model[name] = bytearray()
        fh, model = self.fh[name], self.model[name]
        if kind == "w":
            off, n, byte = op[2], op[3], op[4]
            data = bytes(n) if replay else bytes([byte]) * n
            fs.write(fh, off, memoryview(data))
            if len(model) < off:
                model.extend(bytes(off - len(model)))
            model[off:off + n] = bytes([byte]) * n
        elif kind == "t":
            fs.setattr(self.ino[name], EntryAttributes(st_size=op[2]), sa(update_size=True),
                       None, CTX)
            del model[op[2]:]
            model.extend(bytes(op[2] - len(model)))
        elif kind == "p":
            off, n = op[2], op[3]
            fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n, CTX)
            end = min(off + n, len(model))
            if off < end:
                model[off:end] = bytes(end - off)
        elif kind == "c":               # copy_file_range from another file
            src = op[2]
            if src == name or src not in self.fh:
                return
            n = fs.copy_file_range(self.fh[src], 0, self.ino[name], fh, op[3], 3 * CHUNK_SIZE,
                                   0, CTX)
            data = self.model[src][:n]
            if n and len(model) < op[3]:
                model.extend(bytes(op[3] - len(model)))
            model[op[3]:op[3] + n] = data
        elif kind == "u":               # unlink, close, and the kernel forgets it
            fs.unlink(ROOT, name, CTX)
            fs.release(fh)
            if not replay:
                fs.forget([(self.ino[name], 1)])
            del self.fh[name], self.ino[name], self.model[name]


_OPS = st.one_of(
    st.tuples(st.just("w"), st.sampled_from(NAMES), st.integers(0, 6 * CHUNK_SIZE),
              st.integers(1, 2 * CHUNK_SIZE + 7), st.integers(1, 255)),
    st.tuples(st.just("t"), st.sampled_from(NAMES), st.integers(0, 6 * CHUNK_SIZE)),
    st.tuples(st.just("p"), st.sampled_from(NAMES), st.integers(0, 6 * CHUNK_SIZE),
              st.integers(1, 3 * CHUNK_SIZE)),
    st.tuples(st.just("c"), st.sampled_from(NAMES), st.sampled_from(NAMES),
              st.integers(0, 4 * CHUNK_SIZE)),
    st.tuples(st.just("u"), st.sampled_from(NAMES)),
    st.tuples(st.just("snap"), st.just(b"")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_OPS, min_size=4, max_size=30))
# a file freed by the kernel's FORGET (not in the replayed log) before another is
# written: the replay must not hand that file's blocks to the other one
@example([("w", b"a", 0, 100, 1), ("u", b"a"), ("w", b"b", 0, 100, 2)])
@example([("w", b"a", 0, 3 * CHUNK_SIZE, 1), ("snap", b""), ("t", b"a", 10),
          ("w", b"b", 0, 2 * CHUNK_SIZE, 2), ("u", b"a"), ("w", b"c", 5, 100, 3)])
def test_replay_rebuilds_the_block_maps(ops: list[tuple[Any, ...]]) -> None:
    live = _Live(MemFS())
    fds = live.fs.recovery_fds()
    base = live.fs.dump_state()
    live.fs.snapshot_taken()
    log: list[tuple[Any, ...]] = []
    held: dict[bytes, tuple[int, int]] = {}
    for op in ops:
        if op[0] == "snap":             # a compaction: the log restarts from here
            base = live.fs.dump_state()
            live.fs.snapshot_taken()
            log = []
            held = {n: (live.ino[n], live.fh[n]) for n in live.fh}
            continue
        if op[0] == "u" and op[1] not in live.fh:
            continue
        live.apply(op, replay=False)
        log.append(op)
    # the successor: the snapshot, the same memfd, the log with zeros for the data
    succ = MemFS()
    succ.load_state(base)
    succ.attach_recovery_fds(fds)
    again = _Live(succ)
    again.ino = {n: i for n, (i, _) in held.items()}
    again.fh = {n: f for n, (_, f) in held.items()}
    again.model = {n: bytearray() for n in held}     # only the bookkeeping is compared
    succ.replay_started()
    for op in log:
        again.apply(op, replay=True)
    succ.replay_finished({ino: 1 for ino in live.ino.values()})
    assert sorted(again.fh) == sorted(live.fh)
    for name, ino in live.ino.items():
        assert again.ino[name] == ino
        want = bytes(live.model[name])
        assert live.fs.read(live.fh[name], 0, len(want) + 10) == want
        # the same blocks, hence the bytes the live server wrote
        assert succ._inodes[ino].data == live.fs._inodes[ino].data
        assert succ.read(again.fh[name], 0, len(want) + 10) == want
        assert succ.getattr(ino, CTX).st_size == len(want)
    a, b = live.fs._store, succ._store
    assert a is not None and b is not None
    assert a.hwm == b.hwm and sorted(a.free) == sorted(b.free)
    assert sorted(a.quarantine) == sorted(b.quarantine)
    assert succ._used == live.fs._used
    assert succ.statfs(CTX) == live.fs.statfs(CTX)


def test_freed_blocks_wait_for_a_snapshot() -> None:
    # a block freed after the last snapshot is not reused (a replay of that log
    # still finds it owned by its old file) and its memory is kept until the next
    fs = MemFS()
    (fd,) = fs.recovery_fds()
    fi, a = fs.create(ROOT, b"a", 0o100644, os.O_RDWR, CTX)
    fs.write(fi.fh, 0, memoryview(b"A" * (4 * CHUNK_SIZE)))
    fs.snapshot_taken()
    fs.setattr(a.st_ino, EntryAttributes(st_size=0), sa(update_size=True), None, CTX)
    assert os.fstat(fd).st_blocks * 512 >= 4 * CHUNK_SIZE       # not released yet
    fi2, b = fs.create(ROOT, b"b", 0o100644, os.O_RDWR, CTX)
    fs.write(fi2.fh, 0, memoryview(b"B" * CHUNK_SIZE))
    store = fs._store
    assert store is not None and store.hwm == 5                   # a new block
    blocks_b = fs._inodes[b.st_ino].data
    fs.snapshot_taken()                 # the free is in a committed snapshot now
    assert os.fstat(fd).st_blocks * 512 < 2 * CHUNK_SIZE          # memory given back
    fs.write(fi.fh, 0, memoryview(b"C" * (3 * CHUNK_SIZE)))
    assert store.hwm == 5                                         # the freed blocks reused
    assert fs.read(fi.fh, 0, 3 * CHUNK_SIZE) == b"C" * (3 * CHUNK_SIZE)
    assert fs._inodes[b.st_ino].data == blocks_b
    assert fs.read(fi2.fh, 0, CHUNK_SIZE) == b"B" * CHUNK_SIZE
    assert not fs.snapshot_wanted()


def test_journal_omits_write_data_only_with_the_store() -> None:
    heap = MemFS()
    assert not heap.journal_omits_data() and not heap.snapshot_wanted()
    fi, _ = heap.create(ROOT, b"f", 0o100644, os.O_RDWR, CTX)
    heap.write(fi.fh, 0, memoryview(b"x"))
    assert heap.recovery_fds() == ()      # data on the heap already: it stays there
    fs = MemFS()
    assert len(fs.recovery_fds()) == 1
    assert set(fs.journal_omits_data()) == {Opcode.WRITE}
    fi, _ = fs.create(ROOT, b"f", 0o100644, os.O_RDWR, CTX)
    fs.write(fi.fh, 0, memoryview(b"y" * (3 * MiB)))
    assert len(fs.dump_state()) < 4096      # block maps, not bytes


# ---------------------------------------------------------------------------
# real mounts

pytestmark_root = pytest.mark.skipif(os.geteuid() != 0, reason="recoverable mounts need root")

from test_connection import msg, ready  # noqa: E402
from test_recovery import Mount, client, mounts  # noqa: E402


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from mounts(tmp_path, monkeypatch)


def _kill(m: Mount) -> None:
    old = int(m.status()["server_pid"])
    os.kill(old, signal.SIGKILL)
    m.wait_new_server(old)


def _data_memfd(m: Mount) -> os.stat_result:
    """The data memfd the keeper holds (its size and the memory it uses)."""
    proc = Path(f"/proc/{m.keeper.pid}/fd")
    for fd in proc.iterdir():
        try:
            if "fusewire-memfs-data" in os.readlink(fd):
                return os.stat(fd)
        except OSError:
            continue
    raise AssertionError("the keeper holds no memfs data memfd")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _pattern(n: int, seed: int) -> bytes:
    block = bytes((i * 7 + seed) & 0xFF for i in range(4096))
    return (block * (n // 4096 + 1))[:n]


@pytestmark_root
def test_data_survives_sigkill(start: Any) -> None:
    m = start()
    assert m.status()["fs_fds"] == 1
    big = _pattern(5 * MiB + 12345, 1)                  # many blocks, odd length
    (m.path / "big").write_bytes(big)
    with open(m.path / "sparse", "wb") as f:            # holes before, between, after
        f.seek(3 * MiB + 100)
        f.write(b"middle")
        f.seek(9 * MiB)
        f.write(b"end")
        f.truncate(12 * MiB)
    (m.path / "shrink").write_bytes(_pattern(3 * CHUNK_SIZE + 10, 2))
    os.truncate(m.path / "shrink", CHUNK_SIZE + 5)      # shrink inside a block...
    os.truncate(m.path / "shrink", 2 * CHUNK_SIZE)      # ...and grow again: zeros
    (m.path / "gone").write_bytes(b"x" * MiB)
    os.unlink(m.path / "gone")
    _kill(m)
    assert (m.path / "big").read_bytes() == big
    sparse = (m.path / "sparse").read_bytes()
    want = bytearray(12 * MiB)
    want[3 * MiB + 100:3 * MiB + 106] = b"middle"
    want[9 * MiB:9 * MiB + 3] = b"end"
    assert sparse == want
    fd = os.open(m.path / "sparse", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, SEEK_DATA) == 3 * MiB    # still a hole before the data
        assert os.lseek(fd, 9 * MiB, SEEK_HOLE) == 9 * MiB + CHUNK_SIZE
    finally:
        os.close(fd)
    assert (m.path / "shrink").read_bytes() == (
        _pattern(3 * CHUNK_SIZE + 10, 2)[:CHUNK_SIZE + 5] + bytes(CHUNK_SIZE - 5))
    assert not (m.path / "gone").exists()
    # and once more, after a compaction-free second takeover of the same memfd
    (m.path / "big").write_bytes(big[::-1])
    _kill(m)
    assert (m.path / "big").read_bytes() == big[::-1]
    assert m.status()["restarts"] == 2


@pytestmark_root
@pytest.mark.parametrize("point", ["handler", "journal", "reply"])
def test_append_across_a_kill_is_exactly_once(start: Any, point: str) -> None:
    # the 3rd WRITE kills the server at `point`: after its handler (the bytes are in the
    # memfd, nothing journaled: the kernel re-sends it), after the journal (the
    # recorded reply answers the re-sent one) or after the reply
    m = start(f"{point}:WRITE:3")
    chunk = [_pattern(CHUNK_SIZE + 1000 * i, i) for i in range(6)]
    fd = os.open(m.path / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for c in chunk:
            assert os.write(fd, c) == len(c)
    finally:
        os.close(fd)
    assert (m.path / "log").read_bytes() == b"".join(chunk)
    assert m.status()["restarts"] == 1


@pytestmark_root
def test_mmap_file_survives_sigkill(start: Any) -> None:
    m = start()
    size = 4 * CHUNK_SIZE
    (m.path / "mapped").write_bytes(bytes(size))
    out = client(r"""
        import json, mmap, os, signal, sys
        path, pid, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        fd = os.open(path, os.O_RDWR)
        mm = mmap.mmap(fd, size)
        mm[0:5] = b"first"
        mm[size - 4:size] = b"last"
        mm.flush()
        os.kill(pid, signal.SIGKILL)
        mm[70000:70005] = b"after"
        mm.flush()
        mm.close()
        os.close(fd)
        print(json.dumps({"ok": True}))
    """, str(m.path / "mapped"),
        str(m.status()["server_pid"]), str(size))
    assert out == {"ok": True}
    data = (m.path / "mapped").read_bytes()
    assert data[:5] == b"first" and data[-4:] == b"last" and data[70000:70005] == b"after"
    assert data.count(0) == size - 14
    _kill(m)                            # what the page cache wrote back is in the memfd
    _drop_cache(m.path / "mapped")
    assert (m.path / "mapped").read_bytes() == data


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytestmark_root
def test_journal_does_not_grow_with_the_data(start: Any) -> None:
    m = start()
    before = m.status()["journal_bytes"]
    data = _pattern(32 * MiB, 3)
    with open(m.path / "f", "wb") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i:i + MiB])
    grew = m.status()["journal_bytes"] - before
    assert grew < len(data) // 100, grew        # headers only: ~0.1 % of the bytes
    _kill(m)
    _drop_cache(m.path / "f")
    assert (m.path / "f").read_bytes() == data


def _rss_case(m: Mount, mib: int) -> None:
    pid = int(m.status()["server_pid"])
    base = _status_kib(pid, "VmRSS") * 1024
    chunk = _pattern(MiB, 4)
    with open(m.path / "big", "wb") as f:
        for _ in range(mib):
            f.write(chunk)
    hwm = _status_kib(pid, "VmHWM") * 1024
    data = mib * MiB
    # the data pages (shared with the memfd) plus a constant: no journal copy, no
    # snapshot of the bytes
    assert hwm - base < data + 48 * MiB, (hwm - base) / MiB
    held = _data_memfd(m)
    assert data <= held.st_blocks * 512 < data + 4 * MiB
    _kill(m)
    new = int(m.status()["server_pid"])
    assert _status_kib(new, "VmHWM") * 1024 < base + 48 * MiB      # no data loaded
    _drop_cache(m.path / "big")
    with open(m.path / "big", "rb") as f:
        for _ in range(mib):
            assert f.read(MiB) == chunk


@pytestmark_root
def test_server_memory_is_bounded_by_the_data(start: Any) -> None:
    _rss_case(start(), 64)


@pytestmark_root
@pytest.mark.slow
def test_server_memory_is_bounded_by_the_data_256mib(start: Any) -> None:
    _rss_case(start(), 256)


@pytestmark_root
def test_freed_blocks_are_reused_and_released(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSEWIRE_COMPACT_RECORDS", "300")   # snapshots come quickly
    m = start()
    first = _pattern(16 * MiB, 5)
    (m.path / "a").write_bytes(first)
    size_a = _data_memfd(m).st_size
    os.unlink(m.path / "a")
    # a file written before the next snapshot gets new blocks (a replay of the log may
    # still see the old file's), and survives a kill that replays exactly that
    (m.path / "b").write_bytes(_pattern(2 * MiB, 6))
    _kill(m)
    assert (m.path / "b").read_bytes() == _pattern(2 * MiB, 6)
    compactions = m.status()["compactions"]
    deadline = time.monotonic() + 30
    i = 0
    while m.status()["compactions"] == compactions and time.monotonic() < deadline:
        (m.path / f"t{i}").touch()                          # records until a snapshot
        i += 1
    assert m.status()["compactions"] > compactions
    # the keeper counts the compaction when the server hands it the new journal; the
    # server releases the quarantined blocks just after that, before it reads the
    # next request: one more request that must reach it (a CREATE) orders the two
    (m.path / "after-compaction").touch()
    held = _data_memfd(m)
    assert held.st_blocks * 512 < 4 * MiB                   # a's memory went back
    (m.path / "c").write_bytes(_pattern(12 * MiB, 7))       # into a's old blocks
    assert _data_memfd(m).st_size == size_a                 # no new space
    _kill(m)
    assert (m.path / "b").read_bytes() == _pattern(2 * MiB, 6)
    assert (m.path / "c").read_bytes() == _pattern(12 * MiB, 7)


def test_a_flush_that_drops_no_lock_is_not_journaled() -> None:
    # fusewire.nothing_changed(): memfs's FLUSH without a lock to drop is not journaled;
    # one that drops a POSIX lock is (a replay must drop it too)
    fs = MemFS()
    nodes = jn.JournaledNodeTable()
    writer = jn.JournalWriter(jn.new_memfd(), 8)
    nodes.writer = writer
    rj = RecoveryJournal(writer, nodes, jn.JournalState(), CrashHook(None))
    d = RecordingDispatcher(fs, ready(45), nodes=nodes, journal=rj)
    d.rjournal = rj
    recovery_api.sticky_clock(True)
    try:
        d.dispatch(msg(Opcode.CREATE, 10, ROOT, struct.pack(
            "<IIII", os.O_RDWR | os.O_CREAT, 0o100644, 0o22, 0) + b"f\0"))
        ino, fh = fs.lookup(ROOT, b"f", CTX).st_ino, 1
        before = writer.records
        d.dispatch(msg(Opcode.FLUSH, 12, ino, struct.pack("<QIIQ", fh, 0, 0, 77)))
        assert writer.records == before                 # nothing to drop: not journaled
        d.dispatch(msg(Opcode.SETLK, 14, ino, struct.pack(
            "<QQQQIIII", fh, 77, 0, 9, fcntl.F_WRLCK, 1234, 0, 0)))
        assert writer.records == before + 1
        d.dispatch(msg(Opcode.FLUSH, 16, ino, struct.pack("<QIIQ", fh, 0, 0, 77)))
        assert writer.records == before + 2             # the lock went: journaled
        state = jn.load(jn.read_all(writer.fd))
        assert [struct.unpack_from("<I", raw, 4)[0] for _, raw, _ in state.requests] == [
            Opcode.CREATE, Opcode.SETLK, Opcode.FLUSH]
    finally:
        recovery_api.sticky_clock(False)
