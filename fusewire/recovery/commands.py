"""CLI: ``mount --recoverable`` and the ``keeper``, ``status``, ``upgrade``, ``takeover``
and ``fdstore`` (systemd) commands.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from fusewire.recovery import wire

__all__ = ["mount_recoverable", "register", "wait_ready"]


def register(sub: Any) -> None:
    """Add the recovery subcommands to the ``fusewire`` parser."""
    from fusewire.recovery.keeper import build_parser

    k = sub.add_parser("keeper", help="hold a recoverable mount (normally started by "
                       "`mount --recoverable`)")
    build_parser(k)
    k.set_defaults(func=_cmd_keeper)
    s = sub.add_parser("status", help="show the keeper and server of a recoverable mount")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_status)
    u = sub.add_parser("upgrade", help="hand a recoverable mount over to a fresh server")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=30.0)
    u.set_defaults(func=_cmd_upgrade)
    t = sub.add_parser("takeover", help="start a server for a keeper whose server died "
                       "(restart=manual)")
    t.add_argument("mountpoint")
    t.set_defaults(func=_cmd_takeover)
    from fusewire.recovery.fdstore import build_parser as fdstore_parser

    f = sub.add_parser("fdstore", help="serve a recoverable mount as a systemd service "
                       "(Type=notify; the service's fd store replaces the keeper)")
    fdstore_parser(f)
    f.set_defaults(func=_cmd_fdstore)


def _cmd_keeper(args: argparse.Namespace) -> int:
    from fusewire.recovery.keeper import run_keeper

    return run_keeper(args)


def _cmd_fdstore(args: argparse.Namespace) -> int:
    import logging

    from fusewire.recovery.fdstore import run_args

    logging.getLogger("fusewire").setLevel(logging.INFO)
    return run_args(args)


def status(mountpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """The keeper's status for ``mountpoint`` (raises OSError without a keeper)."""
    return wire.request(wire.socket_path(mountpoint), {"op": "status"}, timeout)


def wait_ready(mountpoint: str, timeout: float = 30.0, *, after_pid: int | None = None,
               keeper: subprocess.Popen[bytes] | None = None,
               give_up: Callable[[dict[str, Any]], bool] | None = None
               ) -> dict[str, Any] | None:
    """Wait until a server (other than ``after_pid``) reports ready.

    None on timeout, when ``keeper`` exits, or when ``give_up(status)`` is true.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if keeper is not None and keeper.poll() is not None:
            return None
        try:
            st = status(mountpoint)
        except OSError:
            st = None
        if st and st.get("ready") and st.get("server_pid") not in (None, after_pid):
            return st
        if st and give_up is not None and give_up(st):
            return None
        time.sleep(0.02)
    return None


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        st = status(args.mountpoint)
    except OSError as exc:
        sys.stderr.write(f"fusewire: no keeper for {args.mountpoint}: {exc}\n")
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    for key in ("mountpoint", "fs", "source", "state", "state_reason", "keeper_pid",
                "server_pid", "ready", "protocol", "recovery", "recovery_why", "restart",
                "restarts",
                "fast_failures", "max_fast_restarts", "upgrades", "nodes", "node_keys", "handles",
                "journal_bytes", "journal_records", "compactions", "takeover_ms", "spare_pid",
                "code_version", "replayed_code_version", "failed_calls"):
        if key in ("source", "replayed_code_version") and st.get(key) is None:
            continue
        if key == "state_reason" and not st.get(key):
            continue
        print(f"{key:17} {st.get(key)}")
    return 0


def _ask_keeper(mountpoint: str, *ops: str) -> list[dict[str, Any]] | None:
    """Send each op to the mount's keeper in turn; None (and a message) on failure."""
    path = wire.socket_path(mountpoint)
    try:
        replies = [wire.request(path, {"op": op}) for op in ops]
    except OSError as exc:
        sys.stderr.write(f"fusewire: no keeper for {mountpoint}: {exc}\n")
        return None
    if not replies[-1].get("ok"):
        sys.stderr.write(f"fusewire: {replies[-1].get('error')}\n")
        return None
    return replies


def umount_via_keeper(mountpoint: str, lazy: bool = False) -> int | None:
    """``fusewire umount`` of a recoverable mount: the keeper unmounts (it fails the calls
    that wait for a server first, so a stopped mount unmounts too).  None: no keeper."""
    try:
        reply = wire.request(wire.socket_path(mountpoint), {"op": "umount", "lazy": lazy}, 15.0)
    except OSError:
        return None
    if not reply.get("ok"):
        sys.stderr.write(f"fusewire: cannot unmount {mountpoint}: {reply.get('error')}\n")
        return 1
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    replies = _ask_keeper(args.mountpoint, "status", "upgrade")
    if replies is None:
        return 1
    before = replies[0]
    st = wait_ready(args.mountpoint, args.timeout, after_pid=before.get("server_pid"))
    if st is None:
        sys.stderr.write("fusewire: the new server did not become ready\n")
        return 1
    print(f"server {before.get('server_pid')} -> {st.get('server_pid')}")
    return 0


