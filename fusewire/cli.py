"""The ``fusewire`` command line (also ``python -m fusewire``).

``fusewire mount memfs MOUNTPOINT`` and ``fusewire mount passthrough SOURCE
MOUNTPOINT`` take libfuse's conventions: ``-o OPTIONS``, ``-f`` to stay in
the foreground, ``-d`` for a one-line-per-message debug trace.  Without
``-f`` the command returns once the mount answers and the server keeps
serving in the background.  ``fusewire umount MOUNTPOINT`` unmounts.
``fusewire demo`` mounts memfs on a temporary directory, shows it working
and unmounts.  Other subcommands (dump, replay, keeper, status, upgrade)
are registered by the testing and recovery packages.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fusewire.errors import UsageError
from fusewire.examples import FS_ARG_PREFIX, FS_OPTIONS
from fusewire.examples import build_ops as _build_ops
from fusewire.operations import Operations
from fusewire.server import mount as _mount

__all__ = ["UsageError", "build_ops", "check_options", "main", "mount_fstype"]

log = logging.getLogger("fusewire")

#: CLI modules that add subcommands: each has ``register(subparsers)``.
PLUGINS = ("fusewire.testing.commands", "fusewire.recovery.commands")

#: ``-o`` options that the server and recovery read from ``MountOptions.extra``
LIBRARY_OPTIONS = ("allow_root", "max_minor", "insecure_allow_other")


def build_ops(kind: str, source: str | None, extra: dict[str, str]) -> Operations:
    """:func:`fusewire.examples.build_ops`, with a bad spec reported as one line (SystemExit)."""
    try:
        return _build_ops(kind, source, extra)
    except UsageError as e:
        raise SystemExit(f"fusewire: {e}") from None


def check_options(kind: str, extra: dict[str, str]) -> None:
    """Refuse ``-o`` options nobody consumes (libfuse refuses them too)."""
    valid = set(FS_OPTIONS.get(kind, ())) | set(LIBRARY_OPTIONS)
    unknown = [k for k in extra if k not in valid
               and not (":" in kind and k.startswith(FS_ARG_PREFIX))]
    if unknown:
        names = sorted(set(_mount.known_options()) | valid)
        raise UsageError(f"unknown mount option{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)} (valid: {', '.join(names)})")


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _add_mount(sub: Any) -> None:
    p = sub.add_parser("mount", help="mount a filesystem",
                       description="Mount memfs, passthrough, or MODULE:CLASS.")
    p.add_argument("fs", help="memfs, passthrough, or MODULE:CLASS (CLASS(SOURCE) with a SOURCE)")
    p.add_argument("paths", nargs="+", help="[SOURCE] MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[], help="mount options")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="trace every message (implies -f)")
    p.add_argument("--workers", type=int, default=0, help="extra threads on cloned fds")
    p.add_argument("--processes", default="1", metavar="N",
                   help="serve from N processes on cloned fds ('auto': one per CPU); "
                   "passthrough only")
    p.add_argument("--capture", metavar="FILE", help="record every message to FILE")
    p.add_argument("--fs-arg", dest="fs_args", metavar="KEY=VALUE", action="append",
                   default=[], help="keyword argument (a string) for a MODULE:CLASS "
                   "filesystem's constructor (repeatable)")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT, metavar="SECONDS",
                   help="without -f: how long to wait for the filesystem to answer INIT "
                   f"(default {READY_TIMEOUT:g}); a mount not ready by then is undone")
    p.add_argument("--recoverable", action="store_true",
                   help="keep the mount alive across server crashes (a keeper holds the fd)")
    p.add_argument("--restart", choices=("auto", "manual"), default="auto",
                   help="with --recoverable: restart a dead server automatically or not")
    p.set_defaults(func=_cmd_mount)
    u = sub.add_parser("umount", help="unmount", aliases=["unmount"])
    u.add_argument("mountpoint")
    u.add_argument("-z", "--lazy", action="store_true", help="lazy unmount")
    u.set_defaults(func=_cmd_umount)
    d = sub.add_parser("demo", help="mount memfs on a temporary directory, show it, unmount")
    d.set_defaults(func=_cmd_demo)


#: seconds a background mount may take to answer INIT before it is undone
READY_TIMEOUT = 30.0


def _split_paths(args: argparse.Namespace) -> tuple[str | None, str]:
    if ":" in args.fs and len(args.paths) == 2:      # MODULE:CLASS SOURCE MOUNTPOINT
        return os.path.abspath(args.paths[0]), args.paths[1]
    if args.fs == "passthrough":
        if len(args.paths) != 2:
            raise UsageError("usage: fusewire mount passthrough SOURCE MOUNTPOINT")
        return os.path.abspath(args.paths[0]), args.paths[1]
    if len(args.paths) != 1:
        raise UsageError(f"usage: fusewire mount {args.fs} MOUNTPOINT")
    return None, args.paths[0]


def _check_mountpoint(mountpoint: str) -> None:
    """A mountpoint must be an existing directory (a file would give a broken mount)."""
    if _mount.is_mounted(mountpoint):
        return  # a FUSE mount (stacking, or a keeper waiting): a stat could block on it
    try:
        st = os.stat(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNREFUSED, errno.ECONNABORTED):
            raise UsageError(f"mountpoint {mountpoint}: {os.strerror(exc.errno or 0)} (a dead "
                             f"mount? `fusewire umount {mountpoint}` removes it)") from None
        raise UsageError(f"mountpoint {mountpoint}: {os.strerror(exc.errno or 0)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {mountpoint} is not a directory")


def _fs_arg_options(args: argparse.Namespace) -> list[str]:
    """``--fs-arg KEY=VALUE`` as ``-o fsarg.KEY=VALUE`` (they travel with the options)."""
    out = []
    for item in args.fs_args:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise UsageError(f"--fs-arg {item!r}: expected KEY=VALUE with KEY an identifier")
        if ":" not in args.fs:
            raise UsageError(f"--fs-arg is for MODULE:CLASS filesystems, not {args.fs}")
        out.append(FS_ARG_PREFIX + key + "=" + value.replace("\\", "\\\\").replace(",", "\\,"))
    return out


def _check_recoverable_processes(ops: Operations) -> None:
    """``--recoverable --processes N``: only a handles-mode filesystem (docs/recovery.md)."""
    from fusewire.recovery_api import recovery_mode

    mode = recovery_mode(ops)[0]
    if mode != "handles":
        raise UsageError(f"--recoverable --processes needs a handles-mode filesystem "
                         f"(e.g. passthrough); {type(ops).__name__} recovers by {mode}")


def _cmd_mount(args: argparse.Namespace) -> int:
    source, mountpoint = _split_paths(args)
    args.options = list(args.options) + _fs_arg_options(args)
    options = _mount.parse_options(args.options, fsname=f"fusewire-{args.fs}",
                                   subtype=args.fs if ":" not in args.fs else None)
    if ("allow_other" in options.kernel and "default_permissions" not in options.kernel
            and "entry_timeout" in FS_OPTIONS.get(args.fs, ())
            and "entry_timeout" not in options.extra):
        # the kernel checks nothing during a path walk then: a cached entry would skip
        # the filesystem's own search-permission check (docs/security.md)
        args.options.append("entry_timeout=0")
        options = _mount.parse_options(args.options, fsname=f"fusewire-{args.fs}",
                                       subtype=args.fs if ":" not in args.fs else None)
    extra = dict(options.extra)
    check_options(args.fs, extra)
    _check_mountpoint(mountpoint)
    ops: Operations | None = None
    if _mount.allow_other_problem(options, False) is not None:
        # allow_other without default_permissions: only if the filesystem checks itself
        ops = _build_ops(args.fs, source, dict(extra))
        problem = _mount.allow_other_problem(options, ops.checks_permissions)
        if problem is not None:
            ops.destroy()
            raise UsageError(problem)
    if args.processes != "1":
        from fusewire.server.processes import check_processes, default_processes

        if ops is None:
            ops = _build_ops(args.fs, source, extra)
        try:
            try:
                n = default_processes() if args.processes == "auto" else int(args.processes)
            except ValueError:
                raise UsageError(f"--processes takes a number or 'auto', not "
                                 f"{args.processes!r}") from None
            if args.recoverable:    # --capture and --workers are ignored there
                check_processes(ops, n)
                if n > 1:
                    _check_recoverable_processes(ops)
            else:
                check_processes(ops, n, capture=args.capture, workers=args.workers)
        except UsageError:
            ops.destroy()
            raise
        args.processes = n
    else:
        args.processes = 1
    if args.recoverable:
        if ops is not None:
            ops.destroy()       # the keeper's server builds its own
        if args.debug:
            raise UsageError("-d does not work with --recoverable (the server is a child of "
                             "the keeper): use -f and read the keeper's log, or mount "
                             "without --recoverable to trace")
        from fusewire.recovery.commands import mount_recoverable

        code: int = mount_recoverable(args, source, mountpoint)
        return code
    if ops is None:
        ops = _build_ops(args.fs, source, extra)
    if args.debug:
        args.foreground = True
    if args.foreground:
        return _serve(ops, mountpoint, args, None)
    return _daemonize(lambda report: _serve(ops, mountpoint, args, report), mountpoint)


class _Report:
    """The child's one message to the waiting parent: ready, or why not (once)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, ok: bool, why: str = "") -> bool:
        """Send the report unless one was sent; True if this call sent it."""
        with self.lock:
            if self.fd < 0:
                return False
            fd, self.fd = self.fd, -1
        try:
            os.write(fd, b"1" if ok else b"0" + why.encode(errors="replace")[:4000])
        except OSError:
            pass
        os.close(fd)
        return True


