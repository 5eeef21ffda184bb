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

Such a filesystem may keep bulk state in descriptors that outlive the server
(``ReplayRecovery.recovery_fds``: memfs keeps file data in a memfd): the
first server hands them to the keeper, every successor gets them with the
connection and the journal, and the request data they hold
(``journal_omits_data``: WRITE payloads) is journaled as its header only;
a replay re-executes such a request with zeros in place of its data.

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
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from fusewire.connection import Config, Connection
from fusewire.errors import LocalProtocolError
from fusewire.opcodes.flags import InitFlag, Opcode
from fusewire.opcodes.table import OPS, ops_where
from fusewire.operations import Operations
from fusewire.pathops import PathAdapter
from fusewire.recovery import journal as jn
from fusewire.recovery import wire
from fusewire.recovery.codeversion import changed_files, code_version, drop_bytecode, loaded_files
from fusewire.recovery.isolate import isolate
from fusewire.recovery.recording import (
    CrashHook,
    RecordingDispatcher,
    RecoveryJournal,
    crash_file_check,
)
from fusewire.recovery_api import (
    HandleRecovery,
    ReplayRecovery,
    pin_clock,
    sticky_clock,
)
from fusewire.recovery_api import recovery_mode as declared_mode
from fusewire.server.dispatch import Dispatcher
from fusewire.server.loop import Server
from fusewire.structs.codec import CODECS
from fusewire.types import FUSEError

if TYPE_CHECKING:
    from fusewire.server.processes import SharedTable

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
_VERSION = CODECS["init_in"].head(2)      # major, minor
_RESEND_MINOR = 40           # FUSE_NOTIFY_RESEND and bit 63 (protocol.md §14)
_RESEND_MASK = (1 << 63) - 1
#: the zero buffer a replay puts omitted request data in: the largest request
_PAD = (1 << 20) + (64 << 10)
#: how often (journal records) the server asks the filesystem whether it wants a snapshot
_WANTED_EVERY = 256


def recovery_mode(ops: Operations) -> str:
    """'replay', 'handles' or 'upgrade-only': what ``ops`` declares
    (:func:`fusewire.recovery_api.recovery_mode`)."""
    return declared_mode(ops)[0]


def rebuild(ops: Operations, state: jn.JournalState, *, snapshot_loaded: bool = False) -> None:
    """Bring a :class:`~fusewire.ReplayRecovery` filesystem to the state the journal
    describes: load the snapshot, re-execute the log with the clock pinned to each
    request's recorded time, then hand it the kernel's lookup counts."""
    assert isinstance(ops, ReplayRecovery)
    if state.fs_snapshot is not None and not snapshot_loaded:
        ops.load_state(bytes(state.fs_snapshot))
    ops.replay_started()
    try:
        if state.requests and state.session is not None:
            conn = Connection.restore({"session": state.session})
            scratch = Dispatcher(ops, conn)
            #: zeros in place of data the journal left out (journal_omits_data)
            pad: bytearray | None = None
            try:
                for t, raw, reply in state.requests:
                    if jn.reply_error(reply) != 0:
                        continue  # a failed request changed nothing
                    pin_clock(t)
                    length = _IN_HDR.unpack_from(raw)[0]
                    if len(raw) >= length:
                        scratch.dispatch(raw)
                        continue
                    if pad is None or len(pad) < length:
                        pad = bytearray(max(length, _PAD))
                    n = len(raw)
                    pad[:n] = raw
                    scratch.dispatch(memoryview(pad)[:length])
                    pad[:n] = bytes(n)
            finally:
                pin_clock(None)
    finally:
        # a warm spare already gave the snapshot's counts (fix_lookups): only the
        # nodes whose count changed since can differ (new nodes are among them)
        ops.replay_finished(state.nodes, state.touched if snapshot_loaded else None)


