"""Every mistake a person can make with the ``fusewire`` command gets one line.

Each test runs ``python -m fusewire ...`` as a person would (mistakes refused
before anything is mounted run ``fusewire.cli.main`` in this process, which
is the same code without an interpreter start) and checks: the exit status
is not 0, stderr is exactly one line naming the cause, with no "Traceback",
and afterwards nothing is mounted on the test's mountpoint and no process
serving it is left running.  Tests that need a mount to go wrong
use small filesystems written to a temporary module (a constructor that
raises, an ``init()`` that raises or takes too long).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_unprivileged
from conftest import IS_ROOT, is_fuse_mounted, mount_fstype, server_env

from fusewire.server.mount import dev_fuse_problem

BROKEN_MODULE = textwrap.dedent('''
    """Filesystems that fail in the ways tests/test_cli_errors.py checks."""
    import threading
    from fusewire.examples.memfs import MemFS

    class CtorRaises(MemFS):
        def __init__(self):
            raise RuntimeError("no database at /nowhere")

    class InitRaises(MemFS):
        def init(self):
            raise ZeroDivisionError("init is broken")

    class SlowInit(MemFS):
        def init(self):
            threading.Event().wait(120)   # longer than any readiness timeout here

    class Greeter(MemFS):
        """Takes constructor arguments (--fs-arg) and shows them as a file."""
        def __init__(self, greeting, who="world"):
            super().__init__()
            self.text = f"{greeting}, {who}\\n".encode()

        def init(self):
            from fusewire.types import RequestContext
            ctx = RequestContext(0, 0, 0, 0o022)
            fi, _ = self.create(1, b"greeting", 0o100644, 0o1, ctx)
            self.write(fi.fh, 0, memoryview(self.text))
            self.release(fi.fh)
''')


class CLI:
    """Runs ``python -m fusewire`` with the broken module importable."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        moddir = base / "mod"
        moddir.mkdir()
        (moddir / "fusewire_broken.py").write_text(BROKEN_MODULE)
        self.env = server_env([str(moddir)])

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fusewire", *args], env=self.env,
                              cwd="/", capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def check(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``fusewire.cli.main(args)`` in this process (for mistakes refused before mounting)."""
        import contextlib
        import io

        from fusewire.cli import main

        err, out = io.StringIO(), io.StringIO()
        sys.path.insert(0, str(self.base / "mod"))
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                try:
                    code = main(list(args))
                except SystemExit as exc:  # argparse
                    code = exc.code if isinstance(exc.code, int) else 2
        finally:
            sys.path.remove(str(self.base / "mod"))
        return subprocess.CompletedProcess(["fusewire", *args], code, out.getvalue(),
                                           err.getvalue())

    def pids(self) -> list[int]:
        """Processes whose command line names our (unique) mountpoint."""
        needle = str(self.mnt).encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read()
            except OSError:
                continue
            if needle in argv and b"fusewire" in argv:
                found.append(int(entry))
        return found

    def assert_clean(self) -> None:
        """Nothing mounted on our mountpoint, nothing serving it (allowing 5 s to exit)."""
        assert not is_fuse_mounted(self.mnt), f"{self.mnt} is still mounted"
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.pids() == [], "a process serving the failed mount is still running"

    def cleanup(self) -> None:
        if is_fuse_mounted(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], check=False,
                           stderr=subprocess.DEVNULL)
        for pid in self.pids():  # only what this test started: it names our mountpoint
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def one_line_failure(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert a failed run with one line on stderr that contains every needle."""
    err = r.stderr
    assert r.returncode != 0, f"exit status 0 (stdout {r.stdout!r}, stderr {err!r})"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("fusewire"), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    c = CLI(tmp_path)
    try:
        yield c
    finally:
        c.cleanup()


#: the throwaway-user fixture of test_unprivileged (a user, a mountpoint it owns)
unpriv_user = test_unprivileged.unpriv


def _needs_fuse() -> None:
    problem = dev_fuse_problem()
    if problem is not None:
        pytest.skip(problem)


# --------------------------------------------------------------------------
# mistakes refused before anything is mounted


def test_missing_mountpoint(cli: CLI) -> None:
    one_line_failure(cli.check("mount", "memfs", str(cli.base / "nope")),
                     "mountpoint", "nope", "No such file or directory")
    cli.assert_clean()


def test_mountpoint_is_a_regular_file(cli: CLI) -> None:
    f = cli.base / "file"
    f.write_text("x")
    one_line_failure(cli.check("mount", "memfs", str(f)), "not a directory")
    assert mount_fstype(f) is None
    cli.assert_clean()


@pytest.mark.parametrize(("option", "needle"), [
    ("max_read=abc", "'max_read' needs a decimal number"),
    ("attr_timeout=x", "-o attr_timeout=x: not a number of seconds"),
    ("entry_timeout=-1", "-o entry_timeout=-1: not a number of seconds >= 0"),
    ("fd=3", "'fd' is set by mount()"),
    ("acl=maybe", "-o acl=maybe: acl takes no value"),
])
def test_bad_option_values(cli: CLI, option: str, needle: str) -> None:
    one_line_failure(cli.check("mount", "memfs", str(cli.mnt), "-o", option), needle)
    cli.assert_clean()


def test_unknown_option_refused_with_the_valid_ones(cli: CLI) -> None:
    line = one_line_failure(cli.check("mount", "memfs", str(cli.mnt), "-o", "allow_othr"),
                            "unknown mount option allow_othr")
    valid = line.partition("(valid: ")[2]
    for name in ("allow_other", "default_permissions", "max_read", "attr_timeout",
                 "entry_timeout"):
        assert name in valid, line
    cli.assert_clean()


def test_option_of_another_filesystem_refused(cli: CLI) -> None:
    src = cli.base / "src"
    src.mkdir()
    one_line_failure(cli.check("mount", "passthrough", str(src), str(cli.mnt), "-o",
                             "negative_timeout=1"), "unknown mount option negative_timeout")
    cli.assert_clean()


def test_value_given_to_a_flag_option_refused(cli: CLI) -> None:
    src = cli.base / "src"
    src.mkdir()
    one_line_failure(cli.check("mount", "passthrough", str(src), str(cli.mnt), "-o",
                               "kernel_passthrough=no"),
                     "-o kernel_passthrough=no: kernel_passthrough takes no value")
    cli.assert_clean()


def test_passthrough_missing_source(cli: CLI) -> None:
    one_line_failure(cli.check("mount", "passthrough", str(cli.base / "nosrc"), str(cli.mnt)),
                     "passthrough source", "nosrc", "no such directory")
    cli.assert_clean()


def test_debug_with_recoverable_is_refused(cli: CLI) -> None:
    one_line_failure(cli.check("mount", "memfs", str(cli.mnt), "-d", "--recoverable"),
                     "-d does not work with --recoverable")
    cli.assert_clean()


def test_fs_arg_needs_key_value_and_a_module_class(cli: CLI) -> None:
    one_line_failure(cli.check("mount", "memfs", str(cli.mnt), "--fs-arg", "a=b"),
                     "--fs-arg is for MODULE:CLASS")
    one_line_failure(cli.check("mount", "fusewire_broken:Greeter", str(cli.mnt),
                             "--fs-arg", "novalue"), "expected KEY=VALUE")
    cli.assert_clean()


def test_module_class_mistakes(cli: CLI) -> None:
    one_line_failure(cli.check("mount", "no_such_module:X", str(cli.mnt)),
                     "cannot import 'no_such_module'")
    one_line_failure(cli.check("mount", "fusewire_broken:Nope", str(cli.mnt)),
                     "module 'fusewire_broken' has no 'Nope'")
    one_line_failure(cli.check("mount", "fusewire_broken:Greeter", str(cli.mnt)),
                     "missing 1 required positional argument: 'greeting'", "--fs-arg")
    one_line_failure(cli.check("mount", "fusewire_broken:Greeter", str(cli.mnt),
                             "--fs-arg", "greeting=hi", "--fs-arg", "colour=red"),
                     "unexpected keyword argument 'colour'")
    cli.assert_clean()


def test_replay_passthrough_needs_a_source(cli: CLI) -> None:
    one_line_failure(cli.check("replay", str(cli.base / "capture"), "--ops", "passthrough"),
                     "--ops passthrough needs --source DIR")


# --------------------------------------------------------------------------
# umount


def test_umount_of_a_directory_that_is_not_mounted(cli: CLI) -> None:
    one_line_failure(cli.check("umount", str(cli.mnt)), str(cli.mnt), "not a mountpoint")
    one_line_failure(cli.check("umount", str(cli.base / "nope")), "no such directory")


def test_umount_refuses_a_filesystem_that_is_not_fuse(cli: CLI, tmpfs_dir: Path) -> None:
    if mount_fstype(tmpfs_dir) != "tmpfs":
        pytest.skip("needs a tmpfs mount of our own (root)")
    one_line_failure(cli.check("umount", str(tmpfs_dir)), "is a tmpfs mount, not FUSE")
    assert mount_fstype(tmpfs_dir) == "tmpfs", "fusewire umount unmounted a tmpfs"


# --------------------------------------------------------------------------
# background mounts that fail: the real cause, and nothing left behind


@pytest.mark.fuse
def test_constructor_raises(cli: CLI) -> None:
    _needs_fuse()
    one_line_failure(cli.run("mount", "fusewire_broken:CtorRaises", str(cli.mnt)),
                     "the constructor raised RuntimeError: no database at /nowhere")
    cli.assert_clean()


@pytest.mark.fuse
def test_init_raises_in_a_background_mount(cli: CLI) -> None:
    _needs_fuse()
    one_line_failure(cli.run("mount", "fusewire_broken:InitRaises", str(cli.mnt)),
                     "init() raised ZeroDivisionError: init is broken", "mount undone")
    cli.assert_clean()


@pytest.mark.fuse
def test_init_longer_than_the_readiness_timeout(cli: CLI) -> None:
    _needs_fuse()
    t0 = time.monotonic()
    one_line_failure(cli.run("mount", "fusewire_broken:SlowInit", str(cli.mnt),
                             "--ready-timeout", "1"),
                     "did not answer INIT within 1 s", "mount undone")
    assert time.monotonic() - t0 < 30
    cli.assert_clean()


@pytest.mark.fuse
def test_fs_args_reach_the_constructor(cli: CLI) -> None:
    _needs_fuse()
    r = cli.run("mount", "fusewire_broken:Greeter", str(cli.mnt), "--fs-arg", "greeting=hello",
                "--fs-arg", "who=a, b")
    assert r.returncode == 0, r.stderr
    try:
        assert (cli.mnt / "greeting").read_text() == "hello, a, b\n"
    finally:
        u = cli.run("umount", str(cli.mnt))
    assert u.returncode == 0, u.stderr
    cli.assert_clean()


@pytest.mark.fuse
def test_recoverable_constructor_raises_is_not_restarted_forever(cli: CLI) -> None:
    _needs_fuse()
    t0 = time.monotonic()
    one_line_failure(cli.run("mount", "fusewire_broken:CtorRaises", str(cli.mnt),
                             "--recoverable"),
                     "did not become ready", "no database at /nowhere", "mount undone")
    assert time.monotonic() - t0 < 30
    cli.assert_clean()


@pytest.mark.fuse
def test_recoverable_init_raises(cli: CLI) -> None:
    _needs_fuse()
    one_line_failure(cli.run("mount", "fusewire_broken:InitRaises", str(cli.mnt),
                             "--recoverable"),
                     "did not become ready", "init is broken", "mount undone")
    cli.assert_clean()


@pytest.mark.fuse
@pytest.mark.skipif(not IS_ROOT, reason="switching to the test user needs root")
def test_allow_other_refused_for_a_user(unpriv_user) -> None:  # type: ignore[no-untyped-def]
    """A user's ``-o allow_other`` without user_allow_other: fusermount3's reason, one line."""
    user, mnt = unpriv_user
    try:
        with open("/etc/fuse.conf") as f:
            if any(line.strip() == "user_allow_other" for line in f):
                pytest.skip("/etc/fuse.conf allows allow_other for users")
    except FileNotFoundError:
        pass
    r = user.py("-m", "fusewire", "mount", "memfs", str(mnt), "-o", "allow_other")
    one_line_failure(r, "cannot mount", "allow_other")
    assert not is_fuse_mounted(mnt)
