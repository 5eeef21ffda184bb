"""Fused fast paths for the hottest requests: one unpack in, one call, one pack out.

A small file costs the server nine requests (LOOKUP, CREATE, GETXATTR of
``security.capability``, WRITE, FLUSH, RELEASE, LOOKUP, UNLINK, FORGET), and
on that path the generic machinery -- :func:`~fusewire.connection.parse_request`
building a :class:`~fusewire.connection.Request`, the row checks, the
``_op_*`` function and :meth:`~fusewire.connection.Connection.reply` building
a list of parts -- costs more than the filesystem's own work.  Each function
here serves one opcode the way its ``_op_*`` function does, but reads the
in-header and the opcode's struct with one ``struct`` format derived from
:data:`~fusewire.structs.codec.CODECS` (the field order is checked against
the codecs at import) and packs the out-header and the reply body together.

The rules that keep the result identical to the generic path:

* A fast function first decides, from the message alone and before any side
  effect, whether it is the plain case (exact length, no extensions, the
  names well formed, no flags that need more work).  If not it returns
  ``None`` and the dispatcher takes the generic path, which produces the
  same reply or the same protocol error as always.
* The request is registered in flight and retired exactly as
  :meth:`~fusewire.connection.Connection.receive` and
  :meth:`~fusewire.connection.Connection.retire` do (inline: ``inflight`` and
  the public ``interrupts`` set).
* A :class:`~fusewire.types.FUSEError` with an errno in 1..511 becomes the
  same error reply (:meth:`~fusewire.connection.Connection.reply_error`); any
  other exception (a handler's bug, an errno out of range, a value that
  cannot be encoded, a :class:`~fusewire.types.Pending`) is settled by the
  dispatcher (``Dispatcher._settle``) from the
  request parsed the generic way, so the log lines, EIO and deferral are
  those of :meth:`~fusewire.server.dispatch.Dispatcher.handle`.
* :func:`build_fast_paths` offers a fast path only where the generic one
  would do exactly this: the handler is implemented and not ``async``, the
  session's structs are full size, no draft handle profile, the dispatcher's
  class does not override the ``_op_*`` function or ``handle``, and its
  node table is a plain ``NodeTable`` (whose ``add`` of one nodeid, and
  ``forget``, the fast paths do inline, under its lock).  The dispatcher also
  skips every fast path while a journal, an observer, ``debug`` or an
  instance-level ``handle`` is in place.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from fusewire.connection import parse_request
from fusewire.errors import MAX_ERRNO, LocalProtocolError
from fusewire.opcodes.flags import FUSE_ROOT_ID, RELEASE, WRITE, Opcode
from fusewire.server.draft_serve import Buffers
from fusewire.server.replies import attr_fields, open_out_fields
from fusewire.structs.codec import CODECS
from fusewire.types import FUSEError
from fusewire.types import timeout_parts as _ts

if TYPE_CHECKING:
    from fusewire.server.dispatch import Dispatcher

__all__ = ["FAST_OPCODES", "FastPath", "build_fast_paths"]

log = logging.getLogger("fusewire.server.dispatch")

#: a fast function: (message, its length) -> (reply buffers or None, nodeids
#: counted), or None for "not the plain case: take the generic path"
FastPath = Callable[[Any, int], "tuple[Buffers | None, list[int]] | None"]

_HEADER_FIELDS = ("len", "opcode", "unique", "nodeid", "uid", "gid", "pid", "total_extlen",
                  "padding")

#: struct name -> the field order the fast functions below unpack into
_EXPECTED: dict[str, tuple[str, ...]] = {
    "in_header": _HEADER_FIELDS,
    "create_in": ("flags", "mode", "umask", "open_flags"),
    "write_in": ("fh", "offset", "size", "write_flags", "lock_owner", "flags", "padding"),
    "flush_in": ("fh", "unused", "padding", "lock_owner"),
    "release_in": ("fh", "flags", "release_flags", "lock_owner"),
    "getxattr_in": ("size", "padding"),
    "forget_in": ("nlookup",),
    "getattr_in": ("getattr_flags", "dummy", "fh"),
    "out_header": ("len", "error", "unique"),
    "write_out": ("size", "padding"),
    "getxattr_out": ("size", "padding"),
    "entry_out": ("nodeid", "generation", "entry_valid", "attr_valid", "entry_valid_nsec",
                  "attr_valid_nsec", "attr"),
    "attr_out": ("attr_valid", "attr_valid_nsec", "dummy", "attr"),
    "open_out": ("fh", "open_flags", "backing_id"),
    # replies.attr_fields's order, which LOOKUP and CREATE pack inline
    "attr": ("ino", "size", "blocks", "atime", "mtime", "ctime", "atimensec", "mtimensec",
             "ctimensec", "mode", "nlink", "uid", "gid", "rdev", "blksize", "flags"),
}
for _name, _fields in _EXPECTED.items():
    if CODECS[_name].record._fields != _fields:  # pragma: no cover - a schema edit
        raise RuntimeError(f"fastpath: {_name} fields are {CODECS[_name].record._fields}, "
                           f"the fast paths unpack {_fields}")


def _fused(*names: str) -> struct.Struct:
    """One format for the named structs back to back (from their codecs)."""
    return struct.Struct("<" + "".join(CODECS[n].fmt[1:] for n in names))


_IN = _fused("in_header")
_IN_CREATE = _fused("in_header", "create_in")
_IN_WRITE = _fused("in_header", "write_in")
_IN_FLUSH = _fused("in_header", "flush_in")
_IN_RELEASE = _fused("in_header", "release_in")
_IN_GETXATTR = _fused("in_header", "getxattr_in")
_IN_FORGET = _fused("in_header", "forget_in")
_IN_GETATTR = _fused("in_header", "getattr_in")
_OUT = _fused("out_header")
_OUT_ENTRY = _fused("out_header", "entry_out")
_OUT_ENTRY_OPEN = _fused("out_header", "entry_out", "open_out")
_OUT_ATTR = _fused("out_header", "attr_out")
_OUT_WRITE = _fused("out_header", "write_out")
_OUT_GETXATTR = _fused("out_header", "getxattr_out")

_RESEND_MASK = (1 << 63) - 1
_NS = 1_000_000_000
_U64 = 0xFFFFFFFFFFFFFFFF
_KILL_SUIDGID = int(WRITE.KILL_SUIDGID)
_FLOCK_UNLOCK = int(RELEASE.FLOCK_UNLOCK)
_LOOKUP = int(Opcode.LOOKUP)
_FORGET = int(Opcode.FORGET)
_GETATTR = int(Opcode.GETATTR)
_UNLINK = int(Opcode.UNLINK)
_CREATE = int(Opcode.CREATE)
_WRITE = int(Opcode.WRITE)
_FLUSH = int(Opcode.FLUSH)
_RELEASE = int(Opcode.RELEASE)
_GETXATTR = int(Opcode.GETXATTR)

#: opcode -> (its ``_op_*`` function's name, the handler it calls, its struct or None,
#: how many names follow the struct)
_SERVED: dict[int, tuple[str, str, str | None, int]] = {
    int(Opcode.LOOKUP): ("_op_lookup", "lookup", None, 1),
    int(Opcode.FORGET): ("_op_forget", "forget", "forget_in", 0),
    int(Opcode.GETATTR): ("_op_getattr", "getattr", "getattr_in", 0),
    int(Opcode.UNLINK): ("_op_unlink", "unlink", None, 1),
    int(Opcode.CREATE): ("_op_create", "create", "create_in", 1),
    int(Opcode.WRITE): ("_op_write", "write", "write_in", 0),
    int(Opcode.FLUSH): ("_op_flush", "flush", "flush_in", 0),
    int(Opcode.RELEASE): ("_op_release", "release", "release_in", 0),
    int(Opcode.GETXATTR): ("_op_getxattr", "getxattr", "getxattr_in", 1),
}

#: the opcodes that have a fused fast path
FAST_OPCODES = frozenset(_SERVED)


def build_fast_paths(d: Dispatcher, base: type[Dispatcher],
                     data: Callable[[Any, str], Any], *,
                     only: Collection[int] | None = None,
                     first_lookup: Callable[[int], None] | None = None,
                     record: Callable[[Any, Buffers, list[int]], None] | None = None,
                     recorded: Collection[int] = ()
                     ) -> dict[int, FastPath]:
    """The fast functions that serve exactly as ``d``'s generic path would, by opcode.

    ``base`` is the dispatcher class whose ``_op_*`` functions these stand for
    (a subclass of it that overrides one keeps its own), ``data`` the check a
    handler's bytes go through (``dispatch._data``).  Empty when none applies.

    ``only``: a dispatcher whose ``handle`` does more (the recording dispatcher
    of a recoverable server) names the opcodes for which that extra work is
    nothing but what ``first_lookup(nodeid)`` does: called, instead of the
    inline count, for a nodeid entering the node table (count 0 -> 1) before
    the reply is returned (the journal records a node's first lookup).  For the
    opcodes in ``recorded`` (non-idempotent: CREATE, FLUSH, RELEASE),
    ``record(message, reply, nodeids)`` journals each answered request before
    its reply is returned, a node entering the table with it is only counted
    by ``d.nodes.add`` (which buffers it for that record), and a re-sent
    request (bit 63, which the journal may answer) takes the generic path.
    """
    conn = d.conn
    session = conn.session
    if session is None or session.lookup_handle is not None:
        return {}
    if only is None and type(d).handle is not base.handle:
        return {}
    if session.sizes["entry_out"] != CODECS["entry_out"].size \
            or session.sizes["attr_out"] != CODECS["attr_out"].size:
        return {}
    ops = d.ops
    inflight = conn.inflight
    interrupts = conn.interrupts
    reply_error = conn.reply_error
    interrupted = conn.is_interrupted
    nodes = d.nodes
    nodes_lock = nodes.lock
    counts = nodes.counts
    pack_out = _OUT.pack
    pack_entry = _OUT_ENTRY.pack
    entry_size = _OUT_ENTRY.size
    mask = _RESEND_MASK

    def error(buf: Any, unique: int, exc: FUSEError) -> tuple[Buffers | None, list[int]]:
        err = exc.errno
        if 0 < err <= MAX_ERRNO:
            return reply_error(unique, err), []
        return failed(buf, exc)      # the handler's bug: logged by the generic code

    def failed(buf: Any, exc: Exception) -> tuple[Buffers | None, list[int]]:
        # Everything but a FUSEError is settled by the generic code, from the
        # request parsed the generic way (the message is still in the buffer).
        req = parse_request(buf, session)
        return d._settle(req, exc), []

    def lookup(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        size, op, unique, nodeid, uid, gid, pid, ext, _ = _IN.unpack_from(buf)
        if size != n or op != _LOOKUP or ext or buf[n - 1]:
            return None
        name = bytes(buf[40:n - 1])
        if 0 in name:            # (an int needle: memchr, ~6x faster)
            return None
        key = unique & mask
        inflight[key] = op
        try:
            ctx = d._context(uid, gid, pid, 0, unique, None, unique > mask,
                             interrupted, ())
            a = ops.lookup(nodeid, name, ctx)
            t = a.entry_timeout
            ev, evn = (0, 0) if t <= 0 else _ts(t)
            t = a.attr_timeout
            av, avn = (0, 0) if t <= 0 else _ts(t)
            # attr_fields(a), inline (no call, no tuple to unpack: LOOKUP is hot)
            at = a.st_atime_ns
            mt = a.st_mtime_ns
            ct = a.st_ctime_ns
            out: Buffers
            out = [pack_entry(entry_size, 0, unique, a.st_ino, a.generation, ev, av, evn, avn,
                              a.st_ino, a.st_size, a.st_blocks, (at // _NS) & _U64,
                              (mt // _NS) & _U64, (ct // _NS) & _U64, at % _NS, mt % _NS,
                              ct % _NS, a.st_mode, a.st_nlink, a.st_uid, a.st_gid,
                              a.st_rdev & 0xFFFFFFFF, a.st_blksize, a.attr_flags)]
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        ino = a.st_ino
        if ino:
            nodes_lock.acquire()    # NodeTable.add of one nodeid ("with" costs 2x)
            try:
                have = counts.get(ino, 0)
                if have or first_lookup is None:
                    counts[ino] = have + 1
                    have = 1
            finally:
                nodes_lock.release()
            if not have:            # a journal's first lookup of this node
                assert first_lookup is not None
                first_lookup(ino)
            return out, [ino]
        return out, []

    def create(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if n <= 56:
            return None
        (size, op, unique, nodeid, uid, gid, pid, ext, _, flags, mode, umask,
         _o) = _IN_CREATE.unpack_from(buf)
        if size != n or op != _CREATE or ext or buf[n - 1]:
            return None
        name = bytes(buf[56:n - 1])
        if 0 in name:
            return None
        key = unique & mask
        inflight[key] = op
        try:
            ctx = d._context(uid, gid, pid, umask, unique, None, unique > mask,
                             interrupted, ())
            fi, a = ops.create(nodeid, name, mode, flags, ctx)
            ino = a.st_ino
            if ino == 0 or ino == FUSE_ROOT_ID:
                raise LocalProtocolError(f"CREATE returned nodeid {ino}")
            t = a.entry_timeout
            ev, evn = (0, 0) if t <= 0 else _ts(t)
            t = a.attr_timeout
            av, avn = (0, 0) if t <= 0 else _ts(t)
            fh, oflags, backing = open_out_fields(fi)
            at = a.st_atime_ns          # attr_fields(a), inline
            mt = a.st_mtime_ns
            ct = a.st_ctime_ns
            out: Buffers
            out = [_OUT_ENTRY_OPEN.pack(_OUT_ENTRY_OPEN.size, 0, unique, ino, a.generation, ev,
                                        av, evn, avn, ino, a.st_size, a.st_blocks,
                                        (at // _NS) & _U64, (mt // _NS) & _U64,
                                        (ct // _NS) & _U64, at % _NS, mt % _NS, ct % _NS,
                                        a.st_mode, a.st_nlink, a.st_uid, a.st_gid,
                                        a.st_rdev & 0xFFFFFFFF, a.st_blksize, a.attr_flags,
                                        fh, oflags, backing)]
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        if record is not None:
            nodes.add((ino,))       # journaled: buffered for the request's record
            return out, [ino]
        nodes_lock.acquire()
        try:
            counts[ino] = counts.get(ino, 0) + 1
        finally:
            nodes_lock.release()
        return out, [ino]

    def write(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if n < 80:
            return None
        (size, op, unique, _nodeid, uid, gid, pid, ext, _, fh, offset, count, wflags, _lo,
         _f, _p) = _IN_WRITE.unpack_from(buf)
        if size != n or op != _WRITE or ext or count != n - 80:
            return None
        key = unique & mask
        inflight[key] = op
        try:
            if wflags & _KILL_SUIDGID:
                ctx = d._context(uid, gid, pid, 0, unique, None, unique > mask,
                                 interrupted, ())
                ops.write_kill_suidgid(fh, ctx)
            done = ops.write(fh, offset, (buf if type(buf) is memoryview
                                          else memoryview(buf))[80:n])
            if done > count:
                raise LocalProtocolError(f"write returned {done} for {count} bytes")
            out: Buffers
            out = [_OUT_WRITE.pack(24, 0, unique, done, 0)]
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        return out, []

    def flush(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if n != 64:
            return None
        size, op, unique, _nodeid, _uid, _gid, _pid, ext, _, fh, _u, _p, owner = \
            _IN_FLUSH.unpack_from(buf)
        if size != n or op != _FLUSH or ext:
            return None
        key = unique & mask
        inflight[key] = op
        try:
            if d._flush_owner:
                ops.flush(fh, owner)
            else:
                ops.flush(fh)
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        return [pack_out(16, 0, unique)], []

    def release(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if n != 64:
            return None
        size, op, unique, _nodeid, _uid, _gid, _pid, ext, _, fh, _fl, rflags, _lo = \
            _IN_RELEASE.unpack_from(buf)
        if size != n or op != _RELEASE or ext or rflags & _FLOCK_UNLOCK:
            return None     # an flock to drop: the generic path
        key = unique & mask
        inflight[key] = op
        try:
            ops.release(fh)
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        return [pack_out(16, 0, unique)], []

    def unlink(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        size, op, unique, nodeid, uid, gid, pid, ext, _ = _IN.unpack_from(buf)
        if size != n or op != _UNLINK or ext or buf[n - 1]:
            return None
        name = bytes(buf[40:n - 1])
        if 0 in name:
            return None
        key = unique & mask
        inflight[key] = op
        try:
            ctx = d._context(uid, gid, pid, 0, unique, None, unique > mask,
                             interrupted, ())
            ops.unlink(nodeid, name, ctx)
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        return [pack_out(16, 0, unique)], []

    def getxattr(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if n <= 48:
            return None
        size, op, unique, nodeid, uid, gid, pid, ext, _, want, _p = \
            _IN_GETXATTR.unpack_from(buf)
        if size != n or op != _GETXATTR or ext or buf[n - 1]:
            return None
        name = bytes(buf[48:n - 1])
        if 0 in name:
            return None
        key = unique & mask
        inflight[key] = op
        try:
            ctx = d._context(uid, gid, pid, 0, unique, None, unique > mask,
                             interrupted, ())
            value = data(ops.getxattr(nodeid, name, ctx),
                          "getxattr")
            if want == 0:
                out: Buffers
                out = [_OUT_GETXATTR.pack(24, 0, unique, len(value), 0)]
            elif len(value) > want:
                raise FUSEError(errno.ERANGE)
            else:
                out = [pack_out(16 + len(value), 0, unique), value]
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        return out, []

    def getattr_(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if n != 56:
            return None
        size, op, unique, nodeid, uid, gid, pid, ext, _, _gf, _d, _fh = \
            _IN_GETATTR.unpack_from(buf)
        if size != n or op != _GETATTR or ext:
            return None
        key = unique & mask
        inflight[key] = op
        try:
            ctx = d._context(uid, gid, pid, 0, unique, None, unique > mask,
                             interrupted, ())
            a = ops.getattr(nodeid, ctx)
            t = a.attr_timeout
            if t > 0:
                whole = int(t)
                out: Buffers
                out = [_OUT_ATTR.pack(_OUT_ATTR.size, 0, unique, whole, int((t - whole) * _NS),
                                      0, *attr_fields(a))]
            else:
                out = [_OUT_ATTR.pack(_OUT_ATTR.size, 0, unique, 0, 0, 0, *attr_fields(a))]
        except FUSEError as exc:
            return error(buf, unique, exc)
        except Exception as exc:
            return failed(buf, exc)
        inflight.pop(key, None)     # Connection.retire, inline
        if interrupts:
            interrupts.discard(key)
        return out, []

    def forget(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if n != 48:
            return None
        size, op, _unique, nodeid, _uid, _gid, _pid, ext, _, nlookup = _IN_FORGET.unpack_from(buf)
        if size != n or op != _FORGET or ext:
            return None
        nodes_lock.acquire()        # NodeTable.forget, inline
        try:
            have = counts.get(nodeid, 0)
            if nlookup < have:
                counts[nodeid] = have - nlookup
                taken = nlookup
            else:
                counts.pop(nodeid, None)
                taken = have
        finally:
            nodes_lock.release()
        if taken:
            try:
                ops.forget([(nodeid, taken)])
            except Exception:
                log.exception("forget raised")
        return None, []

    made: dict[str, FastPath] = {
        "lookup": lookup, "forget": forget, "getattr": getattr_, "unlink": unlink,
        "create": create, "write": write, "flush": flush, "release": release,
        "getxattr": getxattr,
    }
    table: dict[int, FastPath] = {}
    for code, (serve, handler, sname, names) in _SERVED.items():
        row = session.table.get(code)
        if row is None or row.serve != serve or row.handler != handler \
                or row.request != sname or row.names != names:
            continue
        if sname is not None and session.sizes[sname] != CODECS[sname].size:
            continue
        if getattr(type(d), serve) is not getattr(base, serve):
            continue        # a subclass serves this opcode its own way
        if not d.implemented(handler) or handler in d.async_handlers:
            continue        # ENOSYS, or a task per request: the generic path
        if code == Opcode.WRITE and "write_kill_suidgid" in d.async_handlers:
            continue
        if code == Opcode.RELEASE and "flock" in d.async_handlers:
            continue
        if only is not None and code not in only:
            continue
        f = made[handler]
        if record is not None and code in recorded:
            f = _recording(f, record)
        table[code] = f
    return table


def _recording(f: FastPath, record: Callable[[Any, Buffers, list[int]], None]) -> FastPath:
    """``f`` for a journaled dispatcher: the answer is recorded before it is returned;
    a re-sent request (bit 63 of the unique: the top bit of byte 15) goes the
    generic way, where the journal answers one it already recorded."""
    def fast(buf: Any, n: int) -> tuple[Buffers | None, list[int]] | None:
        if buf[15] & 0x80:
            return None
        done = f(buf, n)
        if done is not None and done[0] is not None:
            record(buf, done[0], done[1])
        return done
    return fast
