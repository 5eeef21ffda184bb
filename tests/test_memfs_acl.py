"""POSIX ACLs on memfs (``-o acl``, ``MemFS(acl=True)``), on real mounts.

The kernel enforces the ACLs (FUSE_POSIX_ACL) from what memfs stores; memfs
sets the mode an access ACL implies, keeps the mask entry in step with
chmod, gives new objects their parent's default ACL instead of the umask,
and rejects malformed values.  Unprivileged accesses run in a forked child
as uid/gid 65534 with no supplementary groups.  The last test SIGKILLs the
server of a recoverable mount and checks the ACLs through its successor.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest
from test_recovery import Mount, mounts
from test_security import _posix_suite

from fusewire.examples.memfs import MemFS
from fusewire.examples.memfs_acl import (
    ACL_ACCESS,
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    decode_acl,
)
from fusewire.types import FUSEError, RequestContext

pytestmark = [pytest.mark.fuse, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="acts as uid 65534: needs root")]

NOBODY = 65534
NO_ID = 0xFFFFFFFF
ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"


def acl(*entries: tuple[int, int, int]) -> bytes:
    """An ACL xattr value (version 2, then tag u16, perm u16, id u32 per entry)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


#: user::rw- user:nobody:<perm> group::--- mask::<mask> other::---
def named(perm: int, mask: int, obj: int = 6) -> bytes:
    return acl((ACL_USER_OBJ, obj, NO_ID), (ACL_USER, perm, NOBODY),
               (ACL_GROUP_OBJ, 0, NO_ID), (ACL_MASK, mask, NO_ID), (ACL_OTHER, 0, NO_ID))


def as_nobody(fn: Callable[..., Any], path: Path, *args: Any) -> Any:
    """``attempt(fn, NAME, *args)`` in a forked child as uid/gid 65534 (no groups), in
    ``path``'s directory (the test's tmp directories above the mount are root's 0700)."""
    def body() -> Any:
        os.chdir(path.parent)
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        return attempt(fn, path.name, *args)
    return _posix_suite().in_child(body)


