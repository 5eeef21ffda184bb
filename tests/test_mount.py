"""Tests for fusewire.server.mount: real mounts on /dev/fuse, no mocks.

Nothing here answers FUSE_INIT, so no test may stat() a live mountpoint (that
would block until INIT is answered).  Every mount is torn down by the
``mounts`` fixture: fds are closed first (which aborts the connection), then
anything still mounted is lazily unmounted.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import re
import select
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusewire.server import mount as fm
from fusewire.structs.codec import CODECS
from fusewire.structs.records import InHeader

REPO_ROOT = Path(__file__).resolve().parent.parent
_IN_HEADER_CODEC = CODECS["in_header"]
IN_HEADER = _IN_HEADER_CODEC.struct
FUSE_INIT = 26
IS_ROOT = os.geteuid() == 0
DEFAULT_FLAGS = 0 if IS_ROOT else fm.MS_NOSUID | fm.MS_NODEV

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="the direct mount(2) path and these checks need euid 0"
)


# --------------------------------------------------------------------------
# helpers and fixtures


@pytest.fixture
def dev_fuse() -> None:
    """Skip the test if /dev/fuse cannot be opened by this process."""
    problem = fm.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)


def read_request(fd: int, timeout: float = 5.0) -> tuple[InHeader, bytes]:
    """Read one request from a /dev/fuse fd, failing instead of hanging."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(int(timeout * 1000)), f"no request on fd {fd} within {timeout}s"
    data = os.read(fd, 8192)
    return _IN_HEADER_CODEC.decode(data), data


def assert_init(fd: int) -> tuple[int, int]:
    """Read a request, check it is the first INIT; return (major, minor)."""
    hdr, data = read_request(fd)
    assert hdr.opcode == FUSE_INIT
    assert hdr.unique == 2
    assert hdr.nodeid == 0
    assert hdr.len == len(data) >= IN_HEADER.size + 16
    major, minor = struct.unpack_from("<II", data, IN_HEADER.size)
    assert major == 7
    assert minor >= 26
    return major, minor


def assert_dead(fd: int) -> None:
    """The connection behind fd is gone: read() gives ENODEV."""
    with pytest.raises(OSError) as info:
        os.read(fd, 8192)
    assert info.value.errno == errno.ENODEV


@dataclass(frozen=True)
class Entry:
    """A /proc/self/mountinfo line, parsed independently of the module."""

    minor: int
    mountpoint: str
    mount_options: list[str]
    fstype: str
    source: str
    super_options: list[str]


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mountinfo(path: Path | str) -> list[Entry]:
    """All mountinfo entries whose mount point is exactly ``path``."""
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.rstrip("\n").split(" ")
            sep = fields.index("-", 6)
            if _unescape(fields[4]) == str(path):
                entries.append(
                    Entry(
                        minor=int(fields[2].split(":")[1]),
                        mountpoint=_unescape(fields[4]),
                        mount_options=fields[5].split(","),
                        fstype=fields[sep + 1],
                        source=_unescape(fields[sep + 2]),
                        super_options=fields[sep + 3].split(","),
                    )
                )
    return entries


def only_entry(path: Path | str) -> Entry:
    entries = mountinfo(path)
    assert len(entries) == 1, entries
    return entries[0]


