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

A filesystem whose state lives outside the process (passthrough: "handles"
mode) journals instead the stable handle of every node it hands out and the
open flags of every handle; the successor reopens them (``import_nodes``,
``reopen_handle``), and intents (:mod:`fusewire.recovery.intent`) keep its
mutations exactly-once.

On a kernel without RESEND (negotiated minor < 40) the owner journals each
request as it reads it; a successor answers the one the journal shows in
flight with its recorded reply if it has one, else EIO, instead of leaving
its caller blocked forever.

Where the fds come from is a :class:`Control`: the keeper's socket here, the
systemd fd store in :mod:`fusewire.recovery.fdstore`.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from fusewire.connection import Config, Connection, Request
from fusewire.errors import LocalProtocolError
from fusewire.opcodes.flags import Opcode
from fusewire.opcodes.table import OPS, Reply, ops_where
from fusewire.operations import Operations
from fusewire.recovery import intent, wire
from fusewire.recovery import journal as jn
from fusewire.server.dispatch import Buffers, Dispatcher
from fusewire.server.loop import Server
from fusewire.structs.codec import CODECS
from fusewire.types import FUSEError

__all__ = ["Control", "CrashHook", "KeeperControl", "RecordingDispatcher", "RecoverableServer",
           "RecoveryJournal", "rebuild", "resend_supported", "run_owner", "take_over"]

log = logging.getLogger("fusewire.recovery")

#: compact the journal once it grows past this many bytes / records since the snapshot
COMPACT_BYTES = int(os.environ.get("FUSEWIRE_COMPACT_BYTES", str(64 << 20)))
COMPACT_RECORDS = int(os.environ.get("FUSEWIRE_COMPACT_RECORDS", "200000"))

_OPENS = ops_where("opens")
_RELEASES = ops_where("releases")
_NO_REPLY = frozenset(op for op, row in OPS.items() if not row.needs_reply)
_IN_HDR = CODECS["in_header"].head(3)     # len, opcode, unique
_OUT_HDR = CODECS["out_header"].struct
_IN_HDR_SIZE = CODECS["in_header"].size
_FH = CODECS["open_out"].head(1)          # open_out.fh
_VERSION = CODECS["init_in"].head(2)      # major, minor
_RESEND_MINOR = 40           # FUSE_NOTIFY_RESEND and bit 63 (protocol.md §14)
_RESEND_MASK = (1 << 63) - 1


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


def _crash_file_check() -> None:
    """Test hook: while ``$FUSEWIRE_CRASH_FILE`` exists, a server dies as soon as it owns
    the mount (a server that cannot start; the keeper's restart limit is tested with it)."""
    path = os.environ.get("FUSEWIRE_CRASH_FILE")
    if path and os.path.exists(path):
        os._exit(137)


class RecoveryJournal:
    """The dispatcher's ``journal`` hook, writing into the keeper's memfd."""

    def __init__(self, writer: jn.JournalWriter, nodes: jn.JournaledNodeTable,
                 state: jn.JournalState, crash: CrashHook, *, keep_body: bool = True) -> None:
        self.writer = writer
        self.nodes = nodes
        self.replies = state.replies
        self.handles = dict(state.handles)
        #: intents of requests that may have run but have no recorded reply
        self.intents = {k: v for k, v in state.intents.items() if k not in state.replies}
        self.crash = crash
        self.raw: bytes | bytearray | memoryview = b""
        #: replay mode needs whole requests; otherwise the header (the key) is enough
        self.keep_body = keep_body
        #: journal intents before handlers run (a filesystem with entry_identity)
        self.probing = False
        #: journal every request as it is read (kernel without RESEND)
        self.track_inflight = False
        #: the last message :meth:`note_read` saw (the loop passes one object per message)
        self.noted: object = None

    def note_read(self, msg: bytes | bytearray | memoryview, before_init: bool) -> None:
        """Journal a message just read: INFLIGHT (no RESEND), or the raw INIT."""
        self.noted = msg
        _, opcode, unique = _IN_HDR.unpack_from(msg)
        if self.track_inflight:
            if opcode not in _NO_REPLY:
                self.writer.append(jn.RecordType.INFLIGHT, jn.encode_inflight(unique, opcode))
        elif before_init and opcode == Opcode.INIT:
            self.writer.append(jn.RecordType.INIT_IN, bytes(msg))

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
            fh = _FH.unpack_from(bufs[-1])[0]
            node = lookups[0] if OPS[op].reply is Reply.ENTRY_OPEN and lookups \
                else req.nodeid
            flags = getattr(req.arg, "flags", 0)
            if op == Opcode.OPENDIR:
                flags |= os.O_DIRECTORY     # tells a directory handle apart on reopen
            opened = (fh, node, flags)
            self.handles[fh] = (node, flags)
        elif op in _RELEASES:
            released = req.arg.fh
            self.handles.pop(released, None)
        raw = self.raw if self.keep_body else self.raw[:_IN_HDR_SIZE]
        payload = jn.encode_req(time.time_ns(), bytes(raw), reply, opened, released)
        self.writer.append_raw(self.nodes.take_pending()
                               + jn.encode_record(jn.RecordType.REQ, payload))
        self.crash.check("journal", op)


