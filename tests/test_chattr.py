"""chattr(1) and lsattr(1) on memfs and passthrough, with tmpfs as the reference.

The errno-by-errno comparison of every operation on +i/+a files and
directories is in the differential suite (tests/posix.py, ``chattr_*``);
here the real e2fsprogs tools run on each filesystem and must print and
refuse the same, and memfs keeps the flags across a state dump (recovery).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest

from fusewire.examples.memfs import FS_APPEND_FL, FS_IMMUTABLE_FL, MemFS
from fusewire.types import FUSEError, RequestContext

pytestmark = pytest.mark.skipif(shutil.which("chattr") is None or shutil.which("lsattr") is None,
                                reason="e2fsprogs (chattr, lsattr) is not installed")


def _session(root: Path) -> list[str]:
    """chattr/lsattr as a person uses them; one line of outcome per step."""
    f = root / "f"
    f.write_text("data\n")
    (root / "d").mkdir()
    out = []

    def run(*argv: str) -> None:
        r = subprocess.run(list(argv), capture_output=True, text=True, cwd=root)
        text = (r.stdout + r.stderr).replace(str(root) + "/", "").strip()
        out.append(f"{' '.join(argv[:-1])} -> {r.returncode} {text.split(' ')[0]}")

    run("chattr", "+i", str(f))
    run("lsattr", str(f))
    run("sh", "-c", "echo more >> f", str(f))
    run("rm", "-f", str(f))
    run("chattr", "-i", "+a", str(f))
    run("lsattr", str(f))
    run("sh", "-c", "echo more >> f", str(f))
    run("sh", "-c", "echo over > f", str(f))
    run("chattr", "-a", str(f))
    run("chattr", "+i", str(root / "d"))
    run("lsattr", "-d", str(root / "d"))
    run("touch", str(root / "d" / "new"))
    run("chattr", "-i", str(root / "d"))
    run("touch", str(root / "d" / "new"))
    out.append(f.read_text())
    return out


@pytest.mark.fuse
def test_chattr_lsattr_like_tmpfs(tmpfs_dir: Path, memfs_mount: Path,
                                  passthrough_mount: Path) -> None:
    want = _session(tmpfs_dir)
    assert "lsattr -> 0 ----i---------------" in want[1], want
    assert want[-1] == "data\nmore\n", want
    assert _session(memfs_mount) == want
    assert _session(passthrough_mount) == want


def test_memfs_flags_survive_a_state_dump() -> None:
    ctx = RequestContext(0, 0, 0, 0o022)
    fs = MemFS()
    fi, attr = fs.create(1, b"f", 0o100644, 1, ctx)
    fs.ioctl(fi.fh, 0x40086602, 0, (FS_IMMUTABLE_FL | FS_APPEND_FL).to_bytes(4, "little"),
             0, 0, ctx)
    blob = fs.dump_state()
    other = MemFS()
    other.load_state(blob)
    assert other.ioctl(fi.fh, 0x80086601, 0, b"", 4, 0, ctx)[1] == \
        (FS_IMMUTABLE_FL | FS_APPEND_FL).to_bytes(4, "little")
    with pytest.raises(FUSEError) as err:
        other.unlink(1, b"f", ctx)
    assert err.value.errno == errno.EPERM
