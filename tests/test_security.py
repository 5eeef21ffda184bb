"""Secure by default (issue 16): nobody gets more through a mount than directly.

Root mounts memfs and passthrough with ``allow_other``; a throwaway
unprivileged user (``throwaway_user`` of tests/conftest.py, removed afterwards)
then tries what an attacker would: read, write, chmod, chown, unlink root's
files, list a 0700 directory, make a set-user-ID copy of ``id`` and run it,
write a device node.  Every attempt must end exactly as the same attempt on a
reference tmpfs (mounted ``nosuid,nodev``, like the source the issue
mirrored) that holds the same tree, with and without ``default_permissions``.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest

from fusewire.server import mount as fm

pytestmark = [pytest.mark.fuse, pytest.mark.root]

PYTHON = "/usr/bin/python3"


# --------------------------------------------------------------------------
# the throwaway user


class Intruder:
    """An unprivileged user, run through setpriv, in the attacker's role."""

    def __init__(self, pw: pwd.struct_passwd) -> None:
        self.pw = pw
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid

    def argv(self, argv: list[str], groups: tuple[int, ...] | None = None) -> list[str]:
        """``argv`` as this user: its own group as primary and no others, or (with
        ``groups``) another gid as primary and ``groups`` as the supplementary ones."""
        ids = [f"--reuid={self.uid}"]
        other = 65534 if self.gid != 65534 else 65533     # a primary group not its own
        if groups is None:
            ids += [f"--regid={self.gid}", "--clear-groups"]
        elif groups:
            ids += [f"--regid={other}", "--groups=" + ",".join(map(str, groups))]
        else:
            ids += [f"--regid={other}", "--clear-groups"]
        return ["setpriv", *ids, "--", *argv]

    def run(self, argv: list[str], timeout: float = 60,
            groups: tuple[int, ...] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv, groups),
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                              cwd="/", capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def py(self, code: str, *args: str, timeout: float = 60,
           groups: tuple[int, ...] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run([PYTHON, "-c", code, *args], timeout=timeout, groups=groups)

    def popen(self, code: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv([PYTHON, "-c", code, *args]),
                                env={"PATH": "/usr/bin:/bin"}, cwd="/", text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)


@pytest.fixture
def intruder(throwaway_user: pwd.struct_passwd) -> Intruder:
    """The shared throwaway user (tests/conftest.py) in the attacker's role."""
    if shutil.which("setpriv") is None or not os.access(PYTHON, os.X_OK):
        pytest.skip("setpriv or /usr/bin/python3 is missing")
    problem = conftest.dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)
    return Intruder(throwaway_user)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory everyone may traverse (pytest's tmp_path is root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="fusewire-sec-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        for sub in sorted(d.iterdir(), reverse=True):
            if conftest.is_fuse_mounted(sub):
                subprocess.run(["umount", "-l", str(sub)], check=False)
        _remove_tmpfs_under(d)
        shutil.rmtree(d, ignore_errors=True)


def _remove_tmpfs_under(d: Path) -> None:
    for sub in d.iterdir():
        if conftest.mount_fstype(sub) == "tmpfs":
            subprocess.run(["umount", "-l", str(sub)], check=False)


def _tmpfs(path: Path) -> Path:
    """A nosuid,nodev tmpfs at ``path`` (the kind of source the issue mirrored)."""
    path.mkdir(mode=0o755)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755,nosuid,nodev",
                        "fusewire-sec", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    return path


# --------------------------------------------------------------------------
# the tree and the attempts


def build_tree(root: Path, user: Intruder) -> None:
    """Root's files and directories, as root (directly or through a mount)."""
    (root / "secret").write_bytes(b"s3cret\n")
    os.chmod(root / "secret", 0o600)
    (root / "shared").write_bytes(b"shared\n")
    os.chmod(root / "shared", 0o644)
    (root / "victim").write_bytes(b"victim\n")
    os.chmod(root / "victim", 0o644)
    (root / "private").mkdir()
    os.chmod(root / "private", 0o700)
    (root / "private" / "inside").write_bytes(b"inside\n")
    os.chmod(root / "private" / "inside", 0o644)
    (root / "pub").mkdir()
    os.chmod(root / "pub", 0o777)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "sticky" / "rootfile").write_bytes(b"root\n")
    os.chmod(root / "sticky" / "rootfile", 0o666)
    (root / "mine").mkdir()
    os.chown(root / "mine", user.uid, user.gid)
    (root / "suid-id").write_bytes(Path("/usr/bin/id").read_bytes())
    os.chmod(root / "suid-id", 0o4755)
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(root / "null", 0o666)