def wait_unmounted(path: Path | str, timeout: float = 5.0) -> bool:
    """Poll is_mounted() until it is False; return whether that happened."""
    deadline = time.monotonic() + timeout
    while fm.is_mounted(str(path)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def fusectl_mounted() -> bool:
    return any(e.fstype == "fusectl" for e in mountinfo(fm.FUSECTL_DIR))


class Mounts:
    """Creates mountpoints, mounts, and always cleans up."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.fds: list[int] = []
        self.paths: list[Path] = []

    def mountpoint(self, name: str = "mnt") -> Path:
        path = self.base / name
        path.mkdir()
        self.paths.append(path)
        return path

    def mount(self, path: Path, options: fm.MountOptions) -> int:
        if path not in self.paths:
            self.paths.append(path)
        return self.track(fm.mount(str(path), options))

    def track(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self, fd: int) -> None:
        self.fds.remove(fd)
        fm.release(fd)

    def cleanup(self) -> None:
        for fd in reversed(self.fds):
            try:
                fm.release(fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
        self.fds.clear()
        leftovers = []
        for path in self.paths:
            for _ in range(5):
                if not fm.is_mounted(str(path)):
                    break
                try:
                    fm.unmount(str(path), lazy=True)
                except OSError:
                    time.sleep(0.1)
            else:
                leftovers.append(path)
        assert not leftovers, f"could not unmount {leftovers}"


@pytest.fixture
def mounts(tmp_path: Path, dev_fuse: None) -> Iterator[Mounts]:
    tracker = Mounts(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()


# --------------------------------------------------------------------------
# parse_options


@pytest.mark.parametrize("empty", [None, "", [], (), "-o ,", ",,"])
def test_parse_defaults(empty: str | list[str] | tuple[str, ...] | None) -> None:
    opts = fm.parse_options(empty)
    assert opts == fm.MountOptions(
        kernel=(), flags=DEFAULT_FLAGS, fsname="fusewire", subtype=None, auto_unmount=False
    )
    assert opts.extra == {}


def test_parse_flags() -> None:
    all_set = (
        fm.MS_RDONLY
        | fm.MS_NOSUID
        | fm.MS_NODEV
        | fm.MS_NOEXEC
        | fm.MS_SYNCHRONOUS
        | fm.MS_DIRSYNC
        | fm.MS_NOATIME
        | fm.MS_NODIRATIME
    )
    opts = fm.parse_options("ro,nosuid,nodev,noexec,sync,dirsync,noatime,nodiratime")
    assert opts.flags == all_set
    assert opts.kernel == () and opts.extra == {}

    def flags(text: str) -> int:
        return fm.parse_options(text).flags & ~DEFAULT_FLAGS

    assert flags("ro,rw") == 0
    assert flags("noexec,exec") == 0
    assert flags("sync,async") == 0
    assert flags("nodiratime,diratime") == 0
    assert flags("noatime,atime") == 0
    assert flags("noatime,relatime") == fm.MS_RELATIME
    assert flags("relatime,strictatime") == fm.MS_STRICTATIME
    assert flags("strictatime,noatime") == fm.MS_NOATIME
    assert flags("relatime,norelatime") == 0
    assert flags("strictatime,nostrictatime") == 0
    assert fm.parse_options("suid,dev").flags & (fm.MS_NOSUID | fm.MS_NODEV) == 0
    assert fm.parse_options("suid,nosuid").flags & fm.MS_NOSUID


def test_parse_default_flags_follow_euid() -> None:
    # fusermount3 forces nosuid,nodev on users; root starts with no flags.
    assert fm.parse_options(None).flags == (0 if IS_ROOT else fm.MS_NOSUID | fm.MS_NODEV)


def test_parse_kernel_and_extra() -> None:
    opts = fm.parse_options(
        "allow_other,default_permissions,max_read=131072,blksize=4096,"
        "entry_timeout=1.5,attr_timeout=2,negative_timeout=0,source=/srv/data,large_read,"
        "rootcontext=system_u:object_r:tmp_t:s0"
    )
    assert opts.kernel == (
        "allow_other",
        "default_permissions",
        "max_read=131072",
        "blksize=4096",
        "rootcontext=system_u:object_r:tmp_t:s0",
    )
    assert opts.extra == {
        "entry_timeout": "1.5",
        "attr_timeout": "2",
        "negative_timeout": "0",
        "source": "/srv/data",
        "large_read": "",
    }
    assert opts.flags == DEFAULT_FLAGS
    # Later values win; a repeated flag option is listed once.
    again = fm.parse_options("max_read=4096,allow_other,max_read=8192,allow_other")
    assert again.kernel == ("max_read=8192", "allow_other")
    assert fm.parse_options("max_read=007").kernel == ("max_read=7",)


def test_parse_fsname_subtype_auto_unmount() -> None:
    opts = fm.parse_options(None, fsname="myfs", subtype="sub")
    assert (opts.fsname, opts.subtype, opts.auto_unmount) == ("myfs", "sub", False)
    opts = fm.parse_options("fsname=x,subtype=y,auto_unmount", fsname="myfs", subtype="sub")
    assert (opts.fsname, opts.subtype, opts.auto_unmount) == ("x", "y", True)
    assert opts.kernel == () and opts.extra == {}
    # Spaces survive when the string has no -o switches.
    assert fm.parse_options("fsname=my fs").fsname == "my fs"


def test_parse_libfuse_style() -> None:
    expected = fm.parse_options("ro,allow_other,max_read=4096,fsname=foo")
    assert fm.parse_options("-o ro,allow_other,max_read=4096,fsname=foo") == expected
    assert fm.parse_options("-oro -o allow_other -omax_read=4096,fsname=foo") == expected
    assert fm.parse_options(["-o", "ro,allow_other", "-omax_read=4096", "fsname=foo"]) == expected
    assert fm.parse_options(("-o", "ro", "-o", "allow_other,max_read=4096,fsname=foo")) == expected
    # Backslash escapes commas and backslashes inside values.
    escaped = fm.parse_options(r"fsname=a\,b\\c,ro,source=x\,y")
    assert escaped.fsname == "a,b\\c"
    assert escaped.extra == {"source": "x,y"}
    assert escaped.flags & fm.MS_RDONLY
    assert fm.parse_options(["-o", "fsname=a b,subtype=t"]).fsname == "a b"


def test_parse_allow_root() -> None:
    opts = fm.parse_options("allow_root,default_permissions")
    assert opts.kernel == ("allow_other", "default_permissions")
    assert opts.extra == {"allow_root": ""}
    with pytest.raises(ValueError, match="mutually exclusive"):
        fm.parse_options("allow_other,allow_root")


@pytest.mark.parametrize(
    "bad",
    [
        "fd=3",
        "rootmode=40000",
        "user_id=0",
        "group_id=0",
        "ro=1",
        "allow_other=yes",
        "auto_unmount=1",
        "max_read=abc",
        "max_read=",
        "blksize=-1",
        "fsname=",
        "subtype=",
        "context=",
        "a\0b",
        "-f",
        ["-d", "ro"],
        ["-o"],
    ],
)
def test_parse_rejects(bad: str | list[str]) -> None:
    with pytest.raises(ValueError):
        fm.parse_options(bad)


def test_fusermount_option_spelling() -> None:
    opts = fm.parse_options(
        r"ro,noexec,default_permissions,max_read=4096,fsname=a\,b,subtype=s,auto_unmount,x=1"
    )
    spelled = fm._fusermount_options(opts).split(",")
    assert spelled[:3] == ["fsname=a\\", "b", "subtype=s"]  # comma escaped as "\,"
    assert {"default_permissions", "max_read=4096", "ro", "noexec", "auto_unmount"} <= set(spelled)
    assert "x=1" not in spelled
    # fusermount3 defaults to nosuid,nodev: clear flags are spelled out.
    root_style = fm._fusermount_options(fm.MountOptions(flags=0))
    assert root_style == "fsname=fusewire,suid,dev"
    user_style = fm._fusermount_options(fm.MountOptions(flags=fm.MS_NOSUID | fm.MS_NODEV))
    assert user_style == "fsname=fusewire,nosuid,nodev"


def test_fusermount_path() -> None:
    path = fm.fusermount_path()
    assert os.path.basename(path) == "fusermount3"
    assert os.access(path, os.X_OK)


# --------------------------------------------------------------------------
# ioctls


def test_sync_init_supported(dev_fuse: None) -> None:
    supported = fm.sync_init_supported()
    assert isinstance(supported, bool)
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    if release >= (6, 18):
        assert supported


def test_clone_fd_of_unattached_fd_fails(dev_fuse: None) -> None:
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError) as info:
            fm.clone_fd(fd)
        # 6.18.44 answers EPERM (protocol.md section 11 says EINVAL).
        assert info.value.errno in (errno.EPERM, errno.EINVAL)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# direct mount(2) as root


@needs_root
def test_root_mount_mountinfo_and_init(mounts: Mounts) -> None:
    mp = mounts.mountpoint()
    opts = fm.parse_options(
        "-o ro,noexec,default_permissions,max_read=65536,fsname=fw-test-src,"
        "subtype=fwtest,entry_timeout=2"
    )
    fd = mounts.mount(mp, opts)

    assert not os.get_inheritable(fd)
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    assert fm.is_mounted(str(mp))
    entry = only_entry(mp)
    assert entry.fstype == "fuse.fwtest"
    assert entry.source == "fw-test-src"
    assert {"ro", "noexec"} <= set(entry.mount_options)
    assert "nosuid" not in entry.mount_options
    assert {
        "user_id=0",
        "group_id=0",
        "default_permissions",
        "max_read=65536",
    } <= set(entry.super_options)
    assert not any("entry_timeout" in o for o in entry.super_options)
    assert fm.connection_id(str(mp)) == entry.minor

    assert_init(fd)


@needs_root
def test_root_mount_defaults(mounts: Mounts) -> None:
    mp = mounts.mountpoint()
    fd = mounts.mount(mp, fm.parse_options(None))
    entry = only_entry(mp)
    assert (entry.fstype, entry.source) == ("fuse", "fusewire")
    assert {"rw"} <= set(entry.mount_options)
    assert not {"nosuid", "nodev", "noexec"} & set(entry.mount_options)
    assert_init(fd)


@needs_root
def test_root_mount_on_regular_file(mounts: Mounts, tmp_path: Path) -> None:
    # rootmode comes from the mountpoint's file type; a directory mode on a
    # file would make the kernel refuse the mount.
    mp = tmp_path / "file"
    mp.write_bytes(b"")
    assert stat.S_ISREG(os.lstat(mp).st_mode)
    fd = mounts.mount(mp, fm.parse_options(None))
    assert fm.is_mounted(str(mp))
    assert_init(fd)


@needs_root
def test_is_mounted_path_forms(
    mounts: Mounts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = mounts.mountpoint("mnt point\\x\ty")
    assert not fm.is_mounted(str(mp))
    mounts.mount(mp, fm.parse_options(None))
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    leaf_link = tmp_path / "leaf"
    leaf_link.symlink_to(mp.name)
    monkeypatch.chdir(tmp_path)

    assert only_entry(mp).mountpoint == str(mp)  # kernel-escaped, then unescaped
    for form in (
        str(mp),
        str(mp) + "/",
        str(link / mp.name),
        mp.name,
        "./" + mp.name,
        f"link/./{mp.name}",
        # ".." after a symlink goes to the parent of its target, as in the kernel
        f"link/../{tmp_path.name}/{mp.name}",
        str(leaf_link),
        "leaf",
    ):
        assert fm.is_mounted(form), form
        assert fm.connection_id(form) == only_entry(mp).minor, form
    for other in (str(tmp_path), "/proc", "/", str(tmp_path / "missing")):
        assert not fm.is_mounted(other), other


@needs_root
def test_clone_fd_same_connection(mounts: Mounts) -> None:
    mp = mounts.mountpoint()
    fd = mounts.mount(mp, fm.parse_options(None))
    clone = mounts.track(fm.clone_fd(fd))
    assert clone != fd
    assert not os.get_inheritable(clone)
    # INIT sits on the connection's shared queue, so the clone can read it...
    assert_init(clone)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert poller.poll(0) == []  # ...and then it is gone for the original too.
    # Unmounting the connection ends both fds.
    fm.unmount(str(mp))
    assert_dead(fd)
    assert_dead(clone)


@needs_root
def test_unmount_and_lazy_unmount(mounts: Mounts) -> None:
    first = mounts.mountpoint("first")
    second = mounts.mountpoint("second")
    fd1 = mounts.mount(first, fm.parse_options(None))
    fd2 = mounts.mount(second, fm.parse_options(None))

    fm.unmount(str(first))
    assert not fm.is_mounted(str(first))
    assert mountinfo(first) == []
    assert_dead(fd1)

    fm.unmount(str(second), lazy=True)
    assert not fm.is_mounted(str(second))
    assert_dead(fd2)

    with pytest.raises(OSError) as info:
        fm.unmount(str(first))
    assert info.value.errno == errno.EINVAL


@needs_root
def test_connection_id_and_abort(mounts: Mounts) -> None:
    a = mounts.mountpoint("a")
    b = mounts.mountpoint("b")
    fd_a = mounts.mount(a, fm.parse_options(None))
    fd_b = mounts.mount(b, fm.parse_options(None))
    id_a, id_b = fm.connection_id(str(a)), fm.connection_id(str(b))
    assert id_a == only_entry(a).minor
    assert id_b == only_entry(b).minor
    assert id_a != id_b

    fusectl_before = fusectl_mounted()
    fm.abort_connection(str(a))
    assert fusectl_mounted() == fusectl_before  # mounted only for the write
    assert_dead(fd_a)
    assert fm.is_mounted(str(a))  # an aborted mount stays until unmounted
    assert_init(fd_b)  # the other connection is untouched

    fm.unmount(str(a))
    with pytest.raises(OSError) as info:
        fm.connection_id(str(a))
    assert info.value.errno == errno.EINVAL


@needs_root
def test_mount_errors(mounts: Mounts, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for opts in (fm.parse_options(None), fm.parse_options("auto_unmount")):
        with pytest.raises(FileNotFoundError) as missing_info:
            fm.mount(str(missing), opts)
        assert missing_info.value.errno == errno.ENOENT

    mp = mounts.mountpoint()
    # blksize is only valid for fuseblk: the kernel says EINVAL.
    with pytest.raises(OSError) as info:
        fm.mount(str(mp), fm.parse_options("blksize=4096"))
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        fm.mount(str(mp), fm.parse_options("blksize=4096,auto_unmount"))
    assert info.value.errno == errno.EINVAL
    assert "fusermount3" in str(info.value)
    assert not fm.is_mounted(str(mp))


# --------------------------------------------------------------------------
# fusermount3 with auto_unmount, as root


@needs_root
def test_auto_unmount_release(mounts: Mounts) -> None:
    mp = mounts.mountpoint()
    fd = mounts.mount(mp, fm.parse_options("auto_unmount,fsname=fw-auto,subtype=autotest"))
    assert not os.get_inheritable(fd)
    entry = only_entry(mp)
    assert (entry.fstype, entry.source) == ("fuse.autotest", "fw-auto")
    # Root's flags (none) were passed through: fusermount3 alone would add these.
    assert not {"nosuid", "nodev"} & set(entry.mount_options)
    assert_init(fd)

    helper = fm._helpers[fd]
    assert helper.proc.poll() is None  # fusermount3 waits for our socket to close
    mounts.close(fd)  # release(): closes the fd and the socket
    assert wait_unmounted(mp), "auto_unmount did not unmount after release()"
    assert helper.proc.returncode == 0
    assert fd not in fm._helpers


@needs_root
def test_auto_unmount_when_process_exits(mounts: Mounts) -> None:
    mp = mounts.mountpoint()
    code = (
        "import json, os, sys\n"
        "from fusewire.server import mount as fm\n"
        "fd = fm.mount(sys.argv[1], fm.parse_options('auto_unmount,fsname=fw-exit'))\n"
        "print(json.dumps({'mounted': fm.is_mounted(sys.argv[1])}), flush=True)\n"
        "os._exit(0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(mp)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"mounted": True}
    assert wait_unmounted(mp), "auto_unmount did not unmount after the owner exited"


@needs_root
def test_auto_unmount_then_unmount(mounts: Mounts) -> None:
    mp = mounts.mountpoint()
    fd = mounts.mount(mp, fm.parse_options("auto_unmount"))
    helper = fm._helpers[fd]
    fm.unmount(str(mp))
    assert not fm.is_mounted(str(mp))
    assert fd not in fm._helpers
    assert helper.proc.poll() is not None  # told to exit and reaped
    assert_dead(fd)


# --------------------------------------------------------------------------
# a real unprivileged user, through fusermount3


@pytest.fixture(scope="session")
def test_user(throwaway_user: pwd.struct_passwd) -> pwd.struct_passwd:
    """A uniquely named system user for this session, removed afterwards (conftest)."""
    return throwaway_user


@pytest.fixture(scope="session")
def world_usable_dev_fuse() -> Iterator[None]:
    """Make /dev/fuse mode 0666 for the session, as distro udev rules do.

    fusermount3 opens /dev/fuse with the user's rights; minimal containers
    leave the node 0600, which makes every user mount fail with EACCES.  The
    original mode is restored afterwards.
    """
    problem = fm.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if mode & 0o666 != 0o666:
        os.chmod("/dev/fuse", mode | 0o666)
    try:
        yield
    finally:
        if stat.S_IMODE(os.stat("/dev/fuse").st_mode) != mode:
            os.chmod("/dev/fuse", mode)


def _user_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/",
        "LANG": "C.UTF-8",
    }


def _run_as(user: pwd.struct_passwd, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env=_user_env(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def user_python(test_user: pwd.struct_passwd) -> str:
    """An interpreter the test user can run that imports fusewire from this repo."""
    problems = []
    candidates = [sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            proc = _run_as(test_user, [candidate, "-c", "import fusewire.server.mount"])
        except OSError as exc:
            problems.append(f"{candidate}: {exc}")
            continue
        if proc.returncode == 0:
            return candidate
        problems.append(f"{candidate}: {proc.stderr.strip().splitlines()[-1:]}")
    pytest.skip(f"user {test_user.pw_name} cannot run python importing {REPO_ROOT}: "
                f"{problems}")


@pytest.fixture
def user_dirs(test_user: pwd.struct_passwd) -> Iterator[tuple[Path, Path]]:
    """(mountpoint owned by the test user, a directory it does not own)."""
    base = Path(tempfile.mkdtemp(prefix="fusewire-user-"))
    base.chmod(0o755)
    mine = base / "mnt"
    mine.mkdir()
    os.chown(mine, test_user.pw_uid, test_user.pw_gid)
    theirs = base / "root-owned"
    theirs.mkdir(mode=0o755)
    try:
        yield mine, theirs
    finally:
        for path in (mine, theirs):
            if fm.is_mounted(str(path)):
                fm.unmount(str(path), lazy=True)
        shutil.rmtree(base)


USER_CHILD = """
import json, os, select, struct, sys, warnings
from fusewire.server import mount as fm

mine, theirs = sys.argv[1], sys.argv[2]
out = {"uid": os.getuid(), "gid": os.getgid()}
opts = fm.parse_options("-o default_permissions,fsname=fw-user,subtype=fwuser")
out["flags"] = opts.flags
fd = fm.mount(mine, opts)
out["cloexec"] = not os.get_inheritable(fd)
out["mounted"] = fm.is_mounted(mine)
out["conn"] = fm.connection_id(mine)
poller = select.poll()
poller.register(fd, select.POLLIN)
out["readable"] = bool(poller.poll(5000))
data = os.read(fd, 8192)
out["header"] = list(struct.unpack_from("<IIQQIIIHH", data))
out["version"] = list(struct.unpack_from("<II", data, 40))
out["mountinfo"] = [l for l in open("/proc/self/mountinfo") if " " + mine + " " in l]
fm.unmount(mine)
out["mounted_after"] = fm.is_mounted(mine)
try:
    os.read(fd, 8192)
except OSError as exc:
    out["read_after"] = exc.errno
fm.release(fd)

try:
    fm.mount(theirs, fm.parse_options(None))
except OSError as exc:
    out["refused"] = [exc.errno, str(exc)]

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fd = fm.mount(mine, fm.parse_options("auto_unmount"))
out["auto_mounted"] = fm.is_mounted(mine)
out["auto_warnings"] = [str(w.message) for w in caught]
print(json.dumps(out), flush=True)
os._exit(0)  # no cleanup: fusermount3 must unmount by itself
"""


def test_nonroot_user_mount_through_fusermount3(
    test_user: pwd.struct_passwd,
    user_python: str,
    world_usable_dev_fuse: None,
    user_dirs: tuple[Path, Path],
) -> None:
    mine, theirs = user_dirs
    proc = _run_as(test_user, [user_python, "-c", USER_CHILD, str(mine), str(theirs)])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    assert (out["uid"], out["gid"]) == (test_user.pw_uid, test_user.pw_gid)
    assert out["flags"] == fm.MS_NOSUID | fm.MS_NODEV
    assert out["cloexec"] and out["mounted"] and out["readable"]
    length, opcode, unique, nodeid, *_ = out["header"]
    assert (opcode, unique, nodeid) == (FUSE_INIT, 2, 0)
    assert length >= IN_HEADER.size + 16
    assert out["version"][0] == 7

    (line,) = out["mountinfo"]
    fields = line.split()
    sep = fields.index("-")
    assert out["conn"] == int(fields[2].split(":")[1])
    assert (fields[sep + 1], fields[sep + 2]) == ("fuse.fwuser", "fw-user")
    assert {"nosuid", "nodev"} <= set(fields[5].split(","))
    assert {
        f"user_id={test_user.pw_uid}",
        f"group_id={test_user.pw_gid}",
        "default_permissions",
    } <= set(fields[sep + 3].split(","))

    assert out["mounted_after"] is False
    assert out["read_after"] == errno.ENODEV

    refused_errno, refused_message = out["refused"]
    assert refused_errno in (errno.EPERM, errno.EACCES)
    assert "fusermount3" in refused_message
    assert not fm.is_mounted(str(theirs))

    assert out["auto_mounted"] is True
    version = fm._fusermount_version(fm.fusermount_path())
    if version is not None and version < (3, 15):
        # fusermount3 < 3.15 checks the dead mount with open() as root, gets
        # EACCES (no allow_other) and so never unmounts; mount() warns.
        assert len(out["auto_warnings"]) == 1
        assert "fixed in fuse 3.15" in out["auto_warnings"][0]
        assert not wait_unmounted(mine, timeout=1.0)
        fm.unmount(str(mine), lazy=True)
    else:
        assert out["auto_warnings"] == []
        assert wait_unmounted(mine), "fusermount3 auto_unmount left the user's mount behind"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "fusermount3: failed to access mountpoint /x: No such file or directory",
            errno.ENOENT,
        ),
        ("fusermount3: mount failed: Operation not permitted", errno.EPERM),
        ("fusermount3: failed to open /dev/fuse: Permission denied", errno.EACCES),
        ("fusermount3: mount failed: No such device or address", errno.ENXIO),
        ("fusermount3: user has no write access to mountpoint /x", errno.EPERM),
        ("fusermount3: unknown option 'foo'", errno.EINVAL),
        ("fusermount3: something odd", errno.EIO),
    ],
)
def test_fusermount_errno_from_message(message: str, expected: int) -> None:
    assert fm._errno_from_message(message) == expected
