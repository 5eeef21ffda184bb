"""Differential POSIX tests: memfs and passthrough must behave exactly like tmpfs.

passthrough runs twice: served by one process and by two (``--processes 2``).

Every check in tests/posix.py runs on a private tmpfs (the reference), on
memfs (as mounted by default, and ``memfs-acl`` with ``-o acl``: POSIX ACLs
on, as tmpfs has them) and on passthrough (whose source directory is itself
a private tmpfs), each in a fresh subdirectory; the normalised results must
be equal.  The
mounts are started once per module (one server process per filesystem) to
keep the runtime down.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest

_spec = importlib.util.spec_from_file_location("fusewire_posix_suite",
                                               Path(__file__).with_name("posix.py"))
assert _spec is not None and _spec.loader is not None
posix_suite = importlib.util.module_from_spec(_spec)
sys.modules["fusewire_posix_suite"] = posix_suite
_spec.loader.exec_module(posix_suite)

CHECKS = list(posix_suite.CHECKS)

#: Known bugs of the filesystems under test: (fs, check) -> exact reason.
#: Each makes the test xfail(strict=True) so a fix turns it red until removed.
KNOWN_BUGS: dict[tuple[str, str], str] = {
    ("memfs", "posix_acl_minimal"): "memfs's POSIX ACLs are opt-in (-o acl, checked as "
    "memfs-acl): without it memfs answers EOPNOTSUPP for system.posix_acl_* (so cp -a falls "
    "back to chmod) where tmpfs applies the ACL to the mode bits",
    ("memfs", "default_acl_inheritance"): "memfs's POSIX ACLs are opt-in (-o acl, checked "
    "as memfs-acl): without it there is no system.posix_acl_default, so nothing is inherited",
}

pytestmark = pytest.mark.fuse


class _Roots:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tmpfs: list[tuple[Path, bool]] = []
        self.servers: list[conftest.FuseServer] = []
        self.roots: dict[str, Path] = {}
        self.problems: dict[str, str] = {}
        self.reference: dict[str, Any] = {}

    def get(self, fs: str) -> Path:
        if fs in self.problems:
            pytest.skip(self.problems[fs])
        if fs in self.roots:
            return self.roots[fs]
        if fs == "tmpfs":
            d, mounted = conftest.make_tmpfs()
            self.tmpfs.append((d, mounted))
            self.roots[fs] = d
            return d
        problem = conftest.dev_fuse_problem()
        if problem is None and fs.startswith("passthrough"):
            problem = conftest.passthrough_problem()
        if problem is not None:
            self.problems[fs] = problem
            pytest.skip(problem)
        options = conftest.MOUNT_OPTIONS
        if fs == "memfs":
            argv = ["memfs"]
        elif fs == "memfs-acl":             # POSIX ACLs are opt-in (tmpfs has them)
            argv = ["memfs"]
            options += ",acl"
        else:
            src, mounted = conftest.make_tmpfs()
            self.tmpfs.append((src, mounted))
            argv = ["passthrough", str(src)]
            if fs == "passthrough-2proc":     # multi-process serving (issue 15)
                argv = ["--processes", "2", *argv]
            elif fs == "passthrough-2proc-recoverable":   # ... behind a keeper
                argv = ["--processes", "2", "--recoverable", *argv]
        srv = conftest.start_server(argv, self.tmp / f"{fs}-mnt", self.tmp, options)
        self.servers.append(srv)
        self.roots[fs] = srv.mountpoint
        return srv.mountpoint

    def close(self) -> None:
        for srv in reversed(self.servers):
            srv.close()
        for d, mounted in reversed(self.tmpfs):
            conftest.remove_tmpfs(d, mounted)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Roots]:
    r = _Roots(tmp_path_factory.mktemp("posix"))
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(autouse=True)
def _watchdogs(roots: _Roots) -> Iterator[None]:
    """One watchdog period per test, not per module, for the shared servers."""
    for srv in roots.servers:
        srv.rearm()
    yield
    for srv in roots.servers:
        srv.rearm()


def _reference(roots: _Roots, name: str) -> Any:
    if name not in roots.reference:
        roots.reference[name] = posix_suite.run_check(name, roots.get("tmpfs"))
    return roots.reference[name]


def _diff(ref: Any, got: Any, path: str = "") -> list[str]:
    if isinstance(ref, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(ref) | set(got), key=str):
            if k not in got:
                out.append(f"{path}.{k}: missing (tmpfs={ref[k]!r})")
            elif k not in ref:
                out.append(f"{path}.{k}: extra {got[k]!r}")
            else:
                out.extend(_diff(ref[k], got[k], f"{path}.{k}"))
        return out
    if ref != got:
        return [f"{path or '.'}: tmpfs={ref!r} got={got!r}"]
    return []


@pytest.mark.parametrize("fs", ["memfs", "memfs-acl", "passthrough", "passthrough-2proc",
                                "passthrough-2proc-recoverable"])
@pytest.mark.parametrize("check", CHECKS)
def test_same_as_tmpfs(roots: _Roots, check: str, fs: str, request: pytest.FixtureRequest) -> None:
    reason = KNOWN_BUGS.get((fs, check))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    root = roots.get(fs)
    ref = _reference(roots, check)
    if ref == posix_suite.UNSUPPORTED:
        pytest.skip(f"{check}: unsupported (EOPNOTSUPP) on tmpfs itself")
    got = posix_suite.run_check(check, root)
    if got == posix_suite.UNSUPPORTED:
        # skipping is only allowed where all filesystems lack it equally
        pytest.fail(f"{check}: EOPNOTSUPP on {fs} but supported on tmpfs")
    diffs = _diff(ref, got)
    assert not diffs, f"{fs} differs from tmpfs in {check}:\n" + "\n".join(diffs)


def test_reference_is_sane(roots: _Roots) -> None:
    """Spot-check that the reference (tmpfs) results are what POSIX says, so
    the differential test is not comparing two equally wrong answers."""
    roots.get("tmpfs")
    assert _reference(roots, "mkdir_rmdir")["rmdir_nonempty"] == "ENOTEMPTY"
    assert _reference(roots, "unlink")["unlink_dir"] == "EISDIR"
    assert _reference(roots, "o_excl")["again"] == "EEXIST"
    assert _reference(roots, "enametoolong")["create_256"] == "ENAMETOOLONG"
    perms = _reference(roots, "permissions_nonroot")
    assert perms["list_priv"] == "EACCES" and perms["read_pub"] == "public"
    assert perms["mine_owner"][:2] == [posix_suite.NOBODY, posix_suite.NOBODY]
    x = _reference(roots, "xattrs")
    assert x["create_existing"] == "EEXIST" and x["replace_missing"] == "ENODATA"


def test_posix_root_fixture(posix_root: Path) -> None:
    """The shared ``posix_root`` fixture gives a working, writable root on every fs."""
    r = posix_suite.run_check("create_read_write_append", posix_root)
    assert r["big_ok"] and r["after_append"] == "helWORLD+tail"