#: What every probe script starts with: R (the mount), out, t(name, fn) records
#: "ok", fn's result or the errno name, cat(p) and create(p).
PROBE_PRELUDE = textwrap.dedent('''
    import errno, json, os, struct, subprocess, sys
    R = sys.argv[1]
    out = {}
    def t(name, fn):
        try:
            res = fn()
            out[name] = "ok" if res is None else res
        except OSError as e:
            out[name] = errno.errorcode.get(e.errno, str(e.errno))
    def cat(p):
        with open(p, "rb") as f:
            f.read()
    def create(p):
        with open(p, "xb") as f:
            f.write(b"x")
''')

PROBE = PROBE_PRELUDE + textwrap.dedent('''
    def append(p):
        with open(p, "ab") as f:
            f.write(b"x")
    def run_euid(p):
        r = subprocess.run([p, "-u"], capture_output=True, text=True)
        if r.returncode != 0:
            return "exit %d %s" % (r.returncode, r.stderr.strip()[-80:])
        return "euid0" if r.stdout.strip() == "0" else "euid-user"
    t("read root 0600", lambda: cat(R + "/secret"))
    t("read root 0644", lambda: cat(R + "/shared"))
    t("write root 0644", lambda: append(R + "/shared"))
    t("truncate root 0644", lambda: os.truncate(R + "/shared", 0))
    t("list 0700 dir", lambda: sorted(os.listdir(R + "/private")) and None)
    t("stat in 0700 dir", lambda: os.stat(R + "/private/inside") and None)
    t("read in 0700 dir", lambda: cat(R + "/private/inside"))
    t("chmod root file", lambda: os.chmod(R + "/victim", 0o777))
    t("chown root file", lambda: os.chown(R + "/victim", os.getuid(), -1))
    t("chgrp root file", lambda: os.chown(R + "/victim", -1, os.getgid()))
    t("utime root file", lambda: os.utime(R + "/victim", (1, 1)))
    t("utime-now root file", lambda: os.utime(R + "/victim"))
    t("setxattr root file", lambda: os.setxattr(R + "/shared", "user.x", b"1"))
    t("rename root file", lambda: os.rename(R + "/victim", R + "/pub/stolen"))
    t("unlink root file", lambda: os.unlink(R + "/victim"))
    t("create in root dir", lambda: create(R + "/newfile"))
    t("mkdir in root dir", lambda: os.mkdir(R + "/newdir"))
    t("unlink in sticky dir", lambda: os.unlink(R + "/sticky/rootfile"))
    t("create in sticky dir", lambda: create(R + "/sticky/mine"))
    t("write device", lambda: append(R + "/null"))
    t("mknod device", lambda: os.mknod(R + "/mine/dev", 0o20666, os.makedev(1, 3)))
    t("run root suid-id", lambda: run_euid(R + "/suid-id"))
    # the escalation of the issue: copy id, chown root, chmod 4755, run
    with open("/usr/bin/id", "rb") as src, open(R + "/mine/id", "wb") as dst:
        dst.write(src.read())
    t("chmod own 0755", lambda: os.chmod(R + "/mine/id", 0o755))
    t("chown own to root", lambda: os.chown(R + "/mine/id", 0, 0))
    t("chmod own 4755", lambda: os.chmod(R + "/mine/id", 0o4755))
    t("own copy owner", lambda: "uid0" if os.stat(R + "/mine/id").st_uid == 0 else "user")
    t("run own copy", lambda: run_euid(R + "/mine/id"))
    t("setxattr trusted", lambda: os.setxattr(R + "/mine/id", "trusted.x", b"1"))
    # VFS_CAP_REVISION_2, effective, CAP_SETUID permitted
    t("set file capability", lambda: os.setxattr(R + "/mine/id", "security.capability",
                                                 struct.pack("<5I", 0x02000001, 1 << 7,
                                                             0, 0, 0)))
    t("hardlink own file", lambda: os.link(R + "/mine/id", R + "/mine/id2"))
    t("hardlink root 0600 file", lambda: os.link(R + "/secret", R + "/pub/secret2"))
    t("symlink in own dir", lambda: os.symlink("/etc/shadow", R + "/mine/l"))
    t("rm own", lambda: os.unlink(R + "/mine/id"))
    print(json.dumps(out, sort_keys=True))
''')


