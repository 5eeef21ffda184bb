"""Recording: what a live recoverable server writes into the journal, request by request.

:class:`RecordingDispatcher` keeps each raw message for the journal, journals
the session (INIT) and the nodes entering or leaving the table before their
replies go out, and writes intents before namespace-changing handlers run
(:mod:`fusewire.recovery.intent`); :class:`RecoveryJournal` is its
``journal`` hook, appending one REQ record per successful non-idempotent
request (a WRITE's data left out when the filesystem keeps it itself).
:class:`CrashHook` and :func:`crash_file_check` are the test crash points
(``FUSEWIRE_CRASH_AT``, ``FUSEWIRE_CRASH_FILE``).  The takeover sequence that
builds these lives in :mod:`fusewire.recovery.takeover`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Collection
from typing import Any

from fusewire import recovery_api as _clock
from fusewire.connection import Request
from fusewire.opcodes.flags import FOPEN, Opcode
from fusewire.opcodes.table import OPS, Reply, ops_where
from fusewire.recovery import intent
from fusewire.recovery import journal as jn
from fusewire.server.dispatch import Buffers, Dispatcher, JournaledFastPaths
from fusewire.server.fastpath import FAST_OPCODES
from fusewire.structs.codec import CODECS
from fusewire.types import FUSEError, Pending
from fusewire.wire import open_out_fields_of

__all__ = ["CrashHook", "RecordingDispatcher", "RecoveryJournal", "crash_file_check"]

log = logging.getLogger("fusewire.recovery")

_OPENS = ops_where("opens")
_RELEASES = ops_where("releases")
_ENTRY_OPENS = frozenset(op for op in _OPENS if OPS[op].reply is Reply.ENTRY_OPEN)
_NO_REPLY = frozenset(op for op, row in OPS.items() if not row.needs_reply)
_IN_HDR = CODECS["in_header"].head(3)     # len, opcode, unique
_OUT_HDR = CODECS["out_header"].struct
_IN_HDR_SIZE = CODECS["in_header"].size
_RESEND_MINOR = 40           # FUSE_NOTIFY_RESEND and bit 63 (protocol.md §14)
#: opcodes whose fused fast paths a recording dispatcher keeps (nothing to journal; not
#: FORGET, which the journaled node table must see)
_JOURNAL_FREE = frozenset(op for op in FAST_OPCODES
                          if OPS[op].idempotent and OPS[op].needs_reply)
#: ... and those it keeps with a record of each answer (when no intent is needed):
#: the others that have a reply, but WRITE (the journal may leave its data out)
_RECORDED = frozenset(op for op in FAST_OPCODES if not OPS[op].idempotent
                      and OPS[op].needs_reply and op != Opcode.WRITE)
_FLUSH = int(Opcode.FLUSH)
_CREATE = int(Opcode.CREATE)
_RELEASE = int(Opcode.RELEASE)
_IN_HEAD4 = CODECS["in_header"].head(4)      # len, opcode, unique, nodeid
_CREATE_FLAGS = CODECS["create_in"].head(1)   # flags
_RELEASE_FH = CODECS["release_in"].head(1)    # fh
_FOPEN_PASSTHROUGH = int(FOPEN.PASSTHROUGH)
#: a successful CREATE reply: header, fuse_entry_out, fuse_open_out
_ENTRY_OPEN_SIZE = _OUT_HDR.size + CODECS["entry_out"].size + CODECS["open_out"].size


class CrashHook:
    """Test hook: ``FUSEWIRE_CRASH_AT=point:OPCODE:n[,...]`` makes the server ``_exit(137)``.

    Points: ``read`` (request read, nothing done), ``handler`` (handler ran,
    not journaled), ``journal`` (journaled, reply not written), ``reply``
    (reply written).  ``n`` counts occurrences of that opcode at that point.
    """

    def __init__(self, spec: str | None) -> None:
        #: ``$FUSEWIRE_CRASH_ONCE``: a path; a crash point fires only for the process
        #: that creates it (one crash for a whole group of serving processes)
        self.once = os.environ.get("FUSEWIRE_CRASH_ONCE")
        #: ``$FUSEWIRE_CRASH_GROUP=1``: a serving process takes its parent (the whole
        #: multi-process server) down with it
        self.group = os.environ.get("FUSEWIRE_CRASH_GROUP") == "1"
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
            if self.once is not None:
                try:
                    os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                except OSError:
                    return          # another process had its crash
            if self.group:
                os.kill(os.getppid(), signal.SIGKILL)
            os._exit(137)


def crash_file_check(when: str = "grant") -> None:
    """Test hook: while ``$FUSEWIRE_CRASH_FILE`` exists, a server dies as soon as it owns
    the mount (a server that cannot start; the keeper's restart limit is tested with it),
    or, if the file says ``ready``, right after it reported ready (a poison request)."""
    path = os.environ.get("FUSEWIRE_CRASH_FILE")
    if not path:
        return
    try:
        with open(path) as f:
            what = f.read().strip() or "grant"
    except OSError:
        return
    if what == when:
        os._exit(137)


class RecoveryJournal:
    """The dispatcher's ``journal`` hook, writing into the keeper's memfd."""

    def __init__(self, writer: jn.JournalWriter, nodes: jn.JournaledNodeTable,
                 state: jn.JournalState, crash: CrashHook, *, keep_body: bool = True) -> None:
        self.writer = writer
        self.nodes = nodes
        self.replies = state.replies
        self.handles = dict(state.handles)
        #: fh -> kernel passthrough backing id (see HandleRecovery.import_backing)
        self.backing = dict(state.backing)
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
        #: called after a request that has no reply (the server's compaction check)
        self.no_reply: Callable[[], None] | None = None
        #: opcodes whose data the filesystem keeps itself (journal_omits_data)
        self.omit: Collection[int] = ()

    def note_read(self, msg: bytes | bytearray | memoryview, before_init: bool) -> None:
        """Journal a message just read: INFLIGHT (no RESEND), or the raw INIT."""
        self.noted = msg
        _, opcode, unique = _IN_HDR.unpack_from(msg)
        if self.track_inflight:
            if opcode not in _NO_REPLY:
                self.writer.append(jn.RecordType.INFLIGHT, jn.encode_inflight(unique, opcode))
        elif before_init and opcode == Opcode.INIT:
            self.writer.append(jn.RecordType.INIT_IN, bytes(msg))

    def replayed(self, req: Request[Any, Any]) -> Buffers | None:
        reply = self.replies.get(req.key)
        if reply is None:
            return None
        return list(jn.reply_with_unique(reply, req.unique))

    def record(self, req: Request[Any, Any], bufs: Buffers, lookups: list[int]) -> None:
        """Journal ``req``, answered with ``bufs`` (the dispatcher's journal hook)."""
        op = req.opcode
        self.record_fields(op, req.nodeid,
                           getattr(req.arg, "flags", 0) if op in _OPENS else 0,
                           req.arg.fh if op in _RELEASES else 0,
                           len(req.data) if op in self.omit and req.data else 0,
                           bufs, lookups)

    def record_fields(self, op: int, nodeid: int, open_flags: int, release_fh: int,
                      omit: int, bufs: Buffers, lookups: list[int]) -> None:
        """:meth:`record` from the fields it needs (a fast path parses no request):
        the request's opcode, nodeid, open flags (an open), handle (a release) and
        the length of the data the journal leaves out; the raw message is
        :attr:`raw`."""
        crash = self.crash
        if crash.active:
            crash.check("handler", op)
        opens = op in _OPENS
        if _clock._unchanged and not opens and op not in _RELEASES:
            return      # the handler said it changed nothing (fusewire.nothing_changed)
        reply = bufs[0] if len(bufs) == 1 else b"".join(bufs)
        opened = released = None
        if opens:
            out = open_out_fields_of(reply)     # None: an error reply
            if out is not None:
                fh, oflags, bid = out
                node = lookups[0] if op in _ENTRY_OPENS and lookups else nodeid
                flags = open_flags
                if op == Opcode.OPENDIR:
                    flags |= os.O_DIRECTORY     # tells a directory handle apart on reopen
                opened = (fh, node, flags)
                self.handles[fh] = (node, flags)
                if oflags & _FOPEN_PASSTHROUGH and bid > 0:
                    self.backing[fh] = bid      # (the kernel passthrough backing id)
        elif op in _RELEASES:
            released = release_fh
            self.handles.pop(released, None)
            if self.backing:
                self.backing.pop(released, None)
        raw = self.raw
        if not self.keep_body:
            raw = raw[:_IN_HDR_SIZE]
        elif omit:
            raw = raw[:len(raw) - omit]             # the data is the message's tail
        t = _clock._pinned
        if t is None:
            t = time.time_ns()
        nodes = self.nodes
        # one copy of the request (a WRITE's data) into the journal, no concatenation
        self.writer.append_parts(nodes.take_pending() if nodes.pending else b"",
                                 jn.RecordType.REQ,
                                 (jn.req_head(t, len(raw), opened, released), raw, reply))
        if crash.active:
            crash.check("journal", op)


    def record_create(self, raw: Any, reply: Any, ino: int) -> bool:
        """:meth:`record_fields` for a CREATE answered by the fast path with one
        ``fuse_entry_out`` + ``fuse_open_out`` reply (``ino`` the new entry): the
        buffered ADD of the new node and the REQ record in one write.  False (nothing
        written) when the pending ADDs are not that one node."""
        pending = self.nodes.pending
        add = False
        if pending:
            if len(pending) != 1 or pending[0] != ino:
                return False
            add = True
        out = open_out_fields_of(reply)
        if out is None:
            return False
        fh, oflags, bid = out
        if add:
            pending.clear()
        flags = _CREATE_FLAGS.unpack_from(raw, _IN_HDR_SIZE)[0]
        self.handles[fh] = (ino, flags)
        if oflags & _FOPEN_PASSTHROUGH and bid > 0:
            self.backing[fh] = bid
        t = _clock._pinned
        if t is None:
            t = time.time_ns()
        if not self.keep_body:
            raw = raw[:_IN_HDR_SIZE]
        self.writer.append_records(jn.open_records(t, raw, reply, fh, ino, flags, add),
                                   2 if add else 1)
        return True

    def record_release(self, raw: Any, reply: Any) -> None:
        """:meth:`record_fields` for a RELEASE answered by the fast path."""
        fh = _RELEASE_FH.unpack_from(raw, _IN_HDR_SIZE)[0]
        self.handles.pop(fh, None)
        if self.backing:
            self.backing.pop(fh, None)
        t = _clock._pinned
        if t is None:
            t = time.time_ns()
        if not self.keep_body:
            raw = raw[:_IN_HDR_SIZE]
        nodes = self.nodes
        if nodes.pending:       # (not from a RELEASE; kept in order all the same)
            self.writer.append_raw(nodes.take_pending())
        self.writer.append_records(jn.release_record(t, raw, reply, fh), 1)


class RecordingDispatcher(Dispatcher):
    """A Dispatcher that keeps the raw message for the journal and journals
    the session (INIT) and idempotent lookups before their replies go out."""

    rjournal: RecoveryJournal

    def dispatch(self, buf: bytes | bytearray | memoryview) -> tuple[Buffers | None, list[int]]:
        rj = self.rjournal
        rj.raw = buf
        if rj.track_inflight and rj.noted is not buf:
            rj.note_read(buf, False)
        # the handler's clock (fusewire.now_ns) pins itself at its first reading; the
        # REQ record keeps that time, so a re-execution produces the same timestamps
        _clock._pinned = None
        _clock._unchanged = False
        fast = self._fast
        if fast is None:
            return Dispatcher.dispatch(self, buf)
        n = len(buf)        # Dispatcher.dispatch's fast-path step, inline (a frame less)
        if fast and n > _IN_HDR_SIZE:
            f = fast.get(buf[4])
            if f is not None:
                done = f(buf, n)
                if done is not None:
                    return done
        return self.dispatch_parsed(buf)

    def handle(self, req: Request[Any, Any]) -> tuple[Buffers | None, list[int]]:
        rj = self.rjournal
        if self.conn.session is None:
            return self._handle_init(req)
        if rj.probing and req.opcode in intent.OPS and not (
                req.unique >> 63 and req.key in rj.replies):
            done = self._intent(req)
            if done is not None:
                return done
        bufs, lookups = Dispatcher.handle(self, req)
        nodes = rj.nodes
        if nodes.pending:
            rj.writer.append_raw(nodes.take_pending())
        if nodes.forgotten:
            nodes.flush_forgets()
        if bufs is None and rj.no_reply is not None:
            rj.no_reply()           # no reply, no on_reply: check compaction here
        return bufs, lookups

    def rollback(self, lookups: list[int]) -> None:
        super().rollback(lookups)
        self.rjournal.nodes.flush_forgets()

    def journaled_fast_paths(self) -> JournaledFastPaths | None:
        # GETATTR, LOOKUP and GETXATTR are idempotent: nothing to journal but a
        # node's first lookup, written before the reply like handle() does.
        # CREATE, UNLINK, FLUSH and RELEASE are recorded exactly as handle() records
        # them, unless intents must be written before their handlers run.
        rj = self.rjournal
        if rj.track_inflight:
            return None         # (kernels without RESEND: every request is journaled as read)
        if rj.probing:
            return _JOURNAL_FREE, self._first_lookup, None, ()
        return _JOURNAL_FREE | _RECORDED, self._first_lookup, self._record_fast, _RECORDED

    def _record_fast(self, buf: Any, bufs: Buffers, lookups: list[int]) -> None:
        op = buf[4]
        rj = self.rjournal
        if op in (_CREATE, _RELEASE):
            # the commonest records, built by one pack each (bytes identical to
            # record_fields', tests/test_fastpath.py); anything unusual goes on below
            if not rj.crash.active and rj.nodes.key_of is None and len(bufs) == 1:
                reply = bufs[0]
                if op == _CREATE:
                    if len(reply) == _ENTRY_OPEN_SIZE and rj.record_create(
                            buf, reply, lookups[0]):
                        return
                elif len(reply) == _OUT_HDR.size:
                    rj.record_release(buf, reply)
                    return
        elif op == _FLUSH and _clock._unchanged:
            crash = rj.crash
            if crash.active:
                crash.check("handler", _FLUSH)
            return              # what record() would conclude, without parsing it
        _n, op, _u, nodeid = _IN_HEAD4.unpack_from(buf)
        self.rjournal.record_fields(
            op, nodeid, _CREATE_FLAGS.unpack_from(buf, _IN_HDR_SIZE)[0] if op == _CREATE else 0,
            _RELEASE_FH.unpack_from(buf, _IN_HDR_SIZE)[0] if op == _RELEASE else 0, 0,
            bufs, lookups)

    def _first_lookup(self, nodeid: int) -> None:
        nodes = self.rjournal.nodes
        nodes.add((nodeid,))
        if nodes.pending:
            self.rjournal.writer.append_raw(nodes.take_pending())

    def _handle_init(self, req: Request[Any, Any]) -> tuple[Buffers | None, list[int]]:
        """Before the session exists: journal the INIT as read, then the session."""
        rj = self.rjournal
        if req.opcode == Opcode.INIT and rj.noted is not rj.raw:
            rj.note_read(rj.raw, True)
        bufs, lookups = Dispatcher.handle(self, req)
        session = self.conn.session
        if session is not None:
            rj.writer.append(jn.RecordType.SESSION, json.dumps(session.to_dict()).encode())
            rj.track_inflight = session.minor < _RESEND_MINOR
        if rj.nodes.pending:
            rj.writer.append_raw(rj.nodes.take_pending())
        return bufs, lookups

    def _deferred_extra(self, req: Request[Any, Any]) -> Any:
        # a deferred request is journaled when it completes (completion order),
        # by then the loop's buffer holds other messages: keep its bytes
        return bytes(self.rjournal.raw)

    def complete(self, p: Pending) -> tuple[Buffers | None, list[int]]:
        self.rjournal.raw = p.slot[2]
        return super().complete(p)

    def _intent(self, req: Request[Any, Any]) -> tuple[Buffers | None, list[int]] | None:
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

    def _answer_done(self, req: Request[Any, Any], before: tuple[int, ...],
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
