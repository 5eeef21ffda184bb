"""The keeper: holds the /dev/fuse file and the journal memfd; hands them to one owner.

It also holds the descriptors a filesystem keeps its bulk state in
(``ReplayRecovery.recovery_fds``: memfs's file data memfd), which the first
server hands over before it serves; they go with every grant, last.

It mounts (so it holds the first copy of the connection's file), then starts
servers.  It never reads or writes FUSE messages and never unmounts.  One
owner at a time gets the fds by SCM_RIGHTS; the owner's control connection
doubles as its liveness signal: when it closes, the owner is gone (crash,
upgrade or unmount).  With ``restart=auto`` a *warm spare* (a successor
process already started and imported, queued for the fds) is granted at once,
which keeps interpreter start-up out of the takeover latency; without one a
successor is spawned.  Quick successive deaths back off exponentially and
after ``max_fast_restarts`` the keeper stops restarting (manual mode).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from fusewire.opcodes.table import OPS
from fusewire.recovery import journal as jn
from fusewire.recovery import wire
from fusewire.server import mount as _mount
from fusewire.structs.codec import CODECS

__all__ = ["Keeper", "main"]

log = logging.getLogger("fusewire.keeper")

#: an owner that dies sooner than this after taking over, without having answered a
#: single request that was not re-sent, counts as a fast failure (a crash loop)
FAST_DEATH = 2.0
#: a mount left without a server (``stopped``) this long gets its waiting calls failed
STOPPED_GRACE = 10.0
#: the longest an upgrade waits for the spare to re-load changed code
UPGRADE_WAIT = 30.0
_NO_REPLY = frozenset(op for op, row in OPS.items() if not row.needs_reply)
_IN_HDR = CODECS["in_header"].head(3)     # len, opcode, unique
_OUT_HDR = CODECS["out_header"].struct
#: larger than any request (max_write is at most 1 MiB (256 pages) + headers)
_READ_SIZE = (1 << 20) + (64 << 10)


@dataclass
class _Client:
    sock: socket.socket
    pid: int
    uid: int
    role: str = "new"       # new | waiting | owner
    since: float = 0.0
    progressed: bool = False    # answered a request that was not re-sent
    preloaded: bool = False     # a queued spare that has loaded the journal offered
    code: str | None = None     # the code version it loaded


class Keeper:
    """State and event loop of a keeper process."""

    def __init__(self, mountpoint: str, fs: str, source: str | None, options: list[str],
                 restart: str = "auto", max_fast_restarts: int = 20,
                 spare: bool = True, stopped_grace: float = STOPPED_GRACE,
                 processes: int = 1) -> None:
        self.mountpoint = os.path.abspath(mountpoint)
        #: serving processes per server (fusewire.server.processes); with more than
        #: one, the owner hands over its shared table memfd and each process's clone
        #: of the /dev/fuse fd ("shared"), granted to every successor after the journal
        self.processes = processes
        self.shared_fds: list[int] = []
        #: the filesystem's recovery_fds (state that outlives every server)
        self.fs_fds: list[int] = []
        self.fs = fs
        self.source = source
        self.options = options
        self.restart = restart
        self.max_fast_restarts = max_fast_restarts
        self.want_spare = spare
        self.path = wire.socket_path(self.mountpoint)
        self.fuse_fd = -1
        self.journal_fd = -1
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.owner: _Client | None = None
        self.waiting: list[_Client] = []
        self.children: list[subprocess.Popen[bytes]] = []
        self.spare_proc: subprocess.Popen[bytes] | None = None
        #: the server spawned to take a grant, until it owns the mount
        self.pending_spawn: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.upgrades = 0
        #: journals swapped in by the owner's compactions
        self.compactions = 0
        self.fast_failures = 0
        self.gave_up = False
        self.grant_at: float | None = None
        self.handover = False
        self.ever_owned = False
        self.unmounted = False
        self.ready = False
        self.owner_info: dict[str, Any] = {}
        self.died_at = 0.0
        self.quit = False
        #: set by SIGINT/SIGTERM: unmount and stop the servers on the way out
        self.signalled = False
        self.stopped_grace = stopped_grace
        #: when the mount was left without a server that will come by itself
        self.stopped_since: float | None = None
        #: a clone of the /dev/fuse fd (O_NONBLOCK) on which the keeper answers every
        #: request with ENOTCONN while stopped past the grace period
        self.fail_fd = -1
        self.failed_calls = 0
        #: an upgrade waits (until then) for the spare to check its code
        self.upgrade_at: float | None = None

    # -- setup ----------------------------------------------------------------------

    def setup(self) -> None:
        wire.ensure_run_dir(os.path.dirname(self.path))
        try:
            probe = wire.connect(self.path, 1.0)
        except OSError:
            pass
        else:
            probe.close()
            raise SystemExit(f"a keeper already serves {self.mountpoint}")
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        opts = _mount.parse_options(self.options, fsname=f"fusewire-{self.fs}",
                                    subtype=self.fs if ":" not in self.fs else None)
        self.fuse_fd = _mount.mount(self.mountpoint, opts,
                                    checks_permissions=_checks_permissions(
                                        self.fs, self.source, self.options))
        self.journal_fd = jn.new_memfd()
        self.follower = jn.JournalFollower(self.journal_fd)
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            lsock.bind(self.path)
        finally:
            os.umask(old)
        lsock.listen(16)
        lsock.setblocking(False)
        self.lsock = lsock
        self.sel.register(lsock, selectors.EVENT_READ, None)
        log.info("keeper %d: mounted %s, socket %s", os.getpid(), self.mountpoint, self.path)

    # -- children ---------------------------------------------------------------------

    def _spawn(self, spare: bool) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        if self.ever_owned or spare:
            env.pop("FUSEWIRE_CRASH_AT", None)  # test hook: only the first server crashes
        cmd = [sys.executable, "-m", "fusewire.recovery.successor", "--socket", self.path]
        # own session: a terminal's Ctrl-C reaches the keeper only, which stops them
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True)
        self.children.append(proc)
        log.info("started %s server pid %d", "spare" if spare else "a", proc.pid)
        return proc

    def _reap(self) -> None:
        alive = []
        for p in self.children:
            if p.poll() is None:
                alive.append(p)
                continue
            if p is self.spare_proc:
                self.spare_proc = None
            if p is self.pending_spawn:
                self.pending_spawn = None
                if self.owner is None and not self.unmounted:
                    log.warning("server pid %d exited (%s) before taking the mount",
                                p.pid, p.returncode)
                    self._failed(fast=True)
        self.children = alive

    def _ensure_spare(self) -> None:
        if (self.restart != "auto" or not self.want_spare or self.owner is None
                or self.waiting or self.unmounted):
            return
        if self.spare_proc is not None and self.spare_proc.poll() is None:
            return
        self.spare_proc = self._spawn(spare=True)

    # -- granting ----------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"mountpoint": self.mountpoint, "fs": self.fs,
                                "source": self.source, "options": self.options}
        if self.processes > 1:
            meta["processes"] = self.processes
        return meta

    def _offer(self, c: _Client) -> None:
        """Let a queued spare pre-load the current journal (read only, no /dev/fuse)."""
        c.preloaded = False
        try:
            wire.send_msg(c.sock, {"ok": True, "queued": True, "meta": self._meta()},
                          [self.journal_fd])
        except OSError:
            self._drop(c)

    def _grant(self, c: _Client) -> None:
        self._stop_failing()
        meta = self._meta()
        first = not self.ever_owned
        graceful = self.handover
        try:
            wire.send_msg(c.sock, {"ok": True, "meta": meta, "first": first,
                                   "graceful": graceful, "restarts": self.restarts,
                                   "fs_fds": len(self.fs_fds)},
                          [self.fuse_fd, self.journal_fd, *self.shared_fds, *self.fs_fds])
        except OSError as exc:
            log.warning("grant to pid %d failed: %s", c.pid, exc)
            self._drop(c)
            return
        c.role = "owner"
        c.since = time.monotonic()
        self.owner = c
        if self.pending_spawn is not None and self.pending_spawn.pid == c.pid:
            self.pending_spawn = None
        self.ever_owned = True
        self.handover = False
        self.ready = False
        if self.spare_proc is not None and self.spare_proc.pid == c.pid:
            self.spare_proc = None
        log.info("pid %d owns the mount (graceful=%s)", c.pid, graceful)

    def _owner_gone(self) -> None:
        c = self.owner
        self.owner = None
        self.ready = False
        if self.unmounted:
            self.quit = True
            return
        graceful = self.handover
        lived = time.monotonic() - (c.since if c else 0.0)
        self.died_at = time.monotonic()
        if graceful:
            self.upgrades += 1
            self.fast_failures = 0
            self.grant_at = time.monotonic()
            self._tick_grant()
            return
        self.restarts += 1
        self._failed(lived < FAST_DEATH and not (c is not None and c.progressed))

    def _failed(self, fast: bool) -> None:
        """A server died (or never started): restart it, later, or not at all."""
        self.fast_failures = self.fast_failures + 1 if fast else 0
        if self.restart != "auto":
            log.warning("server died; restart=manual: waiting for a takeover")
            return
        if self.fast_failures > self.max_fast_restarts:
            self.gave_up = True
            log.error("server failed %d times in a row; not restarting (run "
                      "`fusewire takeover %s` once fixed)", self.fast_failures,
                      self.mountpoint)
            return
        delay = 0.0 if self.fast_failures <= 1 else min(0.05 * 2 ** self.fast_failures, 5.0)
        self.grant_at = time.monotonic() + delay
        self._tick_grant()

    def _tick_grant(self) -> None:
        if self.grant_at is None or self.owner is not None:
            return
        if time.monotonic() < self.grant_at:
            return
        self.grant_at = None
        while self.waiting:
            c = self.waiting.pop(0)
            if c.sock.fileno() >= 0:
                self._grant(c)
                if self.owner is not None:
                    return
        self.pending_spawn = self._spawn(spare=False)

    # -- client messages -----------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self.lsock.accept()
        except BlockingIOError:
            return
        pid, uid, _gid = wire.peer_cred(sock)
        if uid not in (0, os.geteuid()):
            log.warning("refusing pid %d uid %d", pid, uid)
            sock.close()
            return
        sock.setblocking(True)
        sock.settimeout(5.0)
        c = _Client(sock, pid, uid)
        self.clients[sock.fileno()] = c
        self.sel.register(sock, selectors.EVENT_READ, c)

    def _drop(self, c: _Client) -> None:
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self.clients.pop(c.sock.fileno(), None)
        if c in self.waiting:
            self.waiting.remove(c)
        c.sock.close()
        if c is self.owner:
            self._owner_gone()

    def _handle(self, c: _Client) -> None:
        try:
            msg, fds = wire.recv_msg(c.sock)
        except (OSError, ValueError):
            msg, fds = None, []
        if msg is None:
            self._drop(c)
            return
        op = msg.get("op")
        reply: dict[str, Any] | None = {"ok": True}
        if op == "attach":
            if self.unmounted:
                reply = {"ok": False, "error": "unmounted"}
            elif (self.owner is None and self.grant_at is None and not self.waiting
                  and self.state()[0] != "stopped"):
                self._grant(c)
                reply = None
            else:
                c.role = "waiting"
                self.waiting.append(c)
                self._offer(c)
                reply = None
        elif op == "journal" and c is self.owner and fds:
            old = self.journal_fd
            self.journal_fd = fds.pop(0)
            os.close(old)
            self.compactions += 1
            for w in list(self.waiting):
                self._offer(w)
        elif op == "shared" and c is self.owner and fds:
            # multi-process owner: its table memfd and clones (a whole-server crash
            # leaves unanswered requests queued on the clones we hold, for RESEND)
            old_fds, self.shared_fds, fds = self.shared_fds, fds, []
            for fd in old_fds:
                if fd not in self.shared_fds:
                    os.close(fd)
        elif op == "fs_fds" and c is self.owner:
            if self.fs_fds:         # held once, for the whole mount
                reply = {"ok": False, "error": "the filesystem's fds are held already"}
            else:
                self.fs_fds, fds = fds, []
                log.info("holding %d descriptor(s) of the filesystem's state",
                         len(self.fs_fds))
        elif op == "ready" and c is self.owner:
            self.ready = True
            self.owner_info = dict(msg)
            self._ensure_spare()
        elif op == "preloaded":         # never answered: the spare waits for its grant
            if c in self.waiting:
                c.preloaded = True
                c.code = msg.get("code")
                if self.upgrade_at is not None:
                    self._signal_upgrade()
            reply = None
        elif op == "progress" and c is self.owner:
            c.progressed = True
            self.fast_failures = 0
        elif op == "handover" and c is self.owner:
            self.handover = True
        elif op == "unmounted":
            self.unmounted = True
        elif op == "status":
            reply = self.status()
        elif op == "umount":
            reply = self._umount(bool(msg.get("lazy")))
        elif op == "upgrade":
            if self.owner is None:
                reply = {"ok": False, "error": "no server is running"}
            else:
                self._upgrade()
        elif op == "fresh":             # the spare checked its code: nothing changed
            reply = None
            if self.upgrade_at is not None:
                self._signal_upgrade()
        elif op == "reoffer":           # a spare re-executed into new code (no reply)
            reply = None
            if c in self.waiting:
                self._offer(c)
        elif op == "restart":
            if self.owner is None:
                self.fast_failures = 0
                self.gave_up = False
                self.stopped_since = None
                self.grant_at = time.monotonic()
                self._tick_grant()
            else:
                reply = {"ok": False, "error": f"pid {self.owner.pid} is serving"}
        else:
            reply = {"ok": False, "error": f"unknown request {op!r}"}
        for fd in fds:
            os.close(fd)
        if reply is not None:
            try:
                wire.send_msg(c.sock, reply)
            except OSError:
                self._drop(c)

    def state(self) -> tuple[str, str]:
        """(state, why): serving, starting, restarting, stopped or unmounted."""
        if self.unmounted:
            return "unmounted", ""
        if self.owner is not None:
            return ("serving", "") if self.ready else ("starting", "taking over")
        failing = (f"; calls fail with ENOTCONN since {self.stopped_grace:g} s"
                   if self.fail_fd >= 0 else "")
        if self.gave_up:
            return "stopped", (f"restart limit reached: {self.fast_failures} servers died "
                               f"within {FAST_DEATH:g} s in a row; run `fusewire takeover`"
                               + failing)
        if self.restart != "auto" and self.grant_at is None and self.pending_spawn is None:
            return "stopped", "restart=manual: run `fusewire takeover`" + failing
        wait = (self.grant_at or 0.0) - time.monotonic()
        if self.grant_at is not None and wait > 0:
            return "restarting", f"back-off, next server in {wait:.2f} s"
        return "restarting", "starting a server"

    def status(self) -> dict[str, Any]:
        """What ``fusewire status`` prints."""
        st = self.follower.update(self.journal_fd)
        state, why = self.state()
        return {
            "ok": True, "mountpoint": self.mountpoint, "fs": self.fs, "source": self.source,
            "state": state, "state_reason": why,
            "keeper_pid": os.getpid(), "server_pid": self.owner.pid if self.owner else None,
            "ready": self.ready, "restart": self.restart, "restarts": self.restarts,
            "fast_failures": self.fast_failures, "max_fast_restarts": self.max_fast_restarts,
            "upgrades": self.upgrades, "compactions": self.compactions,
            "spare_pid": self.spare_proc.pid if self.spare_proc else None,
            "spare_ready": any(w.preloaded for w in self.waiting),
            "failing_calls": self.fail_fd >= 0, "failed_calls": self.failed_calls,
            "code_version": self.owner_info.get("code"),
            "replayed_code_version": self.owner_info.get("journal_code"),
            "journal_bytes": st.valid_len, "journal_records": st.records,
            "nodes": len(st.nodes), "handles": len(st.handles), "node_keys": len(st.keys),
            "fs_fds": len(self.fs_fds),
            "protocol": (f"{st.session.get('major')}.{st.session.get('minor')}"
                         if st.session else None),
            "recovery": self.owner_info.get("recovery"),
            "recovery_why": self.owner_info.get("recovery_why"),
            "takeover_ms": self.owner_info.get("takeover_ms"),
        }

    # -- loop ------------------------------------------------------------------------------

    def _connection_dead(self) -> bool:
        p = select.poll()
        p.register(self.fuse_fd, 0)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))

    def run(self) -> int:
        self.setup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.pending_spawn = self._spawn(spare=False)
        try:
            while not self.quit:
                for key, _ in self.sel.select(0.2):
                    if key.data is None:
                        self._accept()
                    elif key.data == "fuse":
                        self._fail_calls()
                    else:
                        self._handle(key.data)
                self._reap()
                self._tick_grant()
                self._check_stopped()
                if self.upgrade_at is not None and (time.monotonic() > self.upgrade_at
                                                    or self.owner is None
                                                    or not self.waiting):
                    self._signal_upgrade()
                if self.owner is not None and self.ready:
                    self._ensure_spare()
                if self._connection_dead():
                    log.info("connection gone (unmounted): keeper exits")
                    self.unmounted = True
                    self.quit = True
        finally:
            self.shutdown()
        return 0

    def _upgrade(self) -> None:
        """Hand over to the spare, once it runs the code on disk (it checks first)."""
        spare = next((w for w in self.waiting if w.preloaded), None)
        if spare is None:
            self._signal_upgrade()
            return
        self.upgrade_at = time.monotonic() + UPGRADE_WAIT
        try:
            wire.send_msg(spare.sock, {"op": "check"})
        except OSError:
            self._signal_upgrade()

    def _signal_upgrade(self) -> None:
        self.upgrade_at = None
        if self.owner is not None:
            os.kill(self.owner.pid, signal.SIGUSR2)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("signal %d: unmounting %s and stopping its servers", signum, self.mountpoint)
        self.signalled = True
        self.quit = True

    # -- a mount nobody serves --------------------------------------------------------------

    def _check_stopped(self) -> None:
        """Past the grace period in ``stopped``, fail the calls that wait (see module doc)."""
        if self.state()[0] != "stopped":
            self.stopped_since = None
            self._stop_failing()
            return
        now = time.monotonic()
        if self.stopped_since is None:
            self.stopped_since = now
        if self.fail_fd < 0 and now - self.stopped_since >= self.stopped_grace:
            if self._start_failing():
                log.warning("no server for %g s: failing calls on %s with ENOTCONN until "
                            "`fusewire takeover`", self.stopped_grace, self.mountpoint)
            else:
                self.stopped_since = float("inf")

    def _start_failing(self) -> bool:
        if self.fail_fd >= 0:
            return True
        try:
            fd = _mount.clone_fd(self.fuse_fd)
        except OSError as exc:
            log.error("cannot fail the waiting calls: %s", exc)
            return False
        os.set_blocking(fd, False)
        self.fail_fd = fd
        self.sel.register(fd, selectors.EVENT_READ, "fuse")
        self._fail_calls()
        return True

    def _umount(self, lazy: bool) -> dict[str, Any]:
        """``fusewire umount``: works in every state, within seconds.

        Without a server, the calls waiting on the mount would keep it busy:
        they are failed first (ENOTCONN), then the unmount is retried.
        """
        deadline = time.monotonic() + 3.0
        while True:
            if self.owner is None:
                self._start_failing()
                self._fail_calls()
            try:
                _mount.unmount(self.mountpoint, lazy=lazy)
            except OSError as exc:
                if exc.errno == errno.EBUSY and self.owner is None \
                        and time.monotonic() < deadline:
                    time.sleep(0.05)        # the failed callers are leaving
                    continue
                return {"ok": False, "error": str(exc)}
            return {"ok": True}

    def _fail_calls(self) -> None:
        """Answer every request queued on the connection with ENOTCONN."""
        fd = self.fail_fd
        for _ in range(256):
            try:
                msg = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOENT:       # interrupted before we read it
                    continue
                if exc.errno == errno.ENODEV:       # unmounted
                    self._stop_failing()
                    return
                raise
            if len(msg) < _IN_HDR.size:
                continue
            _, opcode, unique = _IN_HDR.unpack_from(msg)
            if opcode in _NO_REPLY:
                continue
            self.failed_calls += 1
            try:
                os.write(fd, _OUT_HDR.pack(_OUT_HDR.size, -errno.ENOTCONN, unique))
            except OSError:
                pass                                # the caller went away (ENOENT)

    def _stop_failing(self) -> None:
        if self.fail_fd < 0:
            return
        self.sel.unregister(self.fail_fd)
        os.close(self.fail_fd)
        self.fail_fd = -1

    def shutdown(self) -> None:
        self._stop_failing()
        if self.signalled and not self.unmounted:
            # SIGINT/SIGTERM: the mount goes with the keeper; its servers see ENODEV
            try:
                _mount.unmount(self.mountpoint, lazy=True)
            except OSError as exc:
                log.warning("unmounting %s: %s", self.mountpoint, exc)
        if self.signalled:
            for p in self.children:
                if p.poll() is None:
                    p.terminate()
            deadline = time.monotonic() + 5.0
            for p in self.children:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.spare_proc is not None and self.spare_proc.poll() is None:
            self.spare_proc.terminate()
        for c in list(self.clients.values()):
            c.sock.close()
        for done in (self.path, *((self.path[:-5] + ".log",) if self.unmounted else ())):
            try:
                os.unlink(done)     # the log only once the mount has ended
            except OSError:
                pass
        for fd in (self.fuse_fd, self.journal_fd, *self.shared_fds, *self.fs_fds):
            if fd >= 0:
                os.close(fd)


def _checks_permissions(fs: str, source: str | None, options: list[str]) -> bool:
    """Whether the filesystem ``fs`` checks permissions itself (for the allow_other policy)."""
    from fusewire.recovery.takeover import _build_ops

    ops, _ = _build_ops({"fs": fs, "source": source, "options": options})
    try:
        return bool(ops.checks_permissions)
    finally:
        ops.destroy()


def add_fs_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The filesystem, its paths and ``-o`` options (keeper and fd-store commands)."""
    p.add_argument("fs", help="memfs, passthrough or MODULE:CLASS")
    p.add_argument("paths", nargs="+", help="[SOURCE] MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[])
    return p


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the keeper (also used by ``fusewire keeper``)."""
    p = add_fs_arguments(p or argparse.ArgumentParser(prog="fusewire keeper"))
    p.add_argument("--restart", choices=("auto", "manual"), default="auto")
    p.add_argument("--max-fast-restarts", type=int, default=20)
    p.add_argument("--no-spare", action="store_true", help="do not keep a warm spare server")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="each server serves from N processes (multiprocess_safe filesystems)")
    p.add_argument("--stopped-grace", type=float, default=STOPPED_GRACE, metavar="SECONDS",
                   help="with no server for this long, fail waiting calls with ENOTCONN "
                   f"(default {STOPPED_GRACE:g})")
    return p


def run_keeper(args: argparse.Namespace) -> int:
    """Run a keeper in this process until the filesystem is unmounted."""
    if len(args.paths) == 2:
        source: str | None = os.path.abspath(args.paths[0])
        mountpoint = args.paths[1]
    else:
        source, mountpoint = None, args.paths[0]
    k = Keeper(mountpoint, args.fs, source, args.options, args.restart,
               args.max_fast_restarts, spare=not args.no_spare,
               stopped_grace=args.stopped_grace, processes=args.processes)
    return k.run()


def main(argv: list[str] | None = None) -> int:
    """``python -m fusewire.recovery.keeper``."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s keeper %(levelname)s %(message)s")
    return run_keeper(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