def probe(user: Intruder, root: Path) -> dict[str, str]:
    r = user.py(PROBE, str(root))
    assert r.returncode == 0, r.stderr
    result: dict[str, str] = json.loads(r.stdout)
    return result


def _serve(kind: str, source: Path | None, mnt: Path, logdir: Path,
           options: str) -> conftest.FuseServer:
    argv = [kind] + ([str(source)] if source is not None else [])
    return conftest.start_server(argv, mnt, logdir, options)


# --------------------------------------------------------------------------
# the attempts, through the mount and directly


VARIANTS = [
    ("passthrough", "allow_other"),
    ("passthrough", "allow_other,default_permissions"),
    ("memfs", "allow_other"),
    ("memfs", "allow_other,default_permissions"),
]


@pytest.mark.parametrize(("kind", "options"), VARIANTS)
def test_attacks_fail_as_on_the_source(intruder: Intruder, public_dir: Path, tmp_path: Path,
                                       kind: str, options: str) -> None:
    reference = _tmpfs(public_dir / "reference")
    build_tree(reference, intruder)
    source = _tmpfs(public_dir / "source") if kind == "passthrough" else None
    if source is not None:
        build_tree(source, intruder)
    srv = _serve(kind, source, public_dir / "mnt", tmp_path, options)
    try:
        line = conftest.mount_fstype(srv.mountpoint)
        assert line is not None
        if source is None:
            build_tree(srv.mountpoint, intruder)
        want = probe(intruder, reference)
        got = probe(intruder, srv.mountpoint)
    finally:
        srv.close()
    # the attacker got nowhere directly...
    assert want["read root 0600"] == "EACCES" and want["run own copy"] == "euid-user"
    assert want["list 0700 dir"] == "EACCES" and want["chown root file"] == "EPERM"
    # ...and gets exactly as far through the mount
    diff = {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}
    assert not diff, f"{kind} -o {options}: (directly, through the mount) differ: {diff}"
    assert got["run root suid-id"] != "euid0" and got["run own copy"] != "euid0"


def test_mount_flags_nosuid_nodev(public_dir: Path, tmp_path: Path, intruder: Intruder) -> None:
    source = _tmpfs(public_dir / "source")
    srv = _serve("passthrough", source, public_dir / "mnt", tmp_path, "allow_other")
    try:
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if f" {srv.mountpoint} " in ln)
        assert {"nosuid", "nodev"} <= set(line.split()[5].split(","))
    finally:
        srv.close()


GROUP_PROBE = PROBE_PRELUDE + textwrap.dedent('''
    def ls(p):
        os.listdir(p)
    t("read group 0640", lambda: cat(R + "/team/notes"))
    t("list group 0770", lambda: ls(R + "/team"))
    t("create in group 0770", lambda: create(R + "/team/new-%d" % os.getpid()))
    t("access W group 0770", lambda: None if os.access(R + "/team", os.W_OK)
      else (_ for _ in ()).throw(PermissionError(errno.EACCES, "")))
    print(json.dumps(out, sort_keys=True))
''')


def _build_team(root: Path, gid: int) -> None:
    (root / "team").mkdir()
    os.chown(root / "team", 0, gid)
    os.chmod(root / "team", 0o770)
    (root / "team" / "notes").write_bytes(b"team notes\n")
    os.chown(root / "team" / "notes", 0, gid)
    os.chmod(root / "team" / "notes", 0o640)