class RecordingDispatcher(Dispatcher):
    """A Dispatcher that keeps the raw message for the journal and journals
    the session (INIT) and idempotent lookups before their replies go out."""

    rjournal: RecoveryJournal

    def dispatch(self, buf: bytes | bytearray | memoryview) -> tuple[Buffers | None, list[int]]:
        rj = self.rjournal
        rj.raw = buf
        if rj.track_inflight and rj.noted is not buf:
            rj.note_read(buf, False)
        return super().dispatch(buf)

    def handle(self, req: Request) -> tuple[Buffers | None, list[int]]:
        rj = self.rjournal
        was_init = self.conn.session is None
        if was_init and req.opcode == Opcode.INIT and rj.noted is not rj.raw:
            rj.note_read(rj.raw, True)
        if rj.probing and req.opcode in intent.OPS and not (
                req.unique >> 63 and req.key in rj.replies):
            done = self._intent(req)
            if done is not None:
                return done
        bufs, lookups = super().handle(req)
        session = self.conn.session
        if was_init and session is not None:
            rj.writer.append(jn.RecordType.SESSION, json.dumps(session.to_dict()).encode())
            rj.track_inflight = session.minor < _RESEND_MINOR
        nodes = rj.nodes
        if nodes.pending:
            rj.writer.append_raw(nodes.take_pending())
        return bufs, lookups

    def _intent(self, req: Request) -> tuple[Buffers | None, list[int]] | None:
        """Journal the intent of ``req``; for a re-sent one whose handler already ran,
        the reply (see :mod:`fusewire.recovery.intent`)."""
        rj = self.rjournal
        if req.unique >> 63:
            before = rj.intents.pop(req.key, None)
            if before is not None:
                now = intent.probe(self, req, rj.handles)
                if now is not None and intent.changed(before[1], now):
                    log.info("re-sent %s %#x already took effect: answering from the "
                             "current state", req.info.name, req.key)
                    return self._answer_done(req, before[1], now)
        probes = intent.probe(self, req, rj.handles)
        if probes is not None:
            rj.writer.append(jn.RecordType.INTENT,
                             jn.encode_intent(req.key, req.opcode, probes))
        return None

    def _answer_done(self, req: Request, before: tuple[int, ...],
                     now: tuple[int, ...]) -> tuple[Buffers | None, list[int]]:
        self._lookups = []
        try:
            bufs: Buffers | None = intent.answer_done(self, req, before, now)
        except FUSEError as exc:
            bufs = self._error(req, exc.errno)
        lookups = self._lookups
        if lookups and bufs is not None:
            self.nodes.add(lookups)
        if bufs is not None:
            self.rjournal.record(req, bufs, lookups)
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


class Control:
    """Where an owner reports to: the keeper, the systemd fd store, or nobody (tests)."""

    def ready(self, info: dict[str, Any]) -> None:
        """The server answers requests (``info``: pid, recovery mode, takeover time)."""

    def swap_journal(self, fd: int) -> None:
        """Make ``fd`` (a complete compacted journal) the one a successor gets.

        Must not return before the swap is safe: until then the old journal
        stays the valid one.
        """

    def progress(self) -> None:
        """The server answered a request that was not re-sent: it is not crash-looping."""

    def handover(self) -> None:
        """A graceful stop: everything read was answered, the journal is compact."""

    def unmounted(self) -> None:
        """The filesystem was unmounted: nobody will need the fds again."""

    def close(self) -> None:
        """Release the channel."""