def _open_capture(args: argparse.Namespace) -> Any:
    """The --capture writer: a new private file, never an existing one or a link."""
    if not args.capture:
        return None
    from fusewire.testing.capture import CaptureWriter

    try:
        return CaptureWriter(args.capture)
    except FileExistsError:
        raise UsageError(f"--capture {args.capture}: the file exists (a capture is never "
                         "written over or through a link)") from None
    except OSError as exc:
        raise UsageError(f"--capture {args.capture}: {exc.strerror or exc}") from None


def _serve(ops: Operations, mountpoint: str, args: argparse.Namespace,
           report: _Report | None) -> int:
    from fusewire.server.loop import Server

    capture = _open_capture(args)
    server = Server(ops, mountpoint, args.options, debug=args.debug, workers=args.workers,
                    capture=capture, processes=args.processes, fsname=f"fusewire-{args.fs}",
                    subtype=args.fs if ":" not in args.fs else None)
    try:
        server.mount()
    except OSError as exc:
        if capture is not None:
            capture.close()
        why = " ".join(str(exc.strerror or exc).split())
        raise UsageError(f"cannot mount {mountpoint}: {why}") from None
    if report is not None:
        timeout = args.ready_timeout

        def watch() -> None:
            if server.ready.wait(timeout):
                report.send(True)
            elif report.send(False, f"{args.fs} did not answer INIT within {timeout:g} s "
                                    "(init() too slow?); mount undone"):
                # init() is still running in the serving thread: undo the mount, end it all
                try:
                    _mount.unmount(server.mountpoint, lazy=True)
                except OSError:
                    pass
                os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    try:
        server.serve()
    except RuntimeError:
        failed = server.dispatcher.init_error
        if failed is None:
            raise
        raise UsageError(f"{args.fs}: init() raised {_describe(failed)}; "
                         "mount undone") from failed
    finally:
        server.close()
        if capture is not None:
            capture.close()
    return 0