def _cmd_takeover(args: argparse.Namespace) -> int:
    if _ask_keeper(args.mountpoint, "restart") is None:
        return 1
    return 0 if wait_ready(args.mountpoint) is not None else 1


def keeper_command(fs: str, source: str | None, mountpoint: str, options: list[str],
                   restart: str, processes: int = 1) -> list[str]:
    """The argv that starts a keeper."""
    cmd = [sys.executable, "-m", "fusewire.recovery.keeper", fs]
    if source is not None:
        cmd.append(source)
    cmd.append(os.path.abspath(mountpoint))
    for o in options:
        cmd += ["-o", o]
    cmd += ["--restart", restart]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    return cmd


def mount_recoverable(args: argparse.Namespace, source: str | None, mountpoint: str) -> int:
    """``fusewire mount --recoverable``: start a keeper (or take over from a waiting one)."""
    path = wire.socket_path(mountpoint)
    try:
        st: dict[str, Any] | None = wire.request(path, {"op": "status"}, 2.0)
    except OSError:
        st = None
    if st is not None:
        if st.get("server_pid"):
            sys.stderr.write(f"fusewire: {mountpoint} is already served by pid "
                             f"{st['server_pid']}\n")
            return 1
        return _cmd_takeover(argparse.Namespace(mountpoint=mountpoint))
    if getattr(args, "workers", 0):
        sys.stderr.write("fusewire: --workers is ignored with --recoverable "
                         "(the journal needs one serving thread)\n")
    if getattr(args, "capture", None):
        sys.stderr.write("fusewire: --capture is ignored with --recoverable\n")
    cmd = keeper_command(args.fs, source, mountpoint, list(args.options), args.restart,
                         int(getattr(args, "processes", 1) or 1))
    if args.foreground or args.debug:
        from fusewire.recovery.keeper import main as keeper_main

        return keeper_main(cmd[3:])
    try:
        wire.ensure_run_dir(os.path.dirname(path))
        logpath = path[:-5] + ".log"       # 0600, never through a link; the keeper
        logfd = wire.open_private(logpath)  # removes it when the mount ends
    except OSError as exc:
        sys.stderr.write(f"fusewire: {exc}\n")
        return 1
    with os.fdopen(logfd, "ab") as logf:
        logstart = logf.tell()
        keeper = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                  start_new_session=True, close_fds=True)
    # the first server dying before it is ready is a broken filesystem (constructor or
    # init() raising): stop there instead of restarting it over and over
    timeout = getattr(args, "ready_timeout", 30.0)
    st = wait_ready(mountpoint, timeout, keeper=keeper,
                    give_up=lambda s: bool(s.get("fast_failures") or s.get("restarts")))
    broken = _probe(mountpoint) if st is not None else None
    if st is None or broken:
        why = (_last_error(logpath, logstart) or broken
               or f"no server was ready within {timeout:g} s")
        _undo(keeper, mountpoint)
        sys.stderr.write(f"fusewire: the recoverable mount did not become ready: {why}; "
                         f"mount undone (log: {logpath})\n")
        return 1
    sys.stderr.write(recovery_line(st))
    return 0


def recovery_line(st: dict[str, Any]) -> str:
    """The line ``mount --recoverable`` prints: which recovery mode the class gets, and why."""
    mode, why = st.get("recovery"), st.get("recovery_why")
    warn = "warning: " if mode == "upgrade-only" else ""
    return f"fusewire: {warn}recovery mode {mode}: {why}\n"


def _undo(keeper: subprocess.Popen[bytes], mountpoint: str) -> None:
    """Stop a keeper we started (its session: it and its servers) and unmount."""
    import signal

    from fusewire.server import mount as _mount

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(keeper.pid, sig)  # the keeper leads the session it was started in
        except ProcessLookupError:
            break
        try:
            keeper.wait(5)
            break
        except subprocess.TimeoutExpired:
            continue
    if _mount.is_mounted(mountpoint):
        try:
            _mount.unmount(mountpoint, lazy=True)
        except OSError:
            pass


def _last_error(logpath: str, start: int) -> str:
    """The last ``SomeError: message`` line the keeper's log got since ``start``."""
    import re

    try:
        with open(logpath, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    found = ""
    for line in text.splitlines():
        m = re.match(r"^([\w.]+(?:Error|Exception|Exit)): (.*)$", line.strip())
        if m:
            found = m.group(2) if m.group(1).endswith("UsageError") else \
                f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    return found


def _probe(mountpoint: str, timeout: float = 5.0) -> str | None:
    """None if the mount answers a stat of its root, else why not (INIT refused...)."""
    import threading

    box: list[str | None] = []

    def stat() -> None:
        try:
            os.stat(mountpoint)
        except OSError as exc:
            box.append(exc.strerror or str(exc))
        else:
            box.append(None)

    t = threading.Thread(target=stat, daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else f"the mount did not answer a stat within {timeout:g} s"
