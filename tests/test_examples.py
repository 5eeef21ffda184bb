"""The cookbook (top-level examples/): each example mounted for real and used."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import conftest
import pytest
from script_mount import start_script

EXAMPLES = conftest.REPO_ROOT / "examples"

pytestmark = pytest.mark.fuse


def _run(*argv: str, cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=60).stdout


def test_hello_is_the_readme_tutorial() -> None:
    readme = (conftest.REPO_ROOT / "README.md").read_text()
    tutorial = readme[readme.index("## Tutorial"):]
    block = re.search(r"```python\n(.*?)```", tutorial, re.S)
    assert block is not None
    assert (EXAMPLES / "hello.py").read_text() == block.group(1)


def test_hello(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    srv = start_script([str(EXAMPLES / "hello.py"), str(mnt)], mnt, tmp_path)
    try:
        assert _run("ls", "-a", cwd=mnt).split() == [".", "..", "hello"]
        assert _run("cat", "hello", cwd=mnt) == "hello, world\n"
        with pytest.raises(OSError) as info:
            (mnt / "nope").read_bytes()
        assert info.value.errno == errno.ENOENT
    finally:
        srv.close()


def test_jsonfs(tmp_path: Path) -> None:
    data = {"etc": {"motd": "hello\n", "limits": {"files": 3}}, "n": 42, "list": [1, "a"]}
    doc = tmp_path / "data.json"
    doc.write_text(json.dumps(data))
    mnt = tmp_path / "mnt"
    srv = start_script([str(EXAMPLES / "jsonfs.py"), str(doc), str(mnt)], mnt, tmp_path)
    try:
        assert sorted(_run("ls", cwd=mnt).split()) == ["etc", "list", "n"]
        assert _run("cat", "etc/motd", cwd=mnt) == "hello\n"
        assert _run("cat", "n", cwd=mnt) == "42"
        assert json.loads((mnt / "list").read_text()) == [1, "a"]
        assert json.loads((mnt / "etc/limits/files").read_text()) == 3
        found = _run("find", ".", "-type", "f", cwd=mnt).split()
        assert sorted(found) == ["./etc/limits/files", "./etc/motd", "./list", "./n"]
        for attempt in (lambda: (mnt / "n").write_text("1"), lambda: os.mkdir(mnt / "d"),
                        lambda: os.unlink(mnt / "n")):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
    finally:
        srv.close()


def test_jsonfs_bad_input_is_one_line(tmp_path: Path) -> None:
    doc = tmp_path / "bad.json"
    doc.write_text("{not json")
    r = subprocess.run([sys.executable, str(EXAMPLES / "jsonfs.py"), str(doc),
                        str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env=conftest.server_env())
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "bad.json" in r.stderr


def test_mirror(tmp_path: Path, tmpfs_factory: Any) -> None:
    src = tmpfs_factory()
    (src / "existing").write_text("was here\n")
    mnt = tmp_path / "mnt"
    srv = start_script([str(EXAMPLES / "mirror.py"), str(src), str(mnt)], mnt, tmp_path)
    try:
        assert _run("cat", "existing", cwd=mnt) == "was here\n"
        _run("sh", "-c", "mkdir -p a/b && echo new > a/b/f && mv a c && cp c/b/f g", cwd=mnt)
        assert (src / "c/b/f").read_text() == "new\n" and (src / "g").read_text() == "new\n"
        _run("rm", "-r", "c", cwd=mnt)
        assert sorted(os.listdir(src)) == ["existing", "g"]
    finally:
        srv.close()


def test_pyfuse3_slow(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    srv = start_script([str(EXAMPLES / "pyfuse3_slow.py"), str(mnt), "0.2"], mnt, tmp_path)
    try:
        assert sorted(_run("ls", cwd=mnt).split()) == ["alpha", "beta", "gamma", "ticks"]
        t0 = time.monotonic()
        first = (mnt / "alpha").read_text()
        assert time.monotonic() - t0 >= 0.2               # one fetch from the slow source
        assert first.startswith("alpha: fetched at ")
        assert (mnt / "alpha").read_text() == first       # within the TTL: from memory
        ticks = int((mnt / "ticks").read_text())
        assert ticks > 0                                  # the loop's other task ran
        with pytest.raises(OSError) as info:
            (mnt / "beta").write_text("x")
        assert info.value.errno == errno.EROFS
    finally:
        srv.close()