def attempt(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, "OK" for None, or the errno name it raised."""
    try:
        got = fn(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "OK" if got is None else got


def read(p: str | Path) -> str:
    with open(p) as f:
        return f.read()


def append(p: str | Path) -> None:
    with open(p, "a") as f:
        f.write("+")


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def entries(p: Path, name: str = ACCESS) -> list[tuple[int, int, int]]:
    return decode_acl(os.getxattr(p, name))


@pytest.fixture(scope="module")
def acl_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A memfs mount with ``-o acl`` (one server for the module)."""
    tmp = tmp_path_factory.mktemp("memfs-acl")
    srv = conftest.start_server(["memfs"], tmp / "mnt", tmp, conftest.MOUNT_OPTIONS + ",acl")
    try:
        yield srv.mountpoint
    finally:
        srv.close()


@pytest.fixture
def root(acl_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh world-searchable directory of the shared mount, per test."""
    d = acl_root / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    d.chmod(0o755)
    return d


def test_named_user_is_enforced(root: Path) -> None:
    f = root / "f"
    f.write_text("secret")
    f.chmod(0o600)
    assert as_nobody(read, f) == "EACCES"
    os.setxattr(f, ACCESS, named(4, 4))
    # the group bits show the mask; the kernel and getfacl see the named entry
    assert mode(f) == 0o640
    out = subprocess.run(["getfacl", "-n", str(f)], capture_output=True, text=True,
                         check=True).stdout
    assert f"user:{NOBODY}:r--" in out and "mask::r--" in out
    assert as_nobody(read, f) == "secret"
    assert as_nobody(append, f) == "EACCES"
    # a named group too: nobody is not in it, so nothing changes for them
    os.setxattr(f, ACCESS, acl((ACL_USER_OBJ, 6, NO_ID), (ACL_GROUP_OBJ, 0, NO_ID),
                               (ACL_GROUP, 6, NOBODY - 1), (ACL_MASK, 6, NO_ID),
                               (ACL_OTHER, 0, NO_ID)))
    assert as_nobody(read, f) == "EACCES"
    # setfacl: a write grant takes effect at once
    subprocess.run(["setfacl", "-m", f"u:{NOBODY}:rw", str(f)], check=True)
    assert as_nobody(append, f) == "OK"
    assert read(f) == "secret+"


def test_only_the_owner_sets_acls(root: Path) -> None:
    f = root / "f"
    f.write_text("x")
    f.chmod(0o666)
    assert as_nobody(os.setxattr, f, ACCESS, named(7, 7)) == "EPERM"
    assert as_nobody(os.removexattr, f, ACCESS) == "EPERM"


def test_chmod_updates_the_mask(root: Path) -> None:
    f = root / "f"
    f.write_text("data")
    os.setxattr(f, ACCESS, named(6, 6))
    assert mode(f) == 0o660
    assert as_nobody(append, f) == "OK"
    f.chmod(0o640)
    # the mask (not the owning group's entry) takes the group bits
    assert entries(f) == [(ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 6, NOBODY),
                          (ACL_GROUP_OBJ, 0, NO_ID), (ACL_MASK, 4, NO_ID),
                          (ACL_OTHER, 0, NO_ID)]
    assert as_nobody(append, f) == "EACCES"
    assert as_nobody(read, f) == "data+"
    f.chmod(0o704)
    assert entries(f)[0] == (ACL_USER_OBJ, 7, NO_ID)
    assert entries(f)[3:] == [(ACL_MASK, 0, NO_ID), (ACL_OTHER, 4, NO_ID)]
    assert mode(f) == 0o704


def test_mode_equivalent_acl_is_not_kept(root: Path) -> None:
    f = root / "f"
    f.write_text("")
    f.chmod(0o600)
    os.setxattr(f, ACCESS, acl((ACL_USER_OBJ, 6, NO_ID), (ACL_GROUP_OBJ, 5, NO_ID),
                               (ACL_OTHER, 4, NO_ID)))
    assert mode(f) == 0o654
    assert attempt(os.getxattr, f, ACCESS) == "ENODATA"
    assert ACCESS not in os.listxattr(f)


def test_default_acl_is_inherited_and_the_umask_ignored(root: Path) -> None:
    d = root / "d"
    d.mkdir(0o777)
    d.chmod(0o777)
    default = acl((ACL_USER_OBJ, 7, NO_ID), (ACL_USER, 7, NOBODY),
                  (ACL_GROUP_OBJ, 5, NO_ID), (ACL_MASK, 7, NO_ID), (ACL_OTHER, 0, NO_ID))
    os.setxattr(d, DEFAULT, default)
    old = os.umask(0o077)
    try:
        (d / "file").touch(0o666)
        (d / "sub").mkdir(0o777)
        (d / "sub" / "deep").touch(0o644)
        (d / "sub" / "deeper").mkdir(0o750)
        os.mknod(d / "fifo", stat.S_IFIFO | 0o640)
        (root / "plain").touch(0o666)
        (root / "plaindir").mkdir(0o777)
    finally:
        os.umask(old)
    # the requested mode limits owner, mask and other; the umask (077) plays no part
    assert mode(d / "file") == 0o660
    assert entries(d / "file") == [(ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 7, NOBODY),
                                   (ACL_GROUP_OBJ, 5, NO_ID), (ACL_MASK, 6, NO_ID),
                                   (ACL_OTHER, 0, NO_ID)]
    assert attempt(os.getxattr, d / "file", DEFAULT) == "ENODATA"
    assert mode(d / "sub") == 0o770
    assert os.getxattr(d / "sub", DEFAULT) == default
    assert mode(d / "sub" / "deep") == 0o640
    assert mode(d / "sub" / "deeper") == 0o750
    assert os.getxattr(d / "sub" / "deeper", DEFAULT) == default
    assert mode(d / "fifo") == 0o640
    # the inherited named entry is enforced (within the mask)
    assert as_nobody(append, d / "file") == "OK"
    assert as_nobody(append, d / "sub" / "deep") == "EACCES"
    assert as_nobody(read, d / "sub" / "deep") == ""
    # elsewhere memfs applies the umask itself (DONT_MASK)
    assert mode(root / "plain") == 0o600
    assert mode(root / "plaindir") == 0o700
    assert attempt(os.getxattr, root / "plain", ACCESS) == "ENODATA"
    # a symlink takes nothing
    os.symlink("file", d / "link")
    assert stat.S_IMODE(os.lstat(d / "link").st_mode) == 0o777


def test_removing_acls(root: Path) -> None:
    f = root / "f"
    f.write_text("data")
    f.chmod(0o600)
    os.setxattr(f, ACCESS, named(4, 4))
    assert as_nobody(read, f) == "data"
    os.removexattr(f, ACCESS)
    assert attempt(os.getxattr, f, ACCESS) == "ENODATA"
    assert as_nobody(read, f) == "EACCES"
    assert mode(f) == 0o640          # removing the ACL leaves the mode as it was
    # removing what is not there succeeds, as on tmpfs
    assert attempt(os.removexattr, f, ACCESS) == "OK"
    assert attempt(os.removexattr, f, DEFAULT) == "OK"
    d = root / "d"
    d.mkdir()
    os.setxattr(d, DEFAULT, named(7, 7, obj=7))
    subprocess.run(["setfacl", "-k", str(d)], check=True)
    assert attempt(os.getxattr, d, DEFAULT) == "ENODATA"
    old = os.umask(0o022)
    try:
        (d / "after").touch(0o666)
    finally:
        os.umask(old)
    assert mode(d / "after") == 0o644


_OBJ = ((ACL_GROUP_OBJ, 4, NO_ID), (ACL_OTHER, 4, NO_ID))

#: (what, value, the kernel's answer as tmpfs gives it)
VALUES = [
    ("no-bytes", b"", "OK"),                                      # removes the ACL
    ("no-entries", struct.pack("<I", 2), "OK"),                   # removes it too
    ("version-1", struct.pack("<I", 1) + acl((ACL_USER_OBJ, 6, NO_ID), *_OBJ)[4:],
     "ENOTSUP"),
    ("truncated", acl((ACL_USER_OBJ, 6, NO_ID), *_OBJ)[:-3], "EINVAL"),
    ("short-header", b"\x02\x00", "EINVAL"),
    ("no-group", acl((ACL_USER_OBJ, 6, NO_ID), (ACL_OTHER, 4, NO_ID)), "EINVAL"),
    ("no-other", acl((ACL_USER_OBJ, 6, NO_ID), (ACL_GROUP_OBJ, 4, NO_ID)), "EINVAL"),
    ("named-without-mask", acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 6, NOBODY), *_OBJ),
     "EINVAL"),
    ("two-owners", acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER_OBJ, 6, NO_ID), *_OBJ), "EINVAL"),
    ("perm-beyond-rwx", acl((ACL_USER_OBJ, 8, NO_ID), *_OBJ), "EINVAL"),
    ("out-of-order", acl((ACL_GROUP_OBJ, 4, NO_ID), (ACL_USER_OBJ, 6, NO_ID),
                         (ACL_OTHER, 4, NO_ID)), "EINVAL"),
    ("unknown-tag", acl((ACL_USER_OBJ, 6, NO_ID), (0x40, 6, NO_ID), *_OBJ), "EINVAL"),
    ("named-undefined-id", acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 6, NO_ID),
                               (ACL_GROUP_OBJ, 4, NO_ID), (ACL_MASK, 6, NO_ID),
                               (ACL_OTHER, 4, NO_ID)), "EINVAL"),
    ("after-other", acl((ACL_USER_OBJ, 6, NO_ID), *_OBJ, (ACL_MASK, 6, NO_ID)), "EINVAL"),
    # what the kernel accepts: named ids in any order, repeated; a mask alone
    ("unsorted-named", acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 6, 8), (ACL_USER, 6, 7),
                           (ACL_GROUP_OBJ, 4, NO_ID), (ACL_MASK, 6, NO_ID),
                           (ACL_OTHER, 4, NO_ID)), "OK"),
    ("mask-alone", acl((ACL_USER_OBJ, 6, NO_ID), (ACL_GROUP_OBJ, 4, NO_ID),
                       (ACL_MASK, 6, NO_ID), (ACL_OTHER, 4, NO_ID)), "OK"),
]


@pytest.fixture(scope="module")
def tmpfs() -> Iterator[Path]:
    d, mounted = conftest.make_tmpfs()
    try:
        yield d
    finally:
        conftest.remove_tmpfs(d, mounted)


def _set_both(root: Path, value: bytes) -> tuple[Any, Any, int]:
    f = root / "f"
    f.write_text("")
    f.chmod(0o640)
    (root / "d").mkdir()
    got = (attempt(os.setxattr, f, ACCESS, value), attempt(os.setxattr, root / "d", DEFAULT,
                                                           value), mode(f))
    f.unlink()
    os.rmdir(root / "d")
    return got


@pytest.mark.parametrize(("value", "want"), [v[1:] for v in VALUES],
                         ids=[v[0] for v in VALUES])
def test_malformed_values(root: Path, tmpfs: Path, value: bytes, want: str) -> None:
    """EINVAL (or what else the kernel answers) exactly as on tmpfs, and from memfs itself."""
    ref = _set_both(tmpfs, value)
    assert ref[:2] == (want, want)
    assert _set_both(root, value) == ref
    # memfs refuses them too when called directly (not only through the kernel's check)
    fs = MemFS(acl=True)
    ctx = RequestContext()
    _, f = fs.create(1, b"f", 0o644, os.O_WRONLY, ctx)
    try:
        fs.setxattr(f.st_ino, ACL_ACCESS, value, 0, ctx)
        got = "OK"
    except FUSEError as exc:
        got = errno.errorcode[exc.errno]
    assert got == want


def test_default_acl_on_a_file_is_eacces(root: Path) -> None:
    f = root / "f"
    f.write_text("")
    assert attempt(os.setxattr, f, DEFAULT, named(6, 6)) == "EACCES"


def test_memfs_checks_agree_and_acls_are_opt_in() -> None:
    """memfs's own permission checks evaluate the ACL (a mount without the kernel's
    checks, or a direct call, decides the same); without ``acl`` they are EOPNOTSUPP."""
    fs = MemFS(acl=True)
    me = RequestContext()
    _, f = fs.create(1, b"f", 0o600, os.O_WRONLY, me)
    nobody = RequestContext(uid=NOBODY, gid=NOBODY)
    assert not fs.access(f.st_ino, os.R_OK, nobody)
    fs.setxattr(f.st_ino, ACL_ACCESS, named(4, 4), 0, me)
    assert fs.access(f.st_ino, os.R_OK, nobody)
    assert not fs.access(f.st_ino, os.W_OK, nobody)
    with pytest.raises(FUSEError) as exc:
        fs.open(f.st_ino, os.O_WRONLY, nobody)
    assert exc.value.errno == errno.EACCES
    fs.open(f.st_ino, os.O_RDONLY, nobody)
    plain = MemFS()
    _, g = plain.create(1, b"g", 0o600, os.O_WRONLY, me)
    with pytest.raises(FUSEError) as exc:
        plain.setxattr(g.st_ino, ACL_ACCESS, named(4, 4), 0, me)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert not plain.enable_acl and not plain.applies_umask


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield from mounts(tmp_path, monkeypatch)


def test_acls_survive_sigkill(start: Callable[..., Mount]) -> None:
    m = start(options=["acl", "allow_other"])
    m.path.chmod(0o755)
    f = m.path / "f"
    f.write_text("kept")
    f.chmod(0o600)
    os.setxattr(f, ACCESS, named(6, 6))
    d = m.path / "d"
    d.mkdir()
    d.chmod(0o777)
    default = acl((ACL_USER_OBJ, 7, NO_ID), (ACL_USER, 7, NOBODY),
                  (ACL_GROUP_OBJ, 5, NO_ID), (ACL_MASK, 7, NO_ID), (ACL_OTHER, 0, NO_ID))
    os.setxattr(d, DEFAULT, default)
    old = m.status()["server_pid"]
    os.kill(old, signal.SIGKILL)
    m.wait_new_server(old)
    # the kernel forgets what it cached, so the successor answers from its own state
    subprocess.run(["sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"], check=True)
    assert os.getxattr(f, ACCESS) == named(6, 6)
    assert os.getxattr(d, DEFAULT) == default
    assert mode(f) == 0o660
    assert as_nobody(read, f) == "kept"
    # the successor updates the mask on chmod and applies inheritance
    f.chmod(0o640)
    assert entries(f)[3] == (ACL_MASK, 4, NO_ID)
    assert as_nobody(append, f) == "EACCES"
    old_umask = os.umask(0o077)
    try:
        (d / "new").touch(0o666)
        (m.path / "plain").touch(0o666)       # no default ACL: the umask applies
    finally:
        os.umask(old_umask)
    assert mode(d / "new") == 0o660
    assert mode(m.path / "plain") == 0o600
    assert entries(d / "new")[1] == (ACL_USER, 7, NOBODY)
    assert as_nobody(append, d / "new") == "OK"
    # and a second crash replays the changes made since (chmod, create)
    old = m.status()["server_pid"]
    os.kill(old, signal.SIGKILL)
    m.wait_new_server(old)
    subprocess.run(["sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"], check=True)
    assert entries(f)[3] == (ACL_MASK, 4, NO_ID)
    assert mode(d / "new") == 0o660
    assert mode(m.path / "plain") == 0o600
    assert as_nobody(read, d / "new") == "+"
