"""The path API on a real mount: examples/mirror.py (a PathOperations filesystem
over a private tmpfs) must behave like tmpfs in every check of tests/posix.py,
the differential suite memfs and passthrough pass (tests/test_posix.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest
from script_mount import ScriptServer, start_script

_spec = importlib.util.spec_from_file_location("fusewire_posix_suite_paths",
                                               Path(__file__).with_name("posix.py"))
assert _spec is not None and _spec.loader is not None
posix_suite = importlib.util.module_from_spec(_spec)
sys.modules["fusewire_posix_suite_paths"] = posix_suite
_spec.loader.exec_module(posix_suite)

CHECKS = list(posix_suite.CHECKS)
MIRROR = conftest.REPO_ROOT / "examples" / "mirror.py"

#: Behaviours a path API cannot have, each with the exact reason; xfail(strict=True).
_NO_IOCTL = ("the path API has no ioctl, so chattr's FS_IOC_GETFLAGS/SETFLAGS (immutable, "
             "append-only, inode flags) answer EOPNOTSUPP where tmpfs keeps the flags")
KNOWN_LIMITS: dict[str, str] = {
    **{name: _NO_IOCTL for name in CHECKS if name.startswith("chattr_")},
    "setid_cleared_by_unprivileged_write": "the path API passes no FUSE_WRITE_KILL_SUIDGID/"
    "FATTR_KILL_SUIDGID/FUSE_OPEN_KILL_SUIDGID and the mirror writes as the server (root, "
    "CAP_FSETID), so set-ID bits tmpfs clears for an unprivileged writer stay",
    "default_acl_inheritance": "the path API receives the mode already masked by the kernel "
    "(no DONT_MASK), so a parent's default ACL cannot take the umask's place",
}

pytestmark = pytest.mark.fuse


class _Mounts:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tmpfs: list[tuple[Path, bool]] = []
        self.server: ScriptServer | None = None
        self.ref_root: Path | None = None
        self.reference: dict[str, Any] = {}

    def mirror(self) -> Path:
        if self.server is None:
            src, mounted = conftest.make_tmpfs()
            self.tmpfs.append((src, mounted))
            self.server = start_script([str(MIRROR), str(src), str(self.tmp / "mnt"), "-o",
                                        conftest.MOUNT_OPTIONS], self.tmp / "mnt", self.tmp)
        return self.server.mountpoint

    def ref(self, name: str) -> Any:
        if self.ref_root is None:
            d, mounted = conftest.make_tmpfs()
            self.tmpfs.append((d, mounted))
            self.ref_root = d
        if name not in self.reference:
            self.reference[name] = posix_suite.run_check(name, self.ref_root)
        return self.reference[name]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for d, mounted in reversed(self.tmpfs):
            conftest.remove_tmpfs(d, mounted)


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Mounts]:
    m = _Mounts(tmp_path_factory.mktemp("pathops"))
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(autouse=True)
def _watchdog(mounts: _Mounts) -> Iterator[None]:
    if mounts.server is not None:
        mounts.server.rearm()
    yield
    if mounts.server is not None:
        mounts.server.disarm()


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


@pytest.mark.parametrize("check", CHECKS)
def test_path_api_same_as_tmpfs(mounts: _Mounts, check: str,
                                request: pytest.FixtureRequest) -> None:
    reason = KNOWN_LIMITS.get(check)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    root = mounts.mirror()
    ref = mounts.ref(check)
    if ref == posix_suite.UNSUPPORTED:
        pytest.skip(f"{check}: unsupported (EOPNOTSUPP) on tmpfs itself")
    got = posix_suite.run_check(check, root)
    if got == posix_suite.UNSUPPORTED:
        pytest.fail(f"{check}: EOPNOTSUPP on the path mirror but supported on tmpfs")
    diffs = _diff(ref, got)
    assert not diffs, f"the path mirror differs from tmpfs in {check}:\n" + "\n".join(diffs)