class KeeperControl(Control):
    """The keeper's control socket (see :mod:`fusewire.recovery.keeper`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def ask(self, msg: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        wire.send_msg(self.sock, msg, fds or [])
        reply, got = wire.recv_msg(self.sock)
        for fd in got:
            os.close(fd)
        if reply is None:
            raise ConnectionError("keeper went away")
        return reply

    def ready(self, info: dict[str, Any]) -> None:
        self.ask({"op": "ready", **info})

    def swap_journal(self, fd: int) -> None:
        self.ask({"op": "journal"}, [fd])

    def progress(self) -> None:
        self.ask({"op": "progress"})

    def handover(self) -> None:
        self.ask({"op": "handover"})

    def unmounted(self) -> None:
        try:
            self.ask({"op": "unmounted"})
        except OSError:
            pass        # the keeper saw the unmount itself and is gone already

    def close(self) -> None:
        self.sock.close()


class RecoverableServer(Server):
    """A Server with crash points, a request-boundary stop, and journal compaction."""

    def setup_recovery(self, rj: RecoveryJournal, control: Control,
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
        self.progressed = False
        # the base loop calls these around each request: on_read only for the
        # test crash points (None keeps the hot path free of the call); on_reply
        # for ready, progress and compaction
        self.on_read = self._on_read if self.crash.active else None
        self.on_reply = self._on_reply

    def request_handover(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.handing_over = True
        self.stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_handover()

    def report_ready(self) -> None:
        self.reported = True
        ms = (time.monotonic() - self.t0) * 1000
        self.control.ready({"pid": os.getpid(), "recovery": self.mode,
                            "takeover_ms": round(ms, 2)})

    def compact(self) -> None:
        """Write a snapshot into a new memfd and swap it in (keeper or fd store)."""
        rj = self.rj
        session = self.conn.session.to_dict() if self.conn.session is not None else None
        anyops: Any = self.ops
        blob = anyops.dump_state() if self.mode == "replay" else None
        keys = rj.nodes.key_snapshot() if self.mode == "handles" else None
        body = jn.encode_snapshot(session, {"fs": self.meta.get("fs")}, blob,
                                  rj.nodes.snapshot(), rj.handles, keys)
        fd = jn.new_memfd()
        os.pwrite(fd, body, 0)
        self.control.swap_journal(fd)
        old = rj.writer.fd
        rj.writer.close()
        rj.writer = jn.JournalWriter(fd, len(body))
        rj.nodes.writer = rj.writer
        rj.replies.clear()
        rj.intents.clear()
        if old != fd:
            os.close(old)

    def answer_orphans(self, state: jn.JournalState) -> None:
        """Without RESEND: answer what the journal shows read but unanswered (see module doc)."""
        assert self.fd is not None
        if state.session is None:
            if state.init_in is None:
                return
            # the previous owner died before answering INIT: answer it now
            bufs, _ = self.dispatcher.dispatch(state.init_in)
            log.warning("no RESEND: answering the INIT the previous server read")
        elif state.inflight is None:
            return
        else:
            unique, opcode = state.inflight
            if opcode == Opcode.INIT:
                return
            reply = state.replies.get(unique & _RESEND_MASK)
            if reply is not None:
                bufs = list(jn.reply_with_unique(reply, unique))
            else:
                bufs = [_OUT_HDR.pack(16, -errno.EIO, unique)]
                log.warning("no RESEND: answering in-flight %s %#x with EIO",
                            Opcode(opcode).name if opcode in Opcode._value2member_map_
                            else opcode, unique)
        if bufs is None:
            return
        try:
            os.writev(self.fd, bufs)
        except OSError as exc:
            if exc.errno != errno.ENOENT:       # ENOENT: it had been answered after all
                raise

    def _on_read(self, msg: memoryview) -> None:
        # "read" means: read, and journaled as read where that is done (no RESEND, INIT)
        self.rj.note_read(msg, self.conn.session is None)
        self.crash.check("read", _IN_HDR.unpack_from(msg)[1])

    def _on_reply(self, msg: memoryview) -> None:
        if self.crash.active:
            self.crash.check("reply", _IN_HDR.unpack_from(msg)[1])
        if not self.progressed:
            if not self.reported and self.conn.session is not None:
                self.report_ready()
            if self.reported and not _IN_HDR.unpack_from(msg)[2] >> 63:
                self.progressed = True
                self.control.progress()
        w = self.rj.writer
        # Bytes appended since the snapshot, not the file size: a snapshot of a
        # big filesystem is itself bigger than the threshold (compacting again
        # after every reply would never end).  And at least the snapshot's own
        # size: a compaction writes the whole filesystem, so its cost stays a
        # constant factor of what was appended (64, 128, 256 MiB... for a file
        # being written, not one dump per 64 MiB of data).
        if w.appended > max(COMPACT_BYTES, w.start) or w.records > COMPACT_RECORDS:
            self.compact()


def _build_ops(meta: dict[str, Any]) -> tuple[Operations, list[str]]:
    from fusewire.examples import build_ops
    from fusewire.server import mount as _mount

    fs = str(meta["fs"])
    opts = _mount.parse_options(meta.get("options") or [], fsname=f"fusewire-{fs}",
                                subtype=fs if ":" not in fs else None)
    extra = dict(opts.extra)
    return build_ops(fs, meta.get("source"), extra), list(meta.get("options") or [])


def _config(meta: dict[str, Any]) -> Config:
    """Config for the server; ``-o max_minor=N`` caps the negotiated minor (older kernels)."""
    from fusewire.server import mount as _mount

    opts = _mount.parse_options(meta.get("options") or [])
    minor = opts.extra.get("max_minor")
    return Config(max_minor=int(minor)) if minor else Config()


def resend_supported(state: jn.JournalState, config: Config) -> bool:
    """Whether the connection has FUSE_NOTIFY_RESEND: from the negotiated minor (>= 40)."""
    if state.session is not None:
        return int(state.session["minor"]) >= _RESEND_MINOR
    if state.init_in is not None and len(state.init_in) >= _IN_HDR_SIZE + 8:
        kernel_minor = int(_VERSION.unpack_from(state.init_in, _IN_HDR_SIZE)[1])
        return min(kernel_minor, config.max_minor) >= _RESEND_MINOR
    return True     # nothing read yet, or the INIT was lost: RESEND is the only hope


def restore_handles(ops: Operations, state: jn.JournalState) -> None:
    """Handles mode: revive every node the kernel holds and reopen every open handle."""
    anyops: Any = ops
    importer = getattr(anyops, "import_nodes", None)
    if callable(importer):
        table = {n: (state.keys[n], c) for n, c in state.nodes.items() if n in state.keys}
        lost = importer(table)
        missing = [n for n in state.nodes if n not in state.keys]
        if lost or missing:
            log.warning("%d node(s) could not be restored (ESTALE from now on)",
                        len(lost) + len(missing))
    reopen = getattr(anyops, "reopen_handle", None)
    if callable(reopen):
        failed = 0
        for fh, (node, flags) in state.handles.items():
            try:
                reopen(fh, node, flags)
            except (OSError, FUSEError) as exc:
                failed += 1
                log.warning("handle %d (node %d) could not be reopened: %s", fh, node, exc)
        if failed:
            log.warning("%d of %d open handle(s) lost", failed, len(state.handles))


def take_over(fuse_fd: int, journal_fd: int, meta: dict[str, Any], control: Control, *,
              first: bool, graceful: bool, t0: float, crash: CrashHook,
              preloaded: tuple[Operations, tuple[int, int], int] | None = None) -> int:
    """Rebuild from the journal, take the connection over, serve until unmount or handover."""
    state = jn.load(jn.read_all(journal_fd))
    graceful = graceful or state.graceful
    ident = (os.fstat(journal_fd).st_ino, state.snapshot_end)
    fixed_below = 0
    warm = False
    if preloaded is not None and preloaded[1] == ident:
        ops, options = preloaded[0], list(meta.get("options") or [])
        warm = True
        fixed_below = preloaded[2]
    elif preloaded is not None and recovery_mode(preloaded[0]) == "handles":
        ops, options = preloaded[0], list(meta.get("options") or [])  # nodes re-synced below
    else:
        ops, options = _build_ops(meta)
    mode = recovery_mode(ops)
    config = _config(meta)
    crashed = not first and not graceful
    if crashed and mode == "upgrade-only":
        log.error("%s cannot recover from a crash (no handle_of/dump_state): state is lost",
                  meta["fs"])
    anyops: Any = ops
    if mode == "replay":
        rebuild(ops, state, snapshot_loaded=warm, fixed_below=fixed_below)
    elif mode == "handles":
        prepare = getattr(anyops, "prepare_recovery", None)
        if callable(prepare):
            prepare()
        restore_handles(ops, state)
    nodes = jn.JournaledNodeTable(
        state.nodes if mode != "upgrade-only" or not crashed else None,
        dict(state.keys) if mode == "handles" else None,
        anyops.handle_of if mode == "handles" else None)
    conn = None
    if state.session is not None:
        conn = Connection.restore({"session": state.session})
    server = RecoverableServer(ops, meta["mountpoint"], options, fd=fuse_fd, connection=conn,
                               nodes=nodes, config=config, fsname=f"fusewire-{meta['fs']}")
    if conn is not None:
        conn.config = server.config
    writer = jn.JournalWriter(journal_fd, state.valid_len)
    nodes.writer = writer
    rj = RecoveryJournal(writer, nodes, state, crash, keep_body=mode == "replay")
    rj.probing = mode == "handles" and callable(getattr(anyops, "entry_identity", None))
    resend = resend_supported(state, config)
    rj.track_inflight = not resend and state.session is not None
    server.setup_recovery(rj, control, meta, mode, t0)
    if state.records == 0:
        writer.append(jn.RecordType.META, json.dumps({"fs": meta["fs"]}).encode())
        if mode == "replay":
            writer.append(jn.RecordType.FS_SNAPSHOT, anyops.dump_state())
    server.mount()
    if threading_main():
        signal.signal(signal.SIGUSR2, server.request_handover)
    if resend:
        server.notify_resend()
    else:
        server.answer_orphans(state)
    if crashed and server.conn.session is not None:
        try:
            server.notify_inc_epoch()
        except LocalProtocolError:
            pass        # 7.44 needed: cached names stay as they are
    if server.conn.session is not None:
        server.report_ready()
    try:
        server.serve()
    finally:
        if server.unmounted:
            _quiet(control.unmounted)
        else:
            # graceful: everything read was answered; leave a compact journal behind
            _quiet(server.compact)
            _quiet(lambda: server.rj.writer.append(jn.RecordType.HANDOVER, b""))
            _quiet(control.handover)
        server.close(unmount=False)
        control.close()
    return 0


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
            if preloaded is not None:
                preloaded[0].destroy()      # passthrough: close the nodes it reopened
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
        if grant is None:
            log.info("the keeper went away (unmounted)")
            return 0
        log.error("keeper refused: %s", grant)
        return 1
    _crash_file_check()
    fuse_fd, journal_fd = fds
    return take_over(fuse_fd, journal_fd, grant["meta"], KeeperControl(control),
                     first=bool(grant.get("first")), graceful=bool(grant.get("graceful")),
                     t0=t0, crash=crash, preloaded=preloaded)


def _preload(meta: dict[str, Any],
             journal_fd: int) -> tuple[Operations, tuple[int, int], int]:
    """Build the filesystem and load the journal's snapshot ahead of a takeover."""
    ops, _ = _build_ops(meta)
    state = jn.load(jn.read_all(journal_fd))
    fixed = 0
    mode = recovery_mode(ops)
    anyops: Any = ops
    if state.fs_snapshot is not None and mode == "replay":
        anyops.load_state(state.fs_snapshot)
        fixed = fix_lookups(ops, state.nodes)
    elif mode == "handles" and callable(getattr(anyops, "import_nodes", None)):
        # reopen the nodes now; the takeover only reopens the ones added since
        anyops.import_nodes({n: (state.keys[n], c) for n, c in state.nodes.items()
                             if n in state.keys})
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