def fix_lookups(ops: Operations, nodes: dict[int, int]) -> None:
    """A spare, ahead of takeover: the snapshot's lookup counts."""
    if isinstance(ops, ReplayRecovery):
        ops.replay_started()
        ops.replay_finished(nodes)


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

    def share(self, fds: list[int]) -> None:
        """Multi-process: keep ``fds`` (shared table memfd, clones) for the successor."""

    def keep(self, fds: Sequence[int]) -> None:
        """Hold the filesystem's ``recovery_fds`` for the whole mount (every successor
        gets them).  Must not return before they are held."""

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

    def share(self, fds: list[int]) -> None:
        self.ask({"op": "shared"}, fds)

    def keep(self, fds: Sequence[int]) -> None:
        reply = self.ask({"op": "fs_fds"}, list(fds))
        if not reply.get("ok"):
            raise RuntimeError(f"the keeper does not hold the filesystem's fds: {reply}")

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
        #: code version of this server, and of the journal it replayed if different
        self.code: str | None = None
        self.journal_code: str | None = None
        self.mode_why = ""
        self.progressed = False
        # the base loop calls these around each request: on_read only for the
        # test crash points (None keeps the hot path free of the call); on_reply
        # for ready, progress and compaction
        self.on_read = self._on_read if self.crash.active else None
        self.on_reply = self._on_reply
        rj.no_reply = self.maybe_compact
        self.compact_at = 0
        self.compact_records = 0
        #: the filesystem's snapshot_wanted, where it can ask for a compaction
        self.wants_snapshot: Callable[[], bool] | None = None
        if isinstance(self.ops, ReplayRecovery) and (
                type(self.ops).snapshot_wanted is not ReplayRecovery.snapshot_wanted):
            self.wants_snapshot = self.ops.snapshot_wanted

    def in_child(self, table: SharedTable | None = None) -> None:
        """A serving process of a multi-process server (fusewire.server.processes):
        the parent alone talks to the keeper and wrote the journal's session; the
        state a successor needs is in the shared table the keeper holds, intents
        for exactly-once mutations included (:mod:`fusewire.recovery.shared_intent`)."""
        if table is None:
            self.dispatcher = Dispatcher(self.ops, self.conn)
        else:
            from fusewire.recovery.shared_intent import SharedIntentDispatcher

            self.dispatcher = SharedIntentDispatcher(self.ops, self.conn, table,
                                                     probing=self.rj.probing, crash=self.crash)
        self.on_read = self.on_reply = None
        sock = getattr(self.control, "sock", None)
        if sock is not None:
            sock.close()

    def request_handover(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.handing_over = True
        self.stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_handover()

    def report_ready(self) -> None:
        self.reported = True
        ms = (time.monotonic() - self.t0) * 1000
        self.control.ready({"pid": os.getpid(), "recovery": self.mode,
                            "recovery_why": self.mode_why,
                            "takeover_ms": round(ms, 2), "code": self.code,
                            "journal_code": self.journal_code})

    def compact(self) -> None:
        """Write a snapshot into a new memfd and swap it in (keeper or fd store)."""
        rj = self.rj
        session = self.conn.session.to_dict() if self.conn.session is not None else None
        blob = self.ops.dump_state() if isinstance(self.ops, ReplayRecovery) else None
        blob_taken = blob is not None
        keys = rj.nodes.key_snapshot() if self.mode == "handles" else None
        parts = jn.snapshot_parts(session, {"fs": self.meta.get("fs"), "code": self.code},
                                  blob, rj.nodes.snapshot(), rj.handles, keys, rj.backing)
        del blob
        fd = jn.new_memfd()
        size = 0
        for part in parts:          # no joined copy of the (possibly big) snapshot
            view = memoryview(part)
            while view:
                n = os.pwrite(fd, view, size)
                size += n
                view = view[n:]
        del parts
        self.control.swap_journal(fd)
        if blob_taken and isinstance(self.ops, ReplayRecovery):
            self.ops.snapshot_taken()       # nothing replays the older log any more
        old = rj.writer.fd
        rj.writer.close()
        rj.writer = jn.JournalWriter(fd, size)
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
        if self.progressed:         # (the common case: maybe_compact's test, inline)
            w = self.rj.writer
            if w.offset < self.compact_at and w.records < self.compact_records \
                    and not self.crash.active:
                return
        if self.crash.active:
            self.crash.check("reply", _IN_HDR.unpack_from(msg)[1])
        if not self.progressed:
            if (not self.reported and self.conn.session is not None
                    and self.dispatcher.fatal is None):  # init() raising: not ready
                self.report_ready()
            if self.reported and not _IN_HDR.unpack_from(msg)[2] >> 63:
                self.progressed = True
                self.control.progress()
        self.maybe_compact()

    def maybe_compact(self) -> None:
        """Compact if the log since the snapshot passed a threshold (a request boundary:
        after a reply was written, or after a request that has none, like FORGET)."""
        w = self.rj.writer
        if w.offset < self.compact_at and w.records < self.compact_records:
            return
        # Bytes of log since the snapshot, not the file size: a snapshot of a
        # big filesystem is itself bigger than the threshold (compacting again
        # after every reply would never end).  And at least the snapshot's own
        # size: a compaction writes the whole filesystem, so its cost stays a
        # constant factor of what was appended (64, 128, 256 MiB... for a file
        # being written, not one dump per 64 MiB of data).  The log counts what
        # every server since the snapshot appended (``JournalWriter.inherit``):
        # a successor's replay is bounded by these thresholds however often
        # servers die.
        if (w.log_bytes > max(COMPACT_BYTES, w.log_start) or w.log_records > COMPACT_RECORDS
                or (self.wants_snapshot is not None and self.wants_snapshot())):
            self.compact()
        self.set_thresholds()

    def set_thresholds(self) -> None:
        """Precompute the writer offset and record count that call for a compaction."""
        w = self.rj.writer
        self.compact_at = w.log_start + max(COMPACT_BYTES, w.log_start) + 1
        self.compact_records = COMPACT_RECORDS - w.prior_records + 1
        if self.wants_snapshot is not None:     # ask the filesystem now and then
            self.compact_records = min(self.compact_records, w.records + _WANTED_EVERY)


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
    assert isinstance(ops, HandleRecovery)
    table = {n: (state.keys[n], c) for n, c in state.nodes.items() if n in state.keys}
    lost = ops.import_nodes(table)
    missing = [n for n in state.nodes if n not in state.keys]
    if lost or missing:
        log.warning("%d node(s) could not be restored (ESTALE from now on)",
                    len(lost) + len(missing))
    failed = 0
    for fh, (node, flags) in state.handles.items():
        try:
            ops.reopen_handle(fh, node, flags)
        except (OSError, FUSEError, NotImplementedError) as exc:
            failed += 1
            log.warning("handle %d (node %d) could not be reopened: %s", fh, node, exc)
    if failed:
        log.warning("%d of %d open handle(s) lost", failed, len(state.handles))


def close_unused_backing(server: Server, used: set[int]) -> None:
    """Close the kernel backing ids a dead server registered that no open file uses.

    An id whose OPEN reply was journaled is in ``used``; any other one was never
    handed to the kernel's files (the reply is journaled before it is written), so
    closing it frees the backing file.  Ids are small and allocated in turn: the
    range up to the highest known one, and a margin above it, is probed.
    """
    closed = 0
    for bid in range(1, max(used, default=0) + 65):
        if bid in used:
            continue
        try:
            server.backing_close(bid)
            closed += 1
        except OSError:
            pass                    # ENOENT: not registered
    if closed:
        log.info("closed %d kernel backing id(s) nobody uses", closed)


def take_over(fuse_fd: int, journal_fd: int, meta: dict[str, Any], control: Control, *,
              first: bool, graceful: bool, t0: float, crash: CrashHook,
              preloaded: tuple[Operations, tuple[int, int], int] | None = None,
              code: str | None = None, shared_fds: list[int] | None = None,
              fs_fds: list[int] | None = None) -> int:
    """Rebuild from the journal, take the connection over, serve until unmount or handover.

    ``fs_fds``: the filesystem's ``recovery_fds`` the keeper held (none for the first
    server, which creates them and hands them over before it journals anything)."""
    state = jn.load(jn.read_all(journal_fd))
    graceful = graceful or state.graceful
    ident = (os.fstat(journal_fd).st_ino, state.snapshot_end)
    warm = False
    if preloaded is not None and preloaded[1] == ident:
        ops, options = preloaded[0], list(meta.get("options") or [])
        warm = True
    elif preloaded is not None and recovery_mode(preloaded[0]) == "handles":
        ops, options = preloaded[0], list(meta.get("options") or [])  # nodes re-synced below
    else:
        ops, options = _build_ops(meta)
    mode = recovery_mode(ops)
    config = _config(meta)
    crashed = not first and not graceful
    if code is None:
        code = code_version(type(ops).__module__)
    journal_code = state.meta.get("code")
    if journal_code is not None and journal_code != code:
        log.warning("code %s replays a journal written by code %s", code, journal_code)
    if crashed and mode == "upgrade-only":
        log.error("%s cannot recover from a crash (no recovery contract): state is lost",
                  meta["fs"])
    server_why = declared_mode(ops)[1]
    isolated = mode == "upgrade-only" and not first
    if isolated:
        # a fresh filesystem object: nothing the kernel holds from before may reach it
        ops = isolate(ops, max(state.nodes, default=1) + 1, max(state.handles, default=0) + 1)
    if isinstance(ops, ReplayRecovery):
        if fs_fds:
            ops.attach_recovery_fds(fs_fds)
        elif state.records == 0:
            # the first server: whatever the filesystem keeps outside the process is
            # held by the keeper before anything is journaled or answered
            made = list(ops.recovery_fds())
            if made:
                control.keep(made)
        rebuild(ops, state, snapshot_loaded=warm)
    elif isinstance(ops, HandleRecovery):
        ops.prepare_recovery()
        restore_handles(ops, state)
        ops.import_backing({fh: (state.handles[fh][0], bid)
                            for fh, bid in state.backing.items() if fh in state.handles})
    # upgrade-only keeps the old counts too: they are the nodeids a later successor
    # must not hand out again
    nodes = jn.JournaledNodeTable(
        state.nodes,
        dict(state.keys) if mode == "handles" else None,
        ops.handle_of if mode == "handles" else None)
    conn = None
    if state.session is not None:
        conn = Connection.restore({"session": state.session})
    server = RecoverableServer(ops, meta["mountpoint"], options, fd=fuse_fd, connection=conn,
                               nodes=nodes, config=config, fsname=f"fusewire-{meta['fs']}")
    if conn is not None:
        conn.config = server.config
    writer = jn.JournalWriter(journal_fd, state.valid_len)
    writer.inherit(state)
    nodes.writer = writer
    if mode == "handles" and isinstance(ops, PathAdapter):
        ops.key_changed = nodes.rekey        # a rename changes a path node's handle
    rj = RecoveryJournal(writer, nodes, state, crash, keep_body=mode == "replay")
    rj.probing = (isinstance(ops, HandleRecovery)
                  and type(ops).entry_identity is not HandleRecovery.entry_identity)
    resend = resend_supported(state, config)
    rj.track_inflight = not resend and state.session is not None
    if isinstance(ops, ReplayRecovery):
        rj.omit = frozenset(ops.journal_omits_data())
    server.setup_recovery(rj, control, meta, mode, t0)
    sticky_clock(True)
    if state.records == 0:
        writer.append(jn.RecordType.META, json.dumps({"fs": meta["fs"], "code": code}).encode())
        if isinstance(ops, ReplayRecovery):
            writer.append(jn.RecordType.FS_SNAPSHOT, ops.dump_state())
            ops.snapshot_taken()
        writer.log_start, writer.records = writer.offset, 0
    elif journal_code != code:
        writer.append(jn.RecordType.META, json.dumps({"code": code}).encode())
    server.code = code
    server.mode_why = server_why
    server.journal_code = journal_code if journal_code != code else None
    server.mount()
    if not first and InitFlag.PASSTHROUGH in server.session_flags:
        close_unused_backing(server, set(state.backing.values()))
    if threading_main():
        signal.signal(signal.SIGUSR2, server.request_handover)
    if resend:
        server.notify_resend()
    else:
        server.answer_orphans(state)
    if (crashed or isolated) and server.conn.session is not None:
        try:
            server.notify_inc_epoch()
        except LocalProtocolError:
            pass        # 7.44 needed: cached names stay as they are
    processes = int(meta.get("processes") or 1)
    if server.conn.session is not None and processes == 1:  # else once its processes run
        server.report_ready()
        crash_file_check("ready")
    try:
        if processes > 1:
            _serve_processes(server, processes, control, shared_fds or [])
        else:
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


def _serve_processes(server: RecoverableServer, processes: int, control: Control,
                     shared_fds: list[int]) -> None:
    """Serve from ``processes`` processes (docs/recovery.md, "Multi-process servers").

    ``shared_fds``: the shared table memfd and the clones a dead server group left
    in the keeper, or nothing (the first server).  The table is adopted as it is:
    its node log revives any node the kernel names, and the handles still open are
    reopened at their numbers by whichever process meets them first.
    """
    from fusewire.server.processes import SharedTable, check_processes, serve_processes

    check_processes(server.ops, processes)
    table = None
    if shared_fds:
        table = SharedTable.adopt(shared_fds[0])
        opens = table.orphan_all()
        if opens:
            log.info("%d open handle(s) of the dead server group, reopened on first use",
                     len(opens))
    def report() -> None:
        # the parent answers INIT but no other request: ready once INIT is answered
        # and the processes run (it cannot see them make progress: count it as made)
        if server.dispatcher.fatal is None:
            if not server.reported:
                _quiet(server.report_ready)
            if not server.progressed:
                server.progressed = True
                _quiet(control.progress)

    serve_processes(server, processes, table=table, on_started=report,
                    clones=shared_fds[1:],
                    on_shared=lambda t, clones: control.share([t.fileno(), *clones]),
                    resend_on_death=True)


def run_owner(sock_path: str, control_fd: int | None = None) -> int:
    """Attach to the keeper at ``sock_path``, take over, serve until unmount or handover.

    ``control_fd``: an attached control connection (a queued spare that re-executed
    itself into new code asks for the journal again instead of attaching).
    """
    crash = CrashHook(os.environ.get("FUSEWIRE_CRASH_AT"))
    if control_fd is None:
        control = wire.connect(sock_path, None)
        wire.send_msg(control, {"op": "attach", "pid": os.getpid()})
    else:
        os.set_inheritable(control_fd, False)
        control = socket.socket(fileno=control_fd)
        wire.send_msg(control, {"op": "reoffer"})
    preloaded: tuple[Operations, tuple[int, int], int] | None = None
    files: dict[str, tuple[int, int, int]] = {}
    code: str | None = None
    while True:
        grant, fds = wire.recv_msg(control)      # a spare blocks here until needed
        if grant is not None and grant.get("queued") and fds:
            # a warm spare: pre-build the filesystem from the current snapshot
            if preloaded is not None:
                preloaded[0].destroy()      # passthrough: close the nodes it reopened
            preloaded = None
            _idle(True)         # never take CPU from the serving process to pre-load
            try:
                preloaded = _preload(grant["meta"], fds[0])
            finally:
                _idle(False)
                for fd in fds:
                    os.close(fd)
            # what this process imported: the first stat of each file counts (a later
            # offer, e.g. after the compaction of a handover, imports nothing again)
            for path, st in loaded_files().items():
                files.setdefault(path, st)
            if code is None:
                code = code_version(type(preloaded[0]).__module__)
            try:        # no reply comes: the next message is still the grant
                wire.send_msg(control, {"op": "preloaded", "code": code})
            except OSError:
                pass
            continue
        if grant is not None and grant.get("op") == "check" and not fds:
            # an upgrade is coming: serve it with the code on disk, warm
            stale = changed_files(files)
            if stale:
                log.warning("%d file(s) changed since this spare loaded them (%s): "
                            "re-executing into the code on disk before the upgrade",
                            len(stale), stale[0])
                drop_bytecode(stale)
                os.set_inheritable(control.fileno(), True)
                os.execv(sys.executable, [sys.executable, "-m", "fusewire.recovery.successor",
                                          "--socket", sock_path, "--queued",
                                          str(control.fileno())])
            try:
                wire.send_msg(control, {"op": "fresh"})
            except OSError:
                pass
            continue
        break
    t0 = time.monotonic()
    if grant is not None and grant.get("ok") and preloaded is not None:
        stale = changed_files(files)
        if stale:
            # the code on disk is not what this spare imported: serve the new code
            log.warning("%d file(s) changed since this spare loaded them (%s): "
                        "re-executing into the code on disk", len(stale), stale[0])
            drop_bytecode(stale)
            _reexec(sock_path, control, fds, grant, t0)
    if grant is None or not grant.get("ok"):
        for fd in fds:
            os.close(fd)
        if grant is None:
            log.info("the keeper went away (unmounted)")
            return 0
        log.error("keeper refused: %s", grant)
        return 1
    crash_file_check()
    fuse_fd, journal_fd, shared, fs_fds = _split_fds(fds, grant)
    return take_over(fuse_fd, journal_fd, grant["meta"], KeeperControl(control),
                     first=bool(grant.get("first")), graceful=bool(grant.get("graceful")),
                     t0=t0, crash=crash, preloaded=preloaded, code=code, shared_fds=shared,
                     fs_fds=fs_fds)


def _split_fds(fds: list[int], grant: dict[str, Any]) -> tuple[int, int, list[int], list[int]]:
    """A grant's fds: /dev/fuse, journal, the multi-process ones, then ``fs_fds`` of the
    filesystem's own (its ``recovery_fds``)."""
    k = int(grant.get("fs_fds") or 0)
    fuse_fd, journal_fd, *rest = fds
    cut = len(rest) - k
    return fuse_fd, journal_fd, rest[:cut], rest[cut:]


def _reexec(sock_path: str, control: socket.socket, fds: list[int], grant: dict[str, Any],
            t0: float) -> None:
    """Replace this process by a fresh interpreter that takes over with ``fds``.

    The pid, the control connection (the keeper's owner) and the granted fds
    stay; only the imported code is new.
    """
    keep = [control.fileno(), *fds]
    for fd in keep:
        os.set_inheritable(fd, True)
    argv = [sys.executable, "-m", "fusewire.recovery.successor", "--socket", sock_path,
            "--granted", json.dumps(grant), "--fds", ",".join(map(str, keep)),
            "--t0", repr(t0)]
    os.execv(sys.executable, argv)


def _run_granted(args: argparse.Namespace) -> int:
    """The second half of :func:`_reexec`: take over with the fds it passed."""
    cfd, *fds = (int(x) for x in args.fds.split(","))
    for fd in (cfd, *fds):
        os.set_inheritable(fd, False)
    control = socket.socket(fileno=cfd)
    grant = json.loads(args.granted)
    fuse_fd, journal_fd, shared, fs_fds = _split_fds(fds, grant)
    crash_file_check()
    return take_over(fuse_fd, journal_fd, grant["meta"], KeeperControl(control),
                     first=bool(grant.get("first")), graceful=bool(grant.get("graceful")),
                     t0=float(args.t0), crash=CrashHook(os.environ.get("FUSEWIRE_CRASH_AT")),
                     shared_fds=shared, fs_fds=fs_fds)


def _preload(meta: dict[str, Any],
             journal_fd: int) -> tuple[Operations, tuple[int, int], int]:
    """Build the filesystem and load the journal's snapshot ahead of a takeover."""
    ops, _ = _build_ops(meta)
    state, blob = jn.load_snapshot(journal_fd)       # no copy of the request log
    if isinstance(ops, ReplayRecovery):
        if blob is not None:
            ops.load_state(blob)
        del blob
        fix_lookups(ops, state.nodes)
    elif isinstance(ops, HandleRecovery):
        # reopen the nodes now; the takeover only reopens the ones added since
        ops.import_nodes({n: (state.keys[n], c) for n, c in state.nodes.items()
                          if n in state.keys})
    return ops, (os.fstat(journal_fd).st_ino, state.snapshot_end), 0


def _idle(on: bool) -> None:
    """Run this process under SCHED_IDLE (on) or SCHED_OTHER again (off), if allowed."""
    try:
        policy = os.SCHED_IDLE if on else os.SCHED_OTHER
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except (OSError, AttributeError):
        pass


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
    p.add_argument("--granted", help=argparse.SUPPRESS)
    p.add_argument("--fds", help=argparse.SUPPRESS)
    p.add_argument("--t0", help=argparse.SUPPRESS)
    p.add_argument("--queued", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s server[{os.getpid()}] %(levelname)s %(message)s")
    if args.granted:
        return _run_granted(args)
    return run_owner(args.socket, args.queued)
