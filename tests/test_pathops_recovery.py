"""A path filesystem over a directory (examples/mirror.py), mounted recoverable:
the SIGKILL soak that memfs and passthrough pass (tests/test_recovery.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_recovery as rec

from fusewire.recovery import commands

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="recoverable mounts need root")]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def mirror_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[rec.Mount]:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(run))
    mnt, src = tmp_path / "mnt", tmp_path / "src"
    mnt.mkdir()
    src.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(rec.REPO), str(EXAMPLES)])
    env.pop("FUSEWIRE_CRASH_AT", None)
    logpath = tmp_path / "keeper.log"
    with open(logpath, "ab") as log:
        keeper = subprocess.Popen([sys.executable, "-m", "fusewire.recovery.keeper",
                                   "mirror:Mirror", str(src), str(mnt)], env=env,
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    m = rec.Mount(mnt, keeper, "mirror:Mirror", src, logpath)
    try:
        st = commands.wait_ready(str(mnt), 20.0, keeper=keeper)
        assert st is not None, logpath.read_text()
        assert st.get("recovery") == "handles", st
        m.status()
        yield m
    finally:
        rec._cleanup(m)


def _soak(m: rec.Mount, tmp_path: Path, kills: int) -> None:
    total = rec._workload(m, tmp_path, rec._kill, kills)
    assert m.status()["restarts"] == kills
    print(f"soak mirror: {kills} SIGKILLs, {total} client operations, 0 errors")


def test_path_fs_survives_sigkills(mirror_mount: rec.Mount, tmp_path: Path) -> None:
    _soak(mirror_mount, tmp_path, 3)


@pytest.mark.slow
def test_path_fs_soak_long(mirror_mount: rec.Mount, tmp_path: Path) -> None:
    _soak(mirror_mount, tmp_path, int(os.environ.get("FUSEWIRE_SOAK_KILLS", "20")))


def test_renamed_tree_and_open_unlinked_file_survive_a_crash(mirror_mount: rec.Mount) -> None:
    m = mirror_mount
    assert m.source is not None
    (m.path / "d/sub").mkdir(parents=True)
    (m.path / "d/sub/f").write_bytes(b"before")
    (m.path / "g").write_bytes(b"unlinked but open")
    fd = os.open(m.path / "d/sub/f", os.O_RDWR)
    gfd = os.open(m.path / "g", os.O_RDONLY)
    try:
        os.rename(m.path / "d", m.path / "e")      # the kernel keeps its nodes for d/sub/f
        os.unlink(m.path / "g")
        rec._kill(m)
        os.pwrite(fd, b"AFTER!", 0)                 # through a handle from before the crash
        assert (m.source / "e/sub/f").read_bytes() == b"AFTER!"
        os.fchmod(fd, 0o600)
        assert (m.source / "e/sub/f").stat().st_mode & 0o777 == 0o600
        assert os.stat(m.path / "e/sub/f").st_size == 6
        assert os.pread(gfd, 100, 0) == b"unlinked but open"
        assert sorted(os.listdir(m.path)) == ["e"]
        rec._kill(m)                                  # and once more, after the renames
        (m.path / "e/sub/new").write_text("x")
        os.rename(m.path / "e/sub", m.path / "s2")
        assert (m.source / "s2/new").read_text() == "x"
        assert os.pread(fd, 6, 0) == b"AFTER!"
    finally:
        os.close(fd)
        os.close(gfd)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            p.name.startswith(".fuse_hidden") for p in m.source.iterdir()):
        time.sleep(0.02)                              # RELEASE is asynchronous
    assert sorted(p.name for p in m.source.iterdir()) == ["e", "s2"]
