"""Intents: exactly-once mutations of state that lives outside the server ("handles" mode).

A passthrough MKDIR changes the source filesystem the moment its handler
runs.  A server SIGKILLed after that but before its journal write leaves an
effect the journal does not show, and the kernel re-sends the request (bit
63): executing it again would answer EEXIST (mkdir), ENOENT (unlink, rename)
or append the data twice.  MemFS does not have the problem (its effects die
with the process and are rebuilt from the journal), filesystems whose state
is on disk do.

So before the handler of such a request runs, the owner journals an INTENT:
the request key and *probes* of exactly the state the request changes — the
identity (st_dev, st_ino) of each name it creates, removes or renames, or the
size of the file an O_APPEND write extends.  A re-sent request that has an
intent but no recorded reply is probed again:

* probes unchanged: the handler never ran (or changed nothing, e.g. a mkdir
  that failed with EEXIST): execute it normally;
* probes changed: it ran; answer success from the current state (a LOOKUP
  of the new name for requests that return an entry, plus an OPEN for
  CREATE; the byte count for a write; an empty reply otherwise).

The probe hook is the filesystem's ``entry_identity(parent, name)``; the
file size comes from ``getattr``.  Without ``entry_identity`` no intents are
written.  Changes made to the source by someone else between the crash and
the re-sent request can fool the comparison; that is the price of not
locking the source tree.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

from fusewire.connection import Request
from fusewire.opcodes.flags import Opcode
from fusewire.opcodes.table import OPS as _TABLE
from fusewire.opcodes.table import Reply, ops_where
from fusewire.structs.codec import CODECS
from fusewire.types import FUSEError

if TYPE_CHECKING:
    from fusewire.server.dispatch import Buffers, Dispatcher

__all__ = ["OPS", "answer_done", "changed", "probe"]

_ABSENT = (-1, -1)
_WRITE_OUT = CODECS["write_out"].struct
_REOPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_TRUNC

#: requests that get an intent
#: (the namespace-changing rows of the opcode table, plus appending writes)
OPS = ops_where("namespace") | {Opcode.WRITE}
#: create-type requests answered with an entry only (CREATE also opens)
_ENTRY_OPS = frozenset(op for op in ops_where("create_type") if _TABLE[op].reply is Reply.ENTRY)


class OpenFlags(Protocol):
    """``fh -> (nodeid, open flags)`` of the open handles (a dict, or a shared table view)."""

    def get(self, fh: int, /) -> tuple[int, int] | None:
        """The node and open flags of ``fh``, None if it is not open."""


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _names(req: Request) -> list[tuple[int, bytes]]:
    if req.opcode in (Opcode.RENAME, Opcode.RENAME2):
        return [(req.nodeid, req.names[0]), (req.arg.newdir, req.names[1])]
    return [(req.nodeid, req.names[0])]


def probe(d: Dispatcher, req: Request, handles: OpenFlags) -> tuple[int, ...] | None:
    """The probes of ``req`` (None: this request needs no intent, or cannot be probed)."""
    ops: Any = d.ops
    try:
        if req.opcode == Opcode.WRITE:
            h = handles.get(req.arg.fh)
            if h is None or not h[1] & os.O_APPEND:
                return None     # a pwrite at an explicit offset is idempotent
            return (ops.getattr(req.nodeid, d._ctx(req)).st_size,)
        out: list[int] = []
        for parent, name in _names(req):
            ident = ops.entry_identity(parent, name)
            out += _ABSENT if ident is None else (_signed(ident[0]), _signed(ident[1]))
        return tuple(out)
    except (OSError, FUSEError):
        return None     # the handler will most likely fail the same way


def changed(before: tuple[int, ...], now: tuple[int, ...] | None) -> bool:
    """Whether the request's handler ran (its probes moved)."""
    if now is None or len(now) != len(before):
        return False
    if len(before) == 1:                    # append: the file grew
        return now[0] > before[0]
    return now != before


def answer_done(d: Dispatcher, req: Request, before: tuple[int, ...],
                now: tuple[int, ...]) -> Buffers:
    """The success reply of a request whose handler already ran (see the module doc)."""
    ops = d.ops
    op = req.opcode
    if op in _ENTRY_OPS:
        attr = ops.lookup(req.nodeid, req.names[0], d._ctx(req))
        return d._ok(req, d._entry(req, attr, create=True))
    if op == Opcode.CREATE:
        from fusewire.server.dispatch import open_out_bytes

        ctx = d._ctx(req)
        attr = ops.lookup(req.nodeid, req.names[0], ctx)
        entry = d._entry(req, attr, create=True)
        fi = ops.open(attr.st_ino, req.arg.flags & ~_REOPEN_STRIP, ctx)
        return d._ok(req, entry, open_out_bytes(fi))
    if op == Opcode.WRITE:
        n = min(len(req.data), now[0] - before[0])
        return d._ok(req, _WRITE_OUT.pack(n, 0))
    return d._ok(req)