@pytest.mark.parametrize("kind", ["passthrough", "memfs"])
def test_supplementary_groups_count_as_on_the_source(intruder: Intruder, public_dir: Path,
                                                     tmp_path: Path, kind: str) -> None:
    """Without default_permissions, the caller's supplementary groups (which the kernel
    does not send; ctx.groups reads them from /proc) grant what they grant directly."""
    reference = _tmpfs(public_dir / "reference")
    _build_team(reference, intruder.gid)
    source = _tmpfs(public_dir / "source") if kind == "passthrough" else None
    if source is not None:
        _build_team(source, intruder.gid)
    srv = _serve(kind, source, public_dir / "mnt", tmp_path, "allow_other")
    try:
        if source is None:
            _build_team(srv.mountpoint, intruder.gid)
        results = {}
        for label, groups in (("member", (intruder.gid,)), ("outsider", ())):
            for where, root in (("directly", reference), ("mount", srv.mountpoint)):
                r = intruder.py(GROUP_PROBE, str(root), groups=groups)
                assert r.returncode == 0, r.stderr
                results[label, where] = json.loads(r.stdout)
    finally:
        srv.close()
    assert set(results["member", "directly"].values()) == {"ok"}
    assert "ok" not in results["outsider", "directly"].values()
    for label in ("member", "outsider"):
        assert results[label, "mount"] == results[label, "directly"], label


def test_suid_only_when_root_asks(intruder: Intruder, public_dir: Path, tmp_path: Path) -> None:
    """On a source that honours set-user-ID bits, a mount still does not, unless root
    says -o suid: that is what opting out means."""
    source = public_dir / "source"
    source.mkdir(mode=0o755)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "fusewire-sec",
                        str(source)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    (source / "suid-id").write_bytes(Path("/usr/bin/id").read_bytes())
    os.chmod(source / "suid-id", 0o4755)
    results = {}
    for options in ("allow_other", "allow_other,suid"):
        srv = _serve("passthrough", source, public_dir / "mnt", tmp_path, options)
        try:
            r = intruder.run([str(srv.mountpoint / "suid-id"), "-u"])
            assert r.returncode == 0, r.stderr
            results[options] = r.stdout.strip()
        finally:
            srv.close()
    direct = intruder.run([str(source / "suid-id"), "-u"])
    assert direct.stdout.strip() == "0"          # the source honours the bit
    assert results == {"allow_other": str(intruder.uid), "allow_other,suid": "0"}


# --------------------------------------------------------------------------
# the allow_other policy


def test_allow_other_refused_without_permission_checks(public_dir: Path, tmp_path: Path) -> None:
    from fusewire.operations import Operations
    from fusewire.server.loop import Server

    mnt = public_dir / "mnt"
    mnt.mkdir()
    server = Server(Operations(), str(mnt), "allow_other")
    with pytest.raises(fm.UnsafeMountError) as info:
        server.mount()
    assert "default_permissions" in str(info.value) and "\n" not in str(info.value)
    assert info.value.errno == errno.EPERM
    assert not conftest.is_fuse_mounted(mnt)
    server.close()
    # the CLI: one line, exit status 1, nothing mounted
    r = subprocess.run([conftest.sys.executable, "-m", "fusewire", "mount",
                        "fusewire.operations:Operations", str(mnt), "-f", "-o", "allow_other"],
                       capture_output=True, text=True, timeout=60, env=conftest.server_env())
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "insecure_allow_other" in r.stderr, r.stderr
    assert not conftest.is_fuse_mounted(mnt)


def test_allow_other_policy_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = fm.allow_other_problem
    assert problem(fm.parse_options("allow_other"), False) is not None
    assert problem(fm.parse_options("allow_other"), True) is None
    assert problem(fm.parse_options("allow_other,default_permissions"), False) is None
    assert problem(fm.parse_options("allow_other,insecure_allow_other"), False) is None
    assert problem(fm.parse_options("allow_root"), False) is None
    assert problem(fm.parse_options(None), False) is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for name in ("suid", "dev"):
        with pytest.raises(ValueError, match="needs root"):
            fm.parse_options(name)
    assert fm.parse_options("nosuid").flags & fm.MS_NOSUID


# --------------------------------------------------------------------------
# a rename race against passthrough's create paths


RACER = textwrap.dedent('''
    import os, sys, time
    d, victim_name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    cur = os.path.join(d, victim_name)
    end = time.monotonic() + seconds
    moves = 0
    while time.monotonic() < end:
        for n in os.listdir(d):
            p = os.path.join(d, n)
            if p == cur:
                continue
            try:
                if n.startswith("d"):
                    os.rmdir(p)          # root's new, empty directory: not sticky here
                os.rename(cur, p)        # root's file onto the name just created
                cur = p
                moves += 1
            except OSError:
                pass
    print(moves)
''')

