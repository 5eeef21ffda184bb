"""Replay: a capture of git running on a real memfs mount, replayed into fresh filesystems.

A fresh, correct MemFS must answer every recorded request the same way
(after normalising timestamps, handles, nodeids, generation and statfs
counts); a MemFS with a deliberately injected bug must not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusewire.examples.memfs import MemFS
from fusewire.operations import Operations
from fusewire.testing.capture import CaptureReader, CaptureWriter
from fusewire.testing.replay import Normaliser, assert_replay_matches, replay
from fusewire.types import EntryAttributes, RequestContext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_capture import REPO_ROOT, pytestmark, record_git_capture

__all__ = ["pytestmark"]


@pytest.fixture(scope="module")
def git_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_git_capture(tmp_path_factory.mktemp("replay"))


def test_replay_git_clone_matches_fresh_memfs(git_capture: Path) -> None:
    report = assert_replay_matches(git_capture, MemFS)
    assert report.ok
    assert report.compared > 100
    assert report.replayed >= report.compared
    # nodeids and handles were learned through the bijection
    assert len(report.nodeids) > 10 and report.handles


class ShortWriteMemFS(MemFS):
    """Injected bug: every write drops its last byte (and says so)."""

    def write(self, fh: int, offset: int, data: memoryview) -> int:
        if len(data) > 1:
            data = data[:-1]
        return int(super().write(fh, offset, data))


class SizePlusOneMemFS(MemFS):
    """Injected bug: getattr reports one byte more than the file holds."""

    def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        attr = super().getattr(inode, ctx)
        if attr.st_mode & 0o170000 == 0o100000:
            attr.st_size += 1
        return attr


@pytest.mark.parametrize("broken", [ShortWriteMemFS, SizePlusOneMemFS])
def test_injected_bug_is_caught(git_capture: Path, broken: type[Operations]) -> None:
    report = replay(git_capture, broken)
    assert not report.ok
    assert report.differences
    ops = {d.opcode for d in report.differences}
    assert not any(d.path == "error" for d in report.differences), report.differences[:3]
    if broken is ShortWriteMemFS:
        assert any(d.opcode == "WRITE" and d.path == "write_out.size"
                   for d in report.differences)
    else:
        assert any(d.opcode == "GETATTR" and d.path == "attr_out.attr.size"
                   for d in report.differences), sorted(ops)
    with pytest.raises(AssertionError, match="differences"):
        assert_replay_matches(git_capture, broken)


def test_normaliser_is_what_hides_timestamps(git_capture: Path) -> None:
    """Without the timestamp normalisation a fresh replay does differ (the clock moved)."""
    strict = Normaliser(ignore=frozenset({"generation", "bfree", "bavail", "ffree", "blocks"}))
    report = replay(git_capture, MemFS, normalise=strict)
    assert not report.ok
    leaves = {d.path.rsplit(".", 1)[-1] for d in report.differences}
    assert leaves <= {"atime", "mtime", "ctime", "btime", "atimensec", "mtimensec",
                      "ctimensec", "tv_sec", "tv_nsec"}, leaves


def test_unanswered_requests_are_skipped(git_capture: Path, tmp_path: Path) -> None:
    """Drop a reply from the capture: its request is skipped, the rest still matches."""
    reader = CaptureReader(git_capture)
    recs = reader.records
    # the reply to a GETATTR (read-only, so skipping it changes nothing downstream)
    victim = next(r for r in recs if r.kind == 2 and any(
        q.kind == 1 and q.unique == r.unique and q.opcode == 3 for q in recs))
    out = tmp_path / "dropped.fwcap"
    w = CaptureWriter(out)
    for r in recs:
        if r is not victim:
            w.write(r.kind, [r.payload])
    w.close()
    report = replay(out, MemFS)
    assert report.ok, "\n".join(d.render() for d in report.differences[:10])
    assert (victim.unique, "GETATTR", "never answered") in report.skipped


def test_replay_cli(git_capture: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    ok = subprocess.run([sys.executable, "-m", "fusewire", "replay", str(git_capture)],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 differences" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "fusewire", "replay", str(git_capture),
                          "--ops", "test_replay:ShortWriteMemFS"],
                         capture_output=True, text=True, timeout=120,
                         env=dict(env, PYTHONPATH=f"{REPO_ROOT}:{Path(__file__).parent}"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "WRITE" in bad.stdout
