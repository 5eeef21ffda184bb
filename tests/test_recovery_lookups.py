"""Lookup counts in the recovery journal: only a node's first lookup is journaled.

A successor counts every node the kernel holds as looked up once ("at least
one"), and the kernel's final FORGET of a node releases it whatever its count
(docs/recovery.md, "Lookup counts").  Repeated lookups of a known name therefore
cost no journal write.
"""

from __future__ import annotations

import os
import signal
from array import array
from pathlib import Path
from typing import Any

import pytest
from test_recovery import mounts

from fusewire.recovery import journal as jn

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="recoverable mounts need root"),
]


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    yield from mounts(tmp_path, monkeypatch)


def test_only_first_lookup_is_journaled_and_final_forget_releases_all() -> None:
    fd = jn.new_memfd()
    try:
        w = jn.JournalWriter(fd)
        nt = jn.JournaledNodeTable()
        nt.writer = w
        nt.add([5] * 10 + [6])
        blob = nt.take_pending()
        w.append_raw(blob)
        assert nt.counts == {5: 10, 6: 1}               # exact in memory
        assert jn.load(jn.read_all(fd)).nodes == {5: 1, 6: 1}
        nt.add([5])
        assert nt.take_pending() == b""                 # known node: nothing to write
        assert nt.forget(5, 3) == 3                     # partial: not journaled
        nt.flush_forgets()
        assert jn.load(jn.read_all(fd)).nodes == {5: 1, 6: 1}
        assert nt.forget(5, 100) == 8                   # final: journaled as "all"
        nt.flush_forgets()
        assert jn.load(jn.read_all(fd)).nodes == {6: 1}
        nt.add([5])                                     # back again: journaled again
        w.append_raw(nt.take_pending())
        assert jn.load(jn.read_all(fd)).nodes == {5: 1, 6: 1}
    finally:
        os.close(fd)


def test_counts_from_older_journals_load_as_one() -> None:
    """A journal written by code that journaled every lookup (an upgrade) loads
    with the same "at least one" counts."""
    fd = jn.new_memfd()
    try:
        w = jn.JournalWriter(fd)
        w.append(jn.RecordType.ADD, array("Q", [7, 7, 7, 8]).tobytes())
        w.append(jn.RecordType.FORGET, array("Q", [8, 1]).tobytes())
        assert jn.load(jn.read_all(fd)).nodes == {7: 1}
    finally:
        os.close(fd)


def test_repeated_lookups_do_not_grow_the_journal_and_survive_a_kill(start: Any) -> None:
    m = start(options=["entry_timeout=0", "attr_timeout=0"])
    f = m.path / "d" / "f"
    f.parent.mkdir()
    f.write_bytes(b"payload")
    os.stat(f)
    before = m.status()["journal_bytes"]
    for _ in range(500):                        # each one a LOOKUP (no entry cache)
        os.stat(f)
    after = m.status()["journal_bytes"]
    assert after == before, f"500 lookups of known nodes wrote {after - before} bytes"
    with open(f, "rb") as held:
        old = m.status()["server_pid"]
        os.kill(old, signal.SIGKILL)
        m.wait_new_server(old)
        assert held.read() == b"payload"
    for _ in range(50):
        assert os.stat(f).st_size == 7
    assert f.read_bytes() == b"payload"
    st = m.status()
    assert st["nodes"] >= 2                     # d and f, still known to the successor