CREATOR = textwrap.dedent('''
    import os, sys, time
    d, seconds = sys.argv[1], float(sys.argv[2])
    end = time.monotonic() + seconds
    made = 0
    i = 0
    while time.monotonic() < end and i < 300:
        for kind, fn in (("d", lambda p: os.mkdir(p, 0o777)),
                         ("f", lambda p: os.mkfifo(p, 0o666)),
                         ("s", lambda p: os.symlink("x", p))):
            try:
                fn(os.path.join(d, "%s%d" % (kind, i)))
                made += 1
            except OSError:
                pass
        i += 1
    print(made)
''')


def test_create_race_never_touches_other_files(intruder: Intruder, public_dir: Path,
                                               tmp_path: Path) -> None:
    source = _tmpfs(public_dir / "source")
    race = source / "race"
    race.mkdir()
    os.chmod(race, 0o777)               # not sticky: the user may move root's file
    (race / "victim").write_bytes(b"root's\n")
    os.chmod(race / "victim", 0o600)
    victim_ino = os.stat(race / "victim").st_ino
    srv = _serve("passthrough", source, public_dir / "mnt", tmp_path, "allow_other")
    try:
        seconds = "2.5"
        racer = intruder.popen(RACER, str(race), "victim", seconds)
        creator = intruder.popen(CREATOR, str(srv.mountpoint / "race"), seconds)
        made_out, made_err = creator.communicate(timeout=60)
        racer_out, racer_err = racer.communicate(timeout=60)
        assert creator.returncode == 0, made_err
        assert racer.returncode == 0, racer_err
        assert int(made_out) > 100, "the creator made too few objects to mean anything"
    finally:
        srv.close()
    found = [p for p in race.iterdir() if os.lstat(p).st_ino == victim_ino]
    assert len(found) == 1, "the victim disappeared"
    st = os.lstat(found[0])
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert found[0].read_bytes() == b"root's\n"


# --------------------------------------------------------------------------
# memfs: permission checks of its own, xattrs under the memory cap


def test_memfs_checks_permissions_itself() -> None:
    from fusewire.examples.memfs import MemFS
    from fusewire.types import FUSEError, RequestContext

    root = RequestContext(0, 0, 1)
    alice = RequestContext(1000, 1000, 0, groups=())
    bob = RequestContext(2000, 2000, 0, groups=(1000,))
    fs = MemFS(root_mode=0o755)
    assert fs.checks_permissions
    d = fs.mkdir(1, b"d", 0o700, root).st_ino
    fi, f = fs.create(1, b"f", 0o100640, os.O_RDWR, root)
    fs.release(fi.fh)

    def code(call: object) -> int:
        try:
            call()  # type: ignore[operator]
        except FUSEError as exc:
            return exc.errno
        return 0

    assert code(lambda: fs.lookup(d, b"x", alice)) == errno.EACCES
    assert code(lambda: fs.opendir(d, alice)) == errno.EACCES
    assert code(lambda: fs.open(f.st_ino, os.O_RDONLY, alice)) == errno.EACCES
    assert not fs.access(f.st_ino, os.R_OK, alice)
    assert code(lambda: fs.mkdir(1, b"x", 0o755, alice)) == errno.EACCES
    assert code(lambda: fs.unlink(1, b"f", alice)) == errno.EACCES
    assert code(lambda: fs.rename(1, b"f", 1, b"g", 0, alice)) == errno.EACCES
    assert not fs.access(1, os.W_OK, alice)
    # the group, through a supplementary group
    grp = fs.mkdir(1, b"g", 0o770, root).st_ino
    from fusewire.types import EntryAttributes, SetattrFields
    fs.setattr(grp, EntryAttributes(st_gid=1000), SetattrFields(update_gid=True), None, root)
    assert fs.access(grp, os.W_OK | os.X_OK, bob)
    fs.mknod(grp, b"bobs", 0o100644, 0, bob)
    assert code(lambda: fs.mknod(grp, b"x", 0o100644, 0, RequestContext(3000, 3000, 0,
                                                                         groups=()))) \
        == errno.EACCES
    # sticky: alice may not remove bob's file in a 1777 directory
    tmp = fs.mkdir(1, b"tmp", 0o1777, root).st_ino
    fs.mknod(tmp, b"bobs", 0o100666, 0, bob)
    assert code(lambda: fs.unlink(tmp, b"bobs", alice)) == errno.EPERM
    assert code(lambda: fs.rename(tmp, b"bobs", tmp, b"mine", 0, alice)) == errno.EPERM
    fs.unlink(tmp, b"bobs", bob)
    # user.* xattrs need read/write permission; trusted.* and security.* writes need root
    assert code(lambda: fs.setxattr(f.st_ino, b"user.x", b"1", 0, alice)) == errno.EACCES
    assert code(lambda: fs.getxattr(f.st_ino, b"trusted.x", alice)) == errno.ENODATA
    own = fs.mknod(tmp, b"own", 0o100644, 0, alice).st_ino
    assert code(lambda: fs.setxattr(own, b"security.capability", b"x" * 20, 0, alice)) \
        == errno.EPERM


