"""The same random operations on MemFS (through the emulator) and on a host directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusewire.examples.memfs import MemFS
from fusewire.testing.emulator import KernelEmulator

_P = st.sampled_from(["a", "b", "d", "d/a", "d/b", "e"])
OPS = st.lists(st.one_of(
    st.tuples(st.just("mkdir"), _P),
    st.tuples(st.just("write"), _P, st.binary(max_size=32), st.integers(0, 8)),
    st.tuples(st.just("unlink"), _P),
    st.tuples(st.just("rmdir"), _P),
    st.tuples(st.just("rename"), _P, _P),
    st.tuples(st.just("link"), _P, _P),
    st.tuples(st.just("truncate"), _P, st.integers(0, 40)),
    st.tuples(st.just("stat"), _P),
    st.tuples(st.just("read"), _P),
    st.tuples(st.just("list"), st.sampled_from(["", "d"])),
), max_size=25)


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("err", exc.errno)


def _host(root: str, op: tuple[Any, ...]) -> Any:
    p = lambda s: os.path.join(root, s)  # noqa: E731
    kind = op[0]
    if kind == "mkdir":
        return _outcome(lambda: os.mkdir(p(op[1]), 0o755) and None)
    if kind == "write":
        def w() -> int:
            fd = os.open(p(op[1]), os.O_CREAT | os.O_RDWR, 0o644)
            try:
                return os.pwrite(fd, op[2], op[3])
            finally:
                os.close(fd)
        return _outcome(w)
    if kind == "unlink":
        return _outcome(lambda: os.unlink(p(op[1])))
    if kind == "rmdir":
        return _outcome(lambda: os.rmdir(p(op[1])))
    if kind == "rename":
        return _outcome(lambda: os.rename(p(op[1]), p(op[2])))
    if kind == "link":
        return _outcome(lambda: os.link(p(op[1]), p(op[2])))
    if kind == "truncate":
        return _outcome(lambda: os.truncate(p(op[1]), op[2]))
    if kind == "stat":
        def s() -> tuple[int, int, int]:
            st_ = os.lstat(p(op[1]))
            return st_.st_mode & 0o170777, st_.st_nlink, st_.st_size if not \
                os.path.isdir(p(op[1])) else -1
        return _outcome(s)
    if kind == "read":
        def r() -> bytes:
            with open(p(op[1]), "rb") as f:
                return f.read()
        return _outcome(r)
    return _outcome(lambda: sorted(os.fsencode(n) for n in os.listdir(p(op[1]) or root)))


def _emu(e: KernelEmulator, op: tuple[Any, ...]) -> Any:
    kind = op[0]
    path = "/" + op[1]
    if kind == "mkdir":
        return _outcome(lambda: e.mkdir(path, 0o755) and None)
    if kind == "write":
        def w() -> int:
            h = e.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                return e.write(h, op[2], op[3])
            finally:
                e.close(h)
        return _outcome(w)
    if kind == "unlink":
        return _outcome(lambda: e.unlink(path))
    if kind == "rmdir":
        return _outcome(lambda: e.rmdir(path))
    if kind == "rename":
        return _outcome(lambda: e.rename(path, "/" + op[2]))
    if kind == "link":
        return _outcome(lambda: e.link(path, "/" + op[2]) and None)
    if kind == "truncate":
        return _outcome(lambda: e.truncate(path, op[2]) and None)
    if kind == "stat":
        def s() -> tuple[int, int, int]:
            a = e.stat(path)
            return a.mode & 0o170777, a.nlink, a.size if a.mode & 0o170000 != 0o040000 else -1
        return _outcome(s)
    if kind == "read":
        def r() -> bytes:
            h = e.open(path, os.O_RDONLY)
            try:
                return e.read(h, 1 << 16, 0)
            finally:
                e.close(h)
        return _outcome(r)
    return _outcome(lambda: sorted(e.readdir(path)))


@settings(max_examples=int(os.environ.get("FUSEWIRE_DIFF_EXAMPLES", "50")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ops=OPS, minor=st.sampled_from([19, 45]))
def test_memfs_matches_host(ops: list[tuple[Any, ...]], minor: int) -> None:
    old = os.umask(0o022)
    root = tempfile.mkdtemp(prefix="fusewire-diff-")
    try:
        e = KernelEmulator(MemFS(), minor=minor, umask=0o022)
        for op in ops:
            host, emu = _host(root, op), _emu(e, op)
            if op[0] == "write" and host[0] == "err" and emu[0] == "err":
                continue
            assert host == emu, (op, host, emu)
    finally:
        os.umask(old)
        shutil.rmtree(root)
