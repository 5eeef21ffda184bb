"""Exactly-once mutations in a multi-process recoverable server.

A serving process of ``--processes N --recoverable`` writes no journal (the
parent alone owns it), so the single process's intents
(:mod:`fusewire.recovery.intent`) go into the intent rings of the shared
table instead (:meth:`fusewire.server.processes.SharedTable.put_intent`),
which the keeper holds with the rest of the table.  A request is re-sent
(bit 63) when the process that read it died, when another process of the
group died (RESEND re-queues every clone's unanswered requests, including
those a live process is still working on), or after the whole group died.
Whichever process reads the re-sent copy looks the key up in every ring:

* no intent, or the probes did not move: the handler never ran (or changed
  nothing); run it;
* the probes moved: it ran; answer success from the current state, exactly
  as the single-process server does;
* the intent is still *running* in a live process (a RESEND caused by
  another process's death): wait, briefly, until that handler returns,
  then probe.  Its own reply finds no waiter in the kernel and is dropped.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from fusewire.connection import Request
from fusewire.errors import errno_of
from fusewire.recovery import intent
from fusewire.server.dispatch import Buffers, Dispatcher
from fusewire.server.processes import INTENT_RUNNING
from fusewire.types import FUSEError

if TYPE_CHECKING:
    from fusewire.connection import Connection
    from fusewire.operations import Operations
    from fusewire.recovery.takeover import CrashHook
    from fusewire.server.processes import SharedTable

__all__ = ["SharedIntentDispatcher"]

log = logging.getLogger(__name__)

#: how long a re-sent request waits for the live process still running its first copy
RUNNING_WAIT = 5.0
_OPEN = 1                                  # SharedTable slot state of an open handle


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _SharedHandles:
    """``fh -> (nodeid, open flags)`` read from the shared table's open slots
    (what :func:`fusewire.recovery.intent.probe` needs to spot O_APPEND writes)."""

    def __init__(self, table: SharedTable) -> None:
        self.table = table

    def get(self, fh: int) -> tuple[int, int] | None:
        try:
            state, _owner, _holders, nodeid, _backing, _kind, flags = self.table.slot(fh)
        except OSError:
            return None
        return (int(nodeid), int(flags)) if state == _OPEN else None


class SharedIntentDispatcher(Dispatcher):
    """The dispatcher of one serving process of a recoverable multi-process server."""

    def __init__(self, ops: Operations, conn: Connection, table: SharedTable, *,
                 probing: bool, crash: CrashHook | None = None) -> None:
        super().__init__(ops, conn)
        self.table = table
        self.shared_handles = _SharedHandles(table)
        self.crash = crash if crash is not None and crash.active else None
        #: the filesystem implements HandleRecovery.entry_identity (intents need it)
        self.probing = probing

    def handle(self, req: Request) -> tuple[Buffers | None, list[int]]:
        result = self._handle(req)
        if self.crash is not None:
            self.crash.check("handler", req.opcode)   # test hook: ran, reply not written
        return result

    def _handle(self, req: Request) -> tuple[Buffers | None, list[int]]:
        if not self.probing or req.opcode not in intent.OPS or self.conn.session is None:
            return Dispatcher.handle(self, req)
        if req.unique >> 63:
            done = self._resent(req)
            if done is not None:
                return done
        probes = intent.probe(self, req, self.shared_handles)
        if probes is None:
            return Dispatcher.handle(self, req)
        off = self.table.put_intent(req.key, req.opcode, probes)
        try:
            return Dispatcher.handle(self, req)
        finally:
            self.table.intent_done(off)

    def _resent(self, req: Request) -> tuple[Buffers | None, list[int]] | None:
        found = self.table.find_intent(req.key)
        deadline = time.monotonic() + RUNNING_WAIT
        while (found is not None and found[0] == INTENT_RUNNING and found[1] != os.getpid()
               and _alive(found[1]) and time.monotonic() < deadline):
            time.sleep(0.002)      # another process is still in this request's handler
            found = self.table.find_intent(req.key)
        if found is None or found[2] != req.opcode:
            return None
        before = found[3]
        now = intent.probe(self, req, self.shared_handles)
        if now is None or not intent.changed(before, now):
            return None
        log.info("re-sent %s %#x already took effect: answering from the current state",
                 req.info.name, req.key)
        lookups: list[int] = []
        self._tls.lookups = lookups
        try:
            bufs: Buffers | None = intent.answer_done(self, req, before, now)
        except FUSEError as exc:
            bufs = self._error(req, exc.errno)
        except OSError as exc:
            bufs = self._error(req, errno_of(exc))
        if lookups and bufs is not None:
            self.nodes.add(lookups)
        return bufs, list(lookups)