def _daemonize(body: Callable[[_Report], int], mountpoint: str) -> int:
    """Fork; the child serves in a new session, the parent returns once the mount is ready.

    A child that fails before that sends one line saying why; the parent
    prints it, waits for the child to end, and makes sure nothing is left
    mounted.
    """
    was_mounted = _mount.is_mounted(mountpoint)  # stacking: never unmount what was there
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        status = b"".join(chunks)
        if status == b"1":
            return 0
        why = status[1:].decode(errors="replace").strip()
        _reap(pid)
        if not was_mounted and _mount.is_mounted(mountpoint):
            try:
                _mount.unmount(mountpoint, lazy=True)
            except OSError:
                pass
        raise UsageError(why or "the server exited before the mount was ready")
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    report = _Report(w)
    code = 1
    try:
        code = body(report)
    except UsageError as exc:
        report.send(False, str(exc))
    except BaseException as exc:
        log.exception("server failed")
        report.send(False, f"the server failed: {_describe(exc)}")
    finally:
        report.send(False, "the server stopped before the mount was ready")
        os._exit(code)


def _reap(pid: int, timeout: float = 10.0) -> None:
    """Wait for our child ``pid``; SIGKILL it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def mount_fstype(path: str) -> str | None:
    """The fstype of the topmost mount whose mountpoint is ``path`` (None: not a mount)."""
    wanted = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, _, right = line.partition(b" - ")
            fields = left.split(b" ")
            if len(fields) < 5 or not right:
                continue
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            if os.fsdecode(point) == wanted:
                found = right.split(b" ")[0].decode(errors="replace")
    return found


def _cmd_umount(args: argparse.Namespace) -> int:
    if not _mount.is_mounted(args.mountpoint):   # reads mountinfo: never blocks on a mount
        fstype = mount_fstype(args.mountpoint)
        if fstype is not None:
            raise UsageError(f"{args.mountpoint} is a {fstype} mount, not FUSE: "
                             "not unmounting it")
        if not os.path.exists(args.mountpoint):
            raise UsageError(f"{args.mountpoint}: no such directory")
        raise UsageError(f"{args.mountpoint} is not a mountpoint")
    from fusewire.recovery.commands import umount_via_keeper

    done = umount_via_keeper(args.mountpoint, args.lazy)     # a recoverable mount
    if done is not None:
        return done
    try:
        _mount.unmount(args.mountpoint, lazy=args.lazy)
    except OSError as exc:
        hint = " (in use: try -z for a lazy unmount)" if exc.errno == errno.EBUSY else ""
        raise UsageError(f"cannot unmount {args.mountpoint}: {exc.strerror or exc}{hint}")\
            from None
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fusewire.demo import run_demo

    return run_demo()


def _version() -> str:
    from fusewire import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree, with plugin subcommands."""
    parser = argparse.ArgumentParser(prog="fusewire", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    parser.add_argument("--version", action="version", version=f"fusewire {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_mount(sub)
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusewire`` command."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "debug", False) else (
        logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result: int = args.func(args)
    except ValueError as exc:  # UsageError and option parsing
        # a mistake a person can fix: one line, no traceback
        sys.stderr.write(f"fusewire: {exc}\n")
        if args.verbose:
            log.error("details", exc_info=exc)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"fusewire:{where} {exc.strerror or exc}\n")
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