def test_memfs_xattrs_count_against_the_memory_cap() -> None:
    from fusewire.examples.memfs import MemFS
    from fusewire.types import FUSEError, RequestContext

    root = RequestContext(0, 0, 1)
    fs = MemFS(max_bytes=1 << 20)
    ino = fs.mknod(1, b"f", 0o100644, 0, root).st_ino
    free0 = fs.statfs(root).f_bfree
    value = b"v" * 65536
    stored = 0
    with pytest.raises(FUSEError) as info:
        for i in range(100):
            fs.setxattr(ino, b"user.%d" % i, value, 0, root)
            stored += 1
    assert info.value.errno == errno.ENOSPC
    assert 10 <= stored < 16
    assert fs.statfs(root).f_bfree < free0 - 150       # xattrs show up in statvfs
    for i in range(stored):
        fs.removexattr(ino, b"user.%d" % i, root)
    assert fs.statfs(root).f_bfree == free0
    fs.setxattr(ino, b"user.big", value, 0, root)
    fs.unlink(1, b"f", root)
    fs.forget([(ino, 1)])
    assert fs.statfs(root).f_bfree == free0            # freed with the inode


# --------------------------------------------------------------------------
# files fusewire writes: captures, the run directory, logs, the keeper socket


def _cli(*args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([conftest.sys.executable, "-m", "fusewire", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=env or conftest.server_env(), stdin=subprocess.DEVNULL)


def test_capture_refuses_a_planted_symlink(intruder: Intruder, public_dir: Path) -> None:
    shared = public_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)                       # like /tmp
    victim = public_dir / "root-file"
    victim.write_bytes(b"root's data\n")
    link = shared / "trace.fwcap"
    r = intruder.run(["ln", "-s", str(victim), str(link)])
    assert r.returncode == 0, r.stderr
    mnt = public_dir / "mnt"
    mnt.mkdir()
    r = _cli("mount", "memfs", str(mnt), "-f", "--capture", str(link))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "--capture" in r.stderr, r.stderr
    assert victim.read_bytes() == b"root's data\n"
    assert os.path.islink(link) and not conftest.is_fuse_mounted(mnt)
    # a fresh capture is private
    from fusewire.testing.capture import CaptureWriter

    with CaptureWriter(public_dir / "fresh.fwcap"):
        pass
    assert stat.S_IMODE(os.stat(public_dir / "fresh.fwcap").st_mode) == 0o600
    with pytest.raises(FileExistsError):
        CaptureWriter(public_dir / "fresh.fwcap")


def test_run_dir_checked_before_use(intruder: Intruder, public_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fusewire.recovery import wire

    # a fresh one is created 0700
    fresh = public_dir / "fresh-run"
    assert wire.ensure_run_dir(str(fresh)) == str(fresh)
    assert stat.S_IMODE(os.lstat(fresh).st_mode) == 0o700
    # a symlink planted by another user, a directory of theirs, a writable one: refused
    shared = public_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)                       # like /tmp
    theirs = shared / "theirs"
    r = intruder.run(["mkdir", "-m", "700", str(theirs)])
    assert r.returncode == 0, r.stderr
    planted = shared / "planted"
    r = intruder.run(["ln", "-s", str(fresh), str(planted)])
    assert r.returncode == 0, r.stderr
    loose = public_dir / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    for bad, why in ((planted, "symlink"), (theirs, "belongs to uid"), (loose, "writable")):
        with pytest.raises(wire.UnsafeRunDirError, match=why):
            wire.ensure_run_dir(str(bad))
    # the CLI: one line, nothing mounted, nothing written through the link
    mnt = public_dir / "mnt"
    mnt.mkdir()
    env = dict(conftest.server_env(), FUSEWIRE_RUN_DIR=str(planted))
    r = _cli("mount", "memfs", str(mnt), "--recoverable", env=env)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "symlink" in r.stderr, r.stderr
    assert os.listdir(fresh) == [] and not conftest.is_fuse_mounted(mnt)
    # per user by default
    monkeypatch.delenv("FUSEWIRE_RUN_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert wire.run_dir() == "/run/user/4242/fusewire"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert wire.run_dir() == "/run/fusewire"
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    assert wire.run_dir() == "/tmp/fusewire-4242"


def test_log_never_follows_a_link(public_dir: Path) -> None:
    from fusewire.recovery import wire

    run = Path(wire.ensure_run_dir(str(public_dir / "run")))
    victim = public_dir / "victim"
    victim.write_bytes(b"keep\n")
    os.symlink(victim, run / "x.log")
    fd = wire.open_private(str(run / "x.log"))
    os.write(fd, b"log line\n")
    os.close(fd)
    assert victim.read_bytes() == b"keep\n"
    st = os.lstat(run / "x.log")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    os.unlink(run / "x.log")
    os.symlink(victim, run / "x.log")
    with pytest.raises(OSError) as info:
        wire.open_private(str(run / "x.log"), append=True)
    assert info.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"keep\n"


SERVE_SOCKET = textwrap.dedent('''
    import socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(sys.argv[1])
    s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    c.recv(100)
''')


def test_client_checks_the_keepers_credentials(intruder: Intruder, public_dir: Path) -> None:
    from fusewire.recovery import wire

    d = public_dir / "sock"
    d.mkdir()
    os.chmod(d, 0o777)
    path = d / "fake.sock"
    proc = intruder.popen(SERVE_SOCKET, str(path))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(PermissionError, match="uid"):
            wire.request(str(path), {"op": "status"}, 5.0)
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_keeper_files_private_and_log_removed_at_unmount(public_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from fusewire.recovery import commands, wire
    from fusewire.testing.procs import children, unmount_and_kill

    run = public_dir / "run"
    monkeypatch.setenv("FUSEWIRE_RUN_DIR", str(run))
    mnt = public_dir / "mnt"
    mnt.mkdir()
    env = dict(conftest.server_env(), FUSEWIRE_RUN_DIR=str(run))
    r = _cli("mount", "memfs", str(mnt), "--recoverable", env=env)
    pids: set[int] = set()
    try:
        assert r.returncode == 0, r.stderr
        st = commands.status(str(mnt))
        keeper = int(st["keeper_pid"])
        pids = {keeper} | children(keeper)
        sock = wire.socket_path(str(mnt))
        log = sock[:-5] + ".log"
        assert stat.S_IMODE(os.lstat(run).st_mode) == 0o700
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(log).st_mode) == 0o600
        fm.unmount(str(mnt))
        deadline = time.monotonic() + 20     # the keeper notices the unmount and exits
        while (os.path.exists(log) or os.path.exists(sock)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(log) and not os.path.exists(sock), os.listdir(run)
    finally:
        unmount_and_kill(mnt, pids)


def test_passthrough_registers_backing_files_as_itself(public_dir: Path) -> None:
    """kernel_passthrough: the BACKING_OPEN ioctl needs CAP_SYS_ADMIN, so it runs with the
    server's identity even inside a request served as a non-root caller."""
    from fusewire.examples.passthrough import Passthrough
    from fusewire.types import RequestContext

    src = public_dir / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    os.chmod(src / "f", 0o644)
    seen: list[tuple[str, str]] = []

    class Notifier:
        def backing_open(self, fd: int) -> int:
            status = Path("/proc/thread-self/status").read_text().splitlines()
            fields = dict(line.split(":", 1) for line in status if ":" in line)
            seen.append((fields["Uid"].split()[3], fields["CapEff"].strip()))
            return 7

        def backing_close(self, backing_id: int) -> None:
            pass

    fs = Passthrough(str(src), kernel_passthrough=True)
    fs.notifier = Notifier()  # type: ignore[assignment]
    try:
        user = RequestContext(4242, 4242, 0, groups=())
        ino = fs.lookup(1, b"f", user).st_ino
        fi = fs.open(ino, os.O_RDONLY, user)
        assert fi.passthrough and fi.backing_id == 7
        fs.release(fi.fh)
    finally:
        fs.destroy()
    assert seen and seen[0][0] == "0" and int(seen[0][1], 16) != 0


# --------------------------------------------------------------------------
# the whole POSIX differential suite, without the kernel's permission checks


def _posix_suite() -> Any:
    import importlib.util
    import sys

    name = "fusewire_posix_suite"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("posix.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("kind", ["memfs", "passthrough"])
def test_posix_suite_without_default_permissions(public_dir: Path, tmp_path: Path,
                                                 kind: str) -> None:
    """Every check of tests/posix.py (including uid 65534 against 0700, 0755 and sticky
    directories) gives the tmpfs answer on a mount where only the server checks."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    suite = _posix_suite()
    reference = _tmpfs(public_dir / "reference")
    source = _tmpfs(public_dir / "source") if kind == "passthrough" else None
    srv = _serve(kind, source, public_dir / "mnt", tmp_path, "allow_other")
    # memfs has no ACLs
    skip = {"posix_acl_minimal", "default_acl_inheritance"} if kind == "memfs" else set()
    diffs = {}
    try:
        for check in suite.CHECKS:
            if check in skip:
                continue
            want = suite.run_check(check, reference)
            got = suite.run_check(check, srv.mountpoint)
            if want != got:
                diffs[check] = (want, got)
    finally:
        srv.close()
    assert not diffs, f"{kind} -o allow_other differs from tmpfs: {diffs}"


# --------------------------------------------------------------------------
# RequestContext.groups


def test_groups_read_lazily_once_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import fusewire.types as types

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(types, "caller_groups",
                        lambda pid, uid, gid: calls.append((pid, uid, gid)) or (7, 8))
    ctx = types.RequestContext(1000, 1000, 4242, 0, 1, None, False, None, (9,))
    assert calls == []                                   # nothing read until asked
    assert ctx.groups == (7, 8, 9) and ctx.groups == (7, 8, 9)
    assert calls == [(4242, 1000, 1000)]                 # once
    assert types.RequestContext(1, 1, 1, groups=(3,)).groups == (3,)
    monkeypatch.undo()
    # the real reader: this thread's own groups, by thread id; refused on an id mismatch
    me = threading.get_native_id()
    assert types.caller_groups(me, os.getuid(), os.getgid()) == tuple(os.getgroups())
    assert types.caller_groups(me, os.getuid() + 1, os.getgid()) == ()
    assert types.caller_groups(0, 0, 0) == ()


MAKE_FILES = textwrap.dedent('''
    import os, sys
    d, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        with open(os.path.join(d, "%s%d" % (prefix, i)), "xb") as f:
            f.write(b"x")
        os.mkdir(os.path.join(d, "%sdir%d" % (prefix, i)))
    print("done")
''')


def test_identity_is_per_thread_with_workers(intruder: Intruder, public_dir: Path,
                                             tmp_path: Path) -> None:
    """Two users create files at once through a passthrough served by three threads:
    every object belongs to the user who created it (no identity leaks across threads)."""
    source = _tmpfs(public_dir / "source")
    os.chmod(source, 0o1777)
    srv = conftest.start_server(["--workers=2", "passthrough", str(source)],
                                public_dir / "mnt", tmp_path, "allow_other")
    try:
        n = "150"
        theirs = intruder.popen(MAKE_FILES, str(srv.mountpoint), "user", n)
        ours = subprocess.Popen([PYTHON, "-c", MAKE_FILES, str(srv.mountpoint), "root", n],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for proc in (theirs, ours):
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0 and out.strip() == "done", err
    finally:
        srv.close()
    owners = {p.name: (os.lstat(p).st_uid, os.lstat(p).st_gid) for p in source.iterdir()}
    assert len(owners) == 4 * int(n)
    wrong = {name: ids for name, ids in owners.items()
             if ids != ((intruder.uid, intruder.gid) if name.startswith("user") else (0, 0))}
    assert not wrong, wrong
