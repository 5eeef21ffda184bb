"""Capture files: recorded from real mounts running real programs (git), read back.

Every mount here is served by a ``python -m fusewire mount memfs MNT -f
--capture FILE`` child process that this module starts; teardown unmounts,
then stops exactly that pid.  :func:`record_git_capture` is reused by
``test_replay.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import conftest
import pytest

from fusewire.opcodes.flags import Opcode
from fusewire.opcodes.table import OPS
from fusewire.testing.capture import (
    FILE_HEADER_SIZE,
    CaptureError,
    CaptureReader,
    CaptureWriter,
    Kind,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]


# --------------------------------------------------------------------------
# helpers (also used by test_replay.py)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    return env


def _mounted(mnt: Path) -> bool:
    target = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and fields[4] == target and right.startswith("fuse"):
                return True
    return False


class CapturedMount:
    """A memfs mount served by a child process that records to ``capture``."""

    def __init__(self, tmp: Path, name: str = "cap") -> None:
        self.mnt = tmp / f"{name}-mnt"
        self.capture = tmp / f"{name}.fwcap"
        self.errfile = tmp / f"{name}.stderr"
        self.mnt.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen(
                [PY, "-m", "fusewire", "mount", "memfs", str(self.mnt), "-f",
                 "--capture", str(self.capture)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=_env())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.errfile.read_text()[-2000:]}")
            if _mounted(self.mnt):
                os.stat(self.mnt)  # blocks until INIT is answered
                return
            time.sleep(0.02)
        raise RuntimeError("mount did not appear")

    def unmount(self) -> None:
        """Clean unmount; the server sees ENODEV, closes the capture and exits."""
        if _mounted(self.mnt):
            subprocess.run([PY, "-m", "fusewire", "umount", str(self.mnt)], env=_env(),
                           check=False, capture_output=True, timeout=30)
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self) -> None:
        """Always safe: lazy unmount if still mounted, stop our own pid only."""
        if _mounted(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], check=False, capture_output=True)
        if self.proc is not None:
            conftest.stop_process(self.proc)


def _git(*args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com",
               GIT_AUTHOR_DATE="2024-01-01T00:00:00Z",
               GIT_COMMITTER_DATE="2024-01-01T00:00:00Z")
    res = subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    if res.returncode:
        raise AssertionError(f"git {' '.join(args)} failed ({res.returncode}):\n"
                             f"{res.stdout}\n{res.stderr}")
    return res.stdout


def git_workload(src: Path, mnt: Path) -> None:
    """A small repository outside the mount, cloned into it, checked, edited."""
    src.mkdir()
    _git("init", "-q", str(src))
    for i in range(3):
        (src / f"file{i}.txt").write_text(f"content {i}\n" * (i * 50 + 1))
        (src / "sub").mkdir(exist_ok=True)
        (src / "sub" / f"n{i}.py").write_text(f"x = {i}\n")
        _git("add", "-A", cwd=src)
        _git("commit", "-q", "-m", f"commit {i}", cwd=src)
    clone = mnt / "clone"
    _git("clone", "-q", "--no-local", str(src), str(clone))
    _git("-C", str(clone), "fsck", "--full")
    (clone / "new.txt").write_text("new file\n")
    _git("-C", str(clone), "add", "new.txt")
    _git("-C", str(clone), "commit", "-q", "-m", "in the mount")
    assert "in the mount" in _git("-C", str(clone), "log", "--oneline")
    shutil.copytree(clone / "sub", mnt / "copy")
    listing = subprocess.run(["ls", "-laR", str(mnt)], capture_output=True, text=True,
                             check=True).stdout
    assert "n2.py" in listing
    shutil.rmtree(mnt / "copy")
    os.unlink(clone / "file0.txt")


def record_git_capture(tmp: Path) -> Path:
    """Run :func:`git_workload` on a captured memfs mount; return the capture path."""
    m = CapturedMount(tmp)
    try:
        m.start()
        git_workload(tmp / "src", m.mnt)
        m.unmount()
        assert m.proc is not None and m.proc.returncode == 0, m.errfile.read_text()[-2000:]
    finally:
        m.cleanup()
    return m.capture


# --------------------------------------------------------------------------
# the git capture


@pytest.fixture(scope="module")
def git_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_git_capture(tmp_path_factory.mktemp("gitcap"))


def test_git_capture_structure(git_capture: Path) -> None:
    reader = CaptureReader(git_capture)
    assert reader.clean, "the server closed the capture on unmount (END record)"
    assert reader.dropped_bytes == 0
    assert reader.header.pid > 0
    recs = reader.records
    assert recs[0].kind == Kind.REQUEST and recs[0].opcode == Opcode.INIT
    assert recs[1].kind == Kind.REPLY and recs[1].unique == recs[0].unique
    session = reader.session()
    assert session.minor >= 7 and session.max_write >= 4096
    # timestamps never go backwards in file order
    times = [r.time_ns for r in recs]
    assert times == sorted(times)
    assert all(r.offset_ns >= 0 for r in recs)
    # every reply answers an earlier request, at most once; every answerable request
    # is answered (interrupted ones may legitimately not be)
    asked: dict[int, int] = {}
    answered: set[int] = set()
    for r in recs:
        if r.kind == Kind.REQUEST:
            assert r.unique not in asked
            asked[r.unique] = r.opcode or 0
        elif r.kind == Kind.REPLY:
            assert r.unique in asked, f"reply to unknown unique {r.unique:#x}"
            assert r.unique not in answered
            answered.add(r.unique)
    unanswered = [u for u, op in asked.items()
                  if u not in answered and not OPS[op].no_reply and op != Opcode.INTERRUPT]
    assert not unanswered
    seen = {OPS[op].name for op in asked.values()}
    for name in ("LOOKUP", "CREATE", "WRITE", "READ", "MKDIR", "UNLINK", "RMDIR"):
        assert name in seen, f"git workload never sent {name}: {sorted(seen)}"
    assert seen & {"RENAME", "RENAME2"}


def test_torn_last_record_is_dropped(git_capture: Path, tmp_path: Path) -> None:
    data = git_capture.read_bytes()
    full = CaptureReader(git_capture)
    last = full.records[-1]
    # the END record follows the last data record; tear the last data record instead
    cut = last.file_offset + 24 + len(last.payload) // 2
    torn = tmp_path / "torn.fwcap"
    torn.write_bytes(data[:cut])
    reader = CaptureReader(torn)
    assert len(reader.records) == len(full.records) - 1
    assert reader.records == full.records[:-1]
    assert reader.dropped_bytes == cut - last.file_offset
    assert "torn" in reader.drop_reason
    assert not reader.clean
    # a flipped byte inside a record is caught by the CRC: everything from it is dropped
    mid = full.records[len(full.records) // 2]
    bad = bytearray(data)
    bad[mid.file_offset + 20] ^= 0xFF
    (tmp_path / "bad.fwcap").write_bytes(bytes(bad))
    reader = CaptureReader(tmp_path / "bad.fwcap")
    assert len(reader.records) == mid.index
    assert reader.drop_reason == "record CRC mismatch"
    assert reader.dropped_bytes == len(data) - mid.file_offset
    # a cut inside the record header is also just a torn tail
    (tmp_path / "hdr.fwcap").write_bytes(data[:last.file_offset + 5])
    assert len(CaptureReader(tmp_path / "hdr.fwcap").records) == len(full.records) - 1


def test_not_a_capture(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"hello" * 20)
    with pytest.raises(CaptureError):
        CaptureReader(p)
    w = CaptureWriter(tmp_path / "empty.fwcap")
    w.close()
    w.close()
    r = CaptureReader(tmp_path / "empty.fwcap")
    assert r.clean and r.records == [] and r.dropped_bytes == 0
    assert os.path.getsize(tmp_path / "empty.fwcap") == FILE_HEADER_SIZE + 24


def test_writer_threads_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "threads.fwcap"
    w = CaptureWriter(path)

    def body(k: int) -> None:
        for i in range(300):
            w.reply([bytes([k]) * (16 + i % 97)])

    threads = [threading.Thread(target=body, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    r = CaptureReader(path)
    assert len(r.records) == 8 * 300 and r.clean
    for rec in r.records:
        assert len(set(rec.payload)) == 1


def test_sigkill_mid_capture_leaves_a_readable_file(tmp_path: Path) -> None:
    m = CapturedMount(tmp_path, "kill")
    stop = threading.Event()
    busy = threading.Event()    # enough traffic recorded to kill the server mid-stream
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        while not stop.is_set():
            if i == 30:
                busy.set()
            try:
                p = m.mnt / f"f{i % 20}"
                p.write_bytes(b"x" * (i % 5000))
                os.stat(p)
                if i % 3 == 0:
                    os.unlink(p)
            except OSError as exc:  # ENOTCONN once the server is gone
                errors.append(exc)
                return
            i += 1

    t = threading.Thread(target=churn, daemon=True)
    try:
        m.start()
        t.start()
        assert busy.wait(60), errors
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(10)
        stop.set()
        t.join(10)
    finally:
        stop.set()
        m.cleanup()
    reader = CaptureReader(m.capture)
    assert not reader.clean
    assert len(reader.records) > 20
    assert reader.records[0].opcode == Opcode.INIT
    # one os.write per record: a kill leaves whole records only
    assert reader.dropped_bytes == 0
    assert reader.session().minor >= 7
    times = [r.time_ns for r in reader.records]
    assert times == sorted(times)
    # what was recorded before the kill replays cleanly (an unanswered last request is
    # skipped)
    from fusewire.examples.memfs import MemFS
    from fusewire.testing.replay import assert_replay_matches

    assert_replay_matches(m.capture, MemFS)
