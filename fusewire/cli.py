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
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fusewire.operations import Operations
from fusewire.server import mount as _mount

__all__ = ["build_ops", "main"]

log = logging.getLogger("fusewire")

#: CLI modules that add subcommands: each has ``register(subparsers)``.
PLUGINS = ("fusewire.testing.commands", "fusewire.recovery.commands")


def build_ops(kind: str, source: str | None, extra: dict[str, str]) -> Operations:
    """:func:`fusewire.examples.build_ops`, with a bad spec reported as one line (SystemExit)."""
    from fusewire.errors import UsageError
    from fusewire.examples import build_ops as _build

    try:
        return _build(kind, source, extra)
    except UsageError as e:
        raise SystemExit(f"fusewire: {e}") from None


def _add_mount(sub: Any) -> None:
    p = sub.add_parser("mount", help="mount a filesystem",
                       description="Mount memfs, passthrough, or MODULE:CLASS.")
    p.add_argument("fs", help="memfs, passthrough, or MODULE:CLASS")
    p.add_argument("paths", nargs="+", help="[SOURCE] MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[], help="mount options")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="trace every message (implies -f)")
    p.add_argument("--workers", type=int, default=0, help="extra threads on cloned fds")
    p.add_argument("--processes", default="1", metavar="N",
                   help="serve from N processes on cloned fds ('auto': one per CPU); "
                   "passthrough only")
    p.add_argument("--capture", metavar="FILE", help="record every message to FILE")
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


def _split_paths(args: argparse.Namespace) -> tuple[str | None, str]:
    if args.fs == "passthrough":
        if len(args.paths) != 2:
            raise SystemExit("usage: fusewire mount passthrough SOURCE MOUNTPOINT")
        return os.path.abspath(args.paths[0]), args.paths[1]
    if len(args.paths) != 1:
        raise SystemExit(f"usage: fusewire mount {args.fs} MOUNTPOINT")
    return None, args.paths[0]


def _cmd_mount(args: argparse.Namespace) -> int:
    source, mountpoint = _split_paths(args)
    if args.recoverable and args.processes != "1":
        raise SystemExit("fusewire: --processes cannot be combined with --recoverable yet "
                         "(docs/design.md, Multi-process serving)")
    if args.recoverable:
        from fusewire.recovery.commands import mount_recoverable

        code: int = mount_recoverable(args, source, mountpoint)
        return code
    options = _mount.parse_options(args.options, fsname=f"fusewire-{args.fs}",
                                   subtype=args.fs if ":" not in args.fs else None)
    extra = dict(options.extra)
    ops = build_ops(args.fs, source, extra)
    if args.processes != "1":
        from fusewire.server.processes import check_processes, default_processes

        try:
            args.processes = (default_processes() if args.processes == "auto"
                              else int(args.processes))
            check_processes(ops, args.processes, capture=args.capture, workers=args.workers)
        except ValueError as exc:
            text = str(exc) if not str(exc).startswith("invalid literal") else \
                f"--processes takes a number or 'auto', not {args.processes!r}"
            raise SystemExit(f"fusewire: {text}") from None
    else:
        args.processes = 1
    if args.debug:
        args.foreground = True
    if args.foreground:
        return _serve(ops, mountpoint, args, None)
    return _daemonize(lambda ready_w: _serve(ops, mountpoint, args, ready_w))


def _serve(ops: Operations, mountpoint: str, args: argparse.Namespace,
           ready_w: int | None) -> int:
    from fusewire.server.loop import Server

    capture = None
    if args.capture:
        from fusewire.testing.capture import CaptureWriter

        capture = CaptureWriter(args.capture)
    server = Server(ops, mountpoint, args.options, debug=args.debug, workers=args.workers,
                    capture=capture, processes=args.processes, fsname=f"fusewire-{args.fs}",
                    subtype=args.fs if ":" not in args.fs else None)
    server.mount()
    if ready_w is not None:
        import threading

        def report() -> None:
            ok = server.ready.wait(30)
            os.write(ready_w, b"1" if ok else b"0")
            os.close(ready_w)

        threading.Thread(target=report, daemon=True).start()
    try:
        server.serve()
    finally:
        server.close()
        if capture is not None:
            capture.close()
    return 0


def _daemonize(body: Callable[[int], int]) -> int:
    """Fork; the child serves in a new session, the parent returns once the mount is ready."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        status = os.read(r, 1)
        os.close(r)
        if status != b"1":
            sys.stderr.write("fusewire: the mount did not become ready\n")
            return 1
        return 0
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    code = 1
    try:
        code = body(w)
    except BaseException:
        log.exception("server failed")
    finally:
        os._exit(code)


def _cmd_umount(args: argparse.Namespace) -> int:
    _mount.unmount(args.mountpoint, lazy=args.lazy)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fusewire.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree, with plugin subcommands."""
    parser = argparse.ArgumentParser(prog="fusewire", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
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
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
