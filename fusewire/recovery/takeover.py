"""The owner side: attach to a keeper, rebuild from the journal, take over, serve, journal.

Takeover sequence (protocol.md §15): get the keeper's open file (SCM_RIGHTS),
rebuild the filesystem and the node table from the journal, restore the
connection as already initialised (no INIT), write NOTIFY_RESEND once, then
INC_EPOCH after a crash (names are revalidated lazily), and serve.  Resent
requests (bit 63) whose execution the journal shows are answered with the
recorded reply re-addressed to the full unique; the others execute normally.

State for a filesystem with ``dump_state``/``load_state`` (MemFS) is a
snapshot plus a log of the raw non-idempotent requests executed since; the
successor replays them, in order, through a scratch dispatcher (MemFS
allocates inode numbers and fh values sequentially, so replay is
deterministic), with the filesystem's clock pinned to each request's
recorded time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from fusewire.connection import Connection, Request
from fusewire.errors import LocalProtocolError
from fusewire.opcodes.flags import Opcode
from fusewire.operations import Operations
from fusewire.recovery import journal as jn
from fusewire.recovery import wire
from fusewire.server.dispatch import Buffers, Dispatcher
from fusewire.server.loop import Server

__all__ = ["CrashHook", "RecordingDispatcher", "RecoverableServer", "RecoveryJournal",
           "rebuild", "run_owner"]

log = logging.getLogger("fusewire.recovery")

#: compact the journal once it grows past this many bytes / records since the snapshot
COMPACT_BYTES = int(os.environ.get("FUSEWIRE_COMPACT_BYTES", str(64 << 20)))
COMPACT_RECORDS = int(os.environ.get("FUSEWIRE_COMPACT_RECORDS", "200000"))

_OPENS = (Opcode.OPEN, Opcode.OPENDIR, Opcode.CREATE, Opcode.TMPFILE)
_RELEASES = (Opcode.RELEASE, Opcode.RELEASEDIR)
_IN_HDR = struct.Struct("<IIQ")


class CrashHook:
    """Test hook: ``FUSEWIRE_CRASH_AT=point:OPCODE:n[,...]`` makes the server ``_exit(137)``.

    Points: ``read`` (request read, nothing done), ``handler`` (handler ran,
    not journaled), ``journal`` (journaled, reply not written), ``reply``
    (reply written).  ``n`` counts occurrences of that opcode at that point.
    """

    def __init__(self, spec: str | None) -> None:
        self.rules: dict[tuple[str, int], int] = {}
        self.seen: dict[tuple[str, int], int] = {}
        for item in (spec or "").split(","):
            if not item.strip():
                continue
            point, op, n = item.strip().split(":")
            code = int(op) if op.isdigit() else int(Opcode[op.upper()])
            self.rules[(point, code)] = int(n)
        self.active = bool(self.rules)

    def check(self, point: str, opcode: int) -> None:
        if not self.active:
            return
        key = (point, opcode)
        want = self.rules.get(key)
        if want is None:
            return
        seen = self.seen[key] = self.seen.get(key, 0) + 1
        if seen == want:
            os._exit(137)


class RecoveryJournal:
    """The dispatcher's ``journal`` hook, writing into the keeper's memfd."""

    def __init__(self, writer: jn.JournalWriter, nodes: jn.JournaledNodeTable,
                 state: jn.JournalState, crash: CrashHook) -> None:
        self.writer = writer
        self.nodes = nodes
        self.replies = state.replies
        self.handles = dict(state.handles)
        self.crash = crash
        self.raw: bytes | bytearray | memoryview = b""

    def replayed(self, req: Request) -> Buffers | None:
        reply = self.replies.get(req.key)
        if reply is None:
            return None
        return list(jn.reply_with_unique(reply, req.unique))

    def record(self, req: Request, bufs: Buffers, lookups: list[int]) -> None:
        op = req.opcode
        self.crash.check("handler", op)
        reply = b"".join(bufs)
        ok = jn.reply_error(reply) == 0
        opened = released = None
        if ok and op in _OPENS:
            fh = struct.unpack_from("<Q", bufs[-1])[0]
            node = lookups[0] if op in (Opcode.CREATE, Opcode.TMPFILE) and lookups \
                else req.nodeid
            flags = getattr(req.arg, "flags", 0)
            opened = (fh, node, flags)
            self.handles[fh] = (node, flags)
        elif op in _RELEASES:
            released = req.arg.fh
            self.handles.pop(released, None)
        payload = jn.encode_req(time.time_ns(), bytes(self.raw), reply, opened, released)
        self.writer.append_raw(self.nodes.take_pending()
                               + jn.encode_record(jn.RecordType.REQ, payload))
        self.crash.check("journal", op)


class RecordingDispatcher(Dispatcher):
    """A Dispatcher that keeps the raw message for the journal and journals
    the session (INIT) and idempotent lookups before their replies go out."""

    rjournal: RecoveryJournal

    def dispatch(self, buf: bytes | bytearray | memoryview) -> tuple[Buffers | None, list[int]]:
        self.rjournal.raw = buf
        return super().dispatch(buf)

    def handle(self, req: Request) -> tuple[Buffers | None, list[int]]:
        was_init = self.conn.session is None
        bufs, lookups = super().handle(req)
        rj = self.rjournal
        if was_init and self.conn.session is not None:
            rj.writer.append(jn.RecordType.SESSION,
                             json.dumps(self.conn.session.to_dict()).encode())
        nodes = rj.nodes
        if nodes.pending:
            rj.writer.append_raw(nodes.take_pending())
        return bufs, lookups


def recovery_mode(ops: Operations) -> str:
    """'replay' (state rebuilt from the journal), 'handles' (state outside the process,
    node table restored), or 'upgrade-only' (no crash recovery)."""
    if callable(getattr(ops, "dump_state", None)) and callable(getattr(ops, "load_state",
                                                                       None)):
        return "replay"
    if getattr(type(ops), "handle_of", None) is not getattr(Operations, "handle_of", None):
        return "handles"
    return "upgrade-only"


def rebuild(ops: Operations, state: jn.JournalState, *, snapshot_loaded: bool = False,
            fixed_below: int = 0) -> None:
    """Bring ``ops`` to the state the journal describes (replay mode)."""
    anyops: Any = ops
    if state.fs_snapshot is not None and not snapshot_loaded:
        anyops.load_state(state.fs_snapshot)
    if state.requests and state.session is not None:
        conn = Connection.restore({"session": state.session})
        scratch = Dispatcher(ops, conn)
        module = sys.modules.get(type(ops).__module__)
        clock: Callable[[], int] | None = getattr(module, "_now", None)
        has_free = hasattr(anyops, "_maybe_free")
        if has_free:
            anyops._maybe_free = lambda node: None
        try:
            for t, raw, reply in state.requests:
                if jn.reply_error(reply) != 0:
                    continue  # a failed request changed nothing
                if clock is not None:
                    vars(module)["_now"] = lambda t=t: t
                scratch.dispatch(raw)
        finally:
            if clock is not None:
                vars(module)["_now"] = clock
            if has_free:
                del anyops._maybe_free
    inodes = getattr(anyops, "_inodes", None)
    if isinstance(inodes, dict) and hasattr(anyops, "_maybe_free"):
        # MemFS counts lookups itself: make it agree with the journaled table,
        # then free what an unlink left only to lookups the kernel gave back.
        # A warm spare already did this for the snapshot (fix_lookups); then only
        # the nodes touched since and the ones the replay created need it.
        nodes = state.nodes
        if snapshot_loaded and fixed_below:
            for ino in state.touched:
                node = inodes.get(ino)
                if node is not None:
                    node.nlookup = nodes.get(ino, 0)
            for ino, node in inodes.items():
                if ino >= fixed_below:
                    node.nlookup = nodes.get(ino, 0)
        else:
            for ino, node in inodes.items():
                node.nlookup = nodes.get(ino, 0)
        for node in [n for n in inodes.values() if n.nlink == 0]:
            anyops._maybe_free(node)


def fix_lookups(ops: Operations, nodes: dict[int, int]) -> int:
    """Set MemFS lookup counts from a node table (a spare, ahead of takeover).

    Returns the first inode number not covered (0 if not applicable).
    """
    anyops: Any = ops
    inodes = getattr(anyops, "_inodes", None)
    if not isinstance(inodes, dict):
        return 0
    for ino, node in inodes.items():
        node.nlookup = nodes.get(ino, 0)
    return int(getattr(anyops, "_next_ino", 0))


class RecoverableServer(Server):
    """A Server with crash points, a request-boundary stop, and journal compaction."""

    def setup_recovery(self, rj: RecoveryJournal, control: socket.socket,
                       meta: dict[str, Any], mode: str, t0: float) -> None:
        d = RecordingDispatcher(self.ops, self.conn, nodes=rj.nodes, journal=rj)
        d.rjournal = rj
        self.dispatcher = d
        self.rj = rj
        self.control = control
        self.meta = meta
        self.mode = mode
        self.t0 = t0
        self.crash = rj.crash
        self.handing_over = False
        self.reported = False
        # the base loop calls these around each request (crash points, ready, compaction)
        self.on_read = self._on_read if self.crash.active else None
        self.on_reply = self._on_reply

    def request_handover(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.handing_over = True
        self.stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_handover()

    def ask(self, msg: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        wire.send_msg(self.control, msg, fds or [])
        reply, got = wire.recv_msg(self.control)
        for fd in got:
            os.close(fd)
        if reply is None:
            raise ConnectionError("keeper went away")
        return reply

    def report_ready(self) -> None:
        self.reported = True
        ms = (time.monotonic() - self.t0) * 1000
        self.ask({"op": "ready", "pid": os.getpid(), "recovery": self.mode,
                  "takeover_ms": round(ms, 2)})

    def compact(self) -> None:
        """Write a snapshot into a new memfd and swap it in at the keeper."""
        rj = self.rj
        session = self.conn.session.to_dict() if self.conn.session is not None else None
        anyops: Any = self.ops
        blob = anyops.dump_state() if self.mode == "replay" else None
        body = jn.encode_snapshot(session, {"fs": self.meta.get("fs")}, blob,
                                  rj.nodes.snapshot(), rj.handles)
        fd = jn.new_memfd()
        os.pwrite(fd, body, 0)
        self.ask({"op": "journal"}, [fd])
        old = rj.writer.fd
        rj.writer = jn.JournalWriter(fd, len(body))
        rj.nodes.writer = rj.writer
        rj.replies.clear()
        if old != fd:
            os.close(old)

    def _on_read(self, msg: memoryview) -> None:
        self.crash.check("read", _IN_HDR.unpack_from(msg)[1])

    def _on_reply(self, msg: memoryview) -> None:
        if self.crash.active:
            self.crash.check("reply", _IN_HDR.unpack_from(msg)[1])
        if not self.reported and self.conn.session is not None:
            self.report_ready()
        w = self.rj.writer
        if w.offset > COMPACT_BYTES or w.records > COMPACT_RECORDS:
            self.compact()


def _build_ops(meta: dict[str, Any]) -> tuple[Operations, list[str]]:
    from fusewire.cli import build_ops
    from fusewire.server import mount as _mount

    fs = str(meta["fs"])
    opts = _mount.parse_options(meta.get("options") or [], fsname=f"fusewire-{fs}",
                                subtype=fs if ":" not in fs else None)
    extra = dict(opts.extra)
    return build_ops(fs, meta.get("source"), extra), list(meta.get("options") or [])


def run_owner(sock_path: str) -> int:
    """Attach to the keeper at ``sock_path``, take over, serve until unmount or handover."""
    crash = CrashHook(os.environ.get("FUSEWIRE_CRASH_AT"))
    control = wire.connect(sock_path, None)
    wire.send_msg(control, {"op": "attach", "pid": os.getpid()})
    preloaded: tuple[Operations, tuple[int, int], int] | None = None
    while True:
        grant, fds = wire.recv_msg(control)      # a spare blocks here until needed
        if grant is not None and grant.get("queued") and fds:
            # a warm spare: pre-build the filesystem from the current snapshot
            preloaded = None
            try:
                preloaded = _preload(grant["meta"], fds[0])
            finally:
                for fd in fds:
                    os.close(fd)
            continue
        break
    t0 = time.monotonic()
    if grant is None or not grant.get("ok"):
        for fd in fds:
            os.close(fd)
        log.error("keeper refused: %s", grant)
        return 1
    fuse_fd, journal_fd = fds
    meta = grant["meta"]
    state = jn.load(jn.read_all(journal_fd))
    ident = (os.fstat(journal_fd).st_ino, state.snapshot_end)
    fixed_below = 0
    if preloaded is not None and preloaded[1] == ident:
        ops, options = preloaded[0], list(meta.get("options") or [])
        warm = True
        fixed_below = preloaded[2]
    else:
        ops, options = _build_ops(meta)
        warm = False
    mode = recovery_mode(ops)
    crashed = not grant.get("first") and not grant.get("graceful")
    if crashed and mode == "upgrade-only":
        log.error("%s cannot recover from a crash (no handle_of/dump_state): state is lost",
                  meta["fs"])
    if mode == "replay":
        rebuild(ops, state, snapshot_loaded=warm, fixed_below=fixed_below)
    nodes = jn.JournaledNodeTable(state.nodes if mode != "upgrade-only" or not crashed
                                  else None)
    conn = None
    if state.session is not None:
        conn = Connection.restore({"session": state.session})
    server = RecoverableServer(ops, meta["mountpoint"], options, fd=fuse_fd, connection=conn,
                               nodes=nodes, fsname=f"fusewire-{meta['fs']}")
    if conn is not None:
        conn.config = server.config
    writer = jn.JournalWriter(journal_fd, state.valid_len)
    nodes.writer = writer
    rj = RecoveryJournal(writer, nodes, state, crash)
    server.setup_recovery(rj, control, meta, mode, t0)
    if state.records == 0:
        writer.append(jn.RecordType.META, json.dumps({"fs": meta["fs"]}).encode())
        if mode == "replay":
            writer.append(jn.RecordType.FS_SNAPSHOT, ops.dump_state())  # type: ignore[attr-defined]
    server.mount()
    if threading_main():
        signal.signal(signal.SIGUSR2, server.request_handover)
    server.notify_resend()
    if crashed and state.session is not None:
        try:
            server.notify_inc_epoch()
        except LocalProtocolError:
            pass
    if state.session is not None:
        server.report_ready()
    try:
        server.serve()
    finally:
        if server.unmounted:
            _quiet(lambda: server.ask({"op": "unmounted"}))
        else:
            # graceful: everything read was answered; leave a compact journal behind
            _quiet(server.compact)
            _quiet(lambda: server.ask({"op": "handover"}))
        server.close(unmount=False)
        control.close()
    return 0


def _preload(meta: dict[str, Any],
             journal_fd: int) -> tuple[Operations, tuple[int, int], int]:
    """Build the filesystem and load the journal's snapshot ahead of a takeover."""
    ops, _ = _build_ops(meta)
    state = jn.load(jn.read_all(journal_fd))
    fixed = 0
    if state.fs_snapshot is not None and recovery_mode(ops) == "replay":
        ops.load_state(state.fs_snapshot)  # type: ignore[attr-defined]
        fixed = fix_lookups(ops, state.nodes)
    return ops, (os.fstat(journal_fd).st_ino, state.snapshot_end), fixed


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _quiet(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:  # best effort on the way out
        log.exception("during shutdown")


def main(argv: list[str] | None = None) -> int:
    """``python -m fusewire.recovery.successor --socket PATH``."""
    p = argparse.ArgumentParser(prog="fusewire-successor")
    p.add_argument("--socket", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s server[{os.getpid()}] %(levelname)s %(message)s")
    return run_owner(args.socket)
