"""Replay a capture into a fresh filesystem and diff every reply against the recording.

The session is restored from the capture's INIT exchange
(:meth:`~fusewire.testing.capture.CaptureReader.session`) with
:meth:`Connection.restore <fusewire.connection.Connection.restore>`, so the
INIT request itself is not fed again.  Every later request that the capture
shows was answered is fed, in capture order, to a
:class:`~fusewire.server.dispatch.Dispatcher` over a fresh filesystem;
requests that never got a reply (interrupted, or in flight when the server
died), INTERRUPT and NOTIFY_REPLY are skipped; FORGET and BATCH_FORGET (which
never get one) are fed.

Values that legitimately differ between two runs are normalised
(:class:`Normaliser`): timestamps are ignored, as are ``generation``,
``blocks`` and statfs free counts; nodeids, inode numbers and file handles
are mapped through bijections learned as the replay proceeds (the first time
recorded nodeid X meets replayed nodeid Y, X means Y from then on; a later
contradiction is a difference).  Requests are *rewritten* through those maps
before being fed: the header nodeid, the struct fields holding nodeids
(``newdir``, ``oldnodeid``, ``nodeid_out``), fh fields (``fh``, ``fh_in``,
``fh_out``) and BATCH_FORGET's nodeids, re-encoded with the struct codecs.

Use :func:`assert_replay_matches` for one-line regression tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fusewire.connection import Connection, Request, Session, parse_request
from fusewire.errors import RemoteProtocolError
from fusewire.opcodes.flags import FUSE_ROOT_ID, Opcode
from fusewire.operations import Operations
from fusewire.server.dispatch import Dispatcher
from fusewire.structs.codec import CODECS
from fusewire.structs.layout import encode_sized
from fusewire.testing.capture import CaptureReader, Kind, Record
from fusewire.testing.dump import decode_reply

__all__ = [
    "DEFAULT_NORMALISER",
    "Difference",
    "Normaliser",
    "ReplayReport",
    "assert_replay_matches",
    "ops_factory_from_spec",
    "replay",
]

_NODEID_FIELDS = ("newdir", "oldnodeid", "nodeid_out")
_FH_FIELDS = ("fh", "fh_in", "fh_out")
_U64 = CODECS["forget_one"].head(1)  # forget_one.nodeid; also in_header.nodeid at 16


@dataclass(frozen=True)
class Normaliser:
    """Which reply fields are compared how (by field name, at any depth).

    ``ignore``: never compared.  ``nodeid_fields``/``ino_fields``: mapped
    through a bijection (recorded -> replayed); a contradiction is a
    difference.  ``fh_fields``: handle values, mapped (the latest pairing
    wins, since handles are reused after release).
    """

    ignore: frozenset[str] = frozenset({
        # timestamps: fuse_attr, statx (sx_time dicts), setattr echoes
        "atime", "mtime", "ctime", "btime", "atimensec", "mtimensec", "ctimensec",
        "generation", "blocks",
        # statfs free counts
        "bfree", "bavail", "ffree",
    })
    nodeid_fields: frozenset[str] = frozenset({"nodeid"})
    ino_fields: frozenset[str] = frozenset({"ino"})
    fh_fields: frozenset[str] = frozenset({"fh"})


DEFAULT_NORMALISER = Normaliser()


@dataclass(frozen=True)
class Difference:
    """One reply field that differs (after normalising)."""

    unique: int
    opcode: str
    path: str
    expected: Any
    actual: Any
    note: str = ""

    def render(self) -> str:
        """``#0x1a LOOKUP entry.attr.size: expected 12, got 13``."""
        note = f" ({self.note})" if self.note else ""
        return (f"#{self.unique:#x} {self.opcode} {self.path or '<reply>'}: "
                f"expected {_short(self.expected)}, got {_short(self.actual)}{note}")


def _short(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return f"{len(v)} bytes {bytes(v[:16])!r}{'...' if len(v) > 16 else ''}"
    text = repr(v)
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass
class ReplayReport:
    """What :func:`replay` found."""

    path: str
    differences: list[Difference] = field(default_factory=list)
    replayed: int = 0
    compared: int = 0
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # unique, opcode, why
    dropped_bytes: int = 0
    nodeids: dict[int, int] = field(default_factory=dict)
    handles: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every compared reply matched."""
        return not self.differences

    def summary(self) -> str:
        """One line: counts."""
        torn = f", {self.dropped_bytes} torn bytes ignored" if self.dropped_bytes else ""
        return (f"{self.path}: replayed {self.replayed} requests, compared {self.compared} "
                f"replies, skipped {len(self.skipped)}{torn}: "
                f"{len(self.differences)} differences")


class _Maps:
    def __init__(self, norm: Normaliser) -> None:
        self.norm = norm
        self.node: dict[int, int] = {FUSE_ROOT_ID: FUSE_ROOT_ID, 0: 0}
        self.node_rev: dict[int, int] = {FUSE_ROOT_ID: FUSE_ROOT_ID, 0: 0}
        self.ino: dict[int, int] = {}
        self.ino_rev: dict[int, int] = {}
        self.fh: dict[int, int] = {}

    @staticmethod
    def _pair(fwd: dict[int, int], rev: dict[int, int], x: int, y: int) -> str:
        have = fwd.get(x)
        if have is not None:
            return "" if have == y else f"recorded {x} was replayed as {have} before"
        back = rev.get(y)
        if back is not None:
            return f"replayed {y} already stands for recorded {back}"
        fwd[x] = y
        rev[y] = x
        return ""

    def compare(self, exp: Any, act: Any, path: str, out: list[tuple[str, Any, Any, str]]
                ) -> None:
        norm = self.norm
        if isinstance(exp, dict) and isinstance(act, dict):
            for key in dict.fromkeys([*exp, *act]):
                sub = f"{path}.{key}" if path else str(key)
                if key in norm.ignore:
                    continue
                if key not in exp or key not in act:
                    out.append((sub, exp.get(key), act.get(key), "missing field"))
                    continue
                e, a = exp[key], act[key]
                if isinstance(e, int) and isinstance(a, int):
                    if key in norm.nodeid_fields:
                        why = self._pair(self.node, self.node_rev, e, a)
                        if why:
                            out.append((sub, e, a, why))
                        continue
                    if key in norm.ino_fields:
                        why = self._pair(self.ino, self.ino_rev, e, a)
                        if why:
                            out.append((sub, e, a, why))
                        continue
                    if key in norm.fh_fields:
                        self.fh[e] = a
                        continue
                self.compare(e, a, sub, out)
            return
        if isinstance(exp, list) and isinstance(act, list):
            if len(exp) != len(act):
                out.append((path, exp, act, f"{len(exp)} items recorded, {len(act)} replayed"))
                return
            for i, (e, a) in enumerate(zip(exp, act, strict=True)):
                self.compare(e, a, f"{path}[{i}]", out)
            return
        if exp != act:
            out.append((path, exp, act, ""))


def rewrite_request(payload: bytes, req: Request[Any, Any], session: Session,
                    node: Mapping[int, int], fh: Mapping[int, int]) -> bytes:
    """The request bytes with recorded nodeids and handles replaced by replayed ones."""
    buf = bytearray(payload)
    nid = req.nodeid
    if nid in node and node[nid] != nid:
        _U64.pack_into(buf, 16, node[nid])
    rs = req.info.request
    arg = req.arg
    if arg is not None and rs is not None and req.opcode != Opcode.INIT:
        changes: dict[str, int] = {}
        for f in _NODEID_FIELDS:
            v = getattr(arg, f, None)
            if isinstance(v, int) and v in node and node[v] != v:
                changes[f] = node[v]
        for f in _FH_FIELDS:
            v = getattr(arg, f, None)
            if isinstance(v, int) and v in fh and fh[v] != v:
                changes[f] = fh[v]
        size = session.sizes[rs]
        if changes:
            buf[40:40 + size] = encode_sized(CODECS[rs], arg._replace(**changes), size)
        if req.opcode == Opcode.BATCH_FORGET and isinstance(req.data, tuple):
            base = 40 + size
            for i, (n, _count) in enumerate(req.data):
                if n in node:
                    _U64.pack_into(buf, base + 16 * i, node[n])
    return bytes(buf)


def replay(capture_path: str | os.PathLike[str], ops_factory: Callable[[], Operations], *,
           normalise: Normaliser = DEFAULT_NORMALISER) -> ReplayReport:
    """Replay ``capture_path`` into ``ops_factory()`` and diff the replies."""
    reader = CaptureReader(capture_path)
    session = reader.session()
    report = ReplayReport(os.fspath(capture_path), dropped_bytes=reader.dropped_bytes)
    records = reader.records
    # unique -> the first reply after its request (uniques are not reused in a capture)
    replies: dict[int, Record] = {}
    asked: set[int] = set()
    for rec in records:
        if rec.kind == Kind.REQUEST:
            asked.add(rec.unique)
        elif rec.kind == Kind.REPLY and rec.unique in asked and rec.unique not in replies:
            replies[rec.unique] = rec
    conn = Connection.restore({"session": session.to_dict()})
    ops = ops_factory()
    dispatcher = Dispatcher(ops, conn)
    ops.init()
    maps = _Maps(normalise)
    first = True
    for rec in records:
        if rec.kind != Kind.REQUEST:
            continue
        if first and rec.opcode == Opcode.INIT:
            first = False
            continue
        first = False
        try:
            req = parse_request(rec.payload, session)
        except RemoteProtocolError as exc:
            report.skipped.append((rec.unique, f"OPCODE_{rec.opcode}", f"malformed: {exc}"))
            continue
        name = req.info.name
        # INIT, and what the library handles without a reply (INTERRUPT, NOTIFY_REPLY)
        if req.opcode == Opcode.INIT or (req.info.handler is None and not req.info.needs_reply):
            report.skipped.append((req.unique, name, "not replayable"))
            continue
        recorded = replies.get(rec.unique)
        if recorded is None and not req.info.no_reply:
            report.skipped.append((req.unique, name, "never answered"))
            continue
        msg = rewrite_request(rec.payload, req, session, maps.node, maps.fh)
        bufs, _lookups = dispatcher.dispatch(msg)
        report.replayed += 1
        if recorded is None:
            if bufs is not None:
                report.differences.append(Difference(req.unique, name, "", None,
                                                     b"".join(bufs), "unexpected reply"))
            continue
        if bufs is None:
            report.differences.append(Difference(req.unique, name, "", recorded.payload, None,
                                                 "no reply"))
            continue
        actual = b"".join(bytes(b) for b in bufs)
        report.compared += 1
        e_err, e_fields, _ = decode_reply(req, recorded.payload, session)
        a_err, a_fields, _ = decode_reply(req, actual, session)
        if e_err != a_err:
            report.differences.append(Difference(req.unique, name, "error", _ename(e_err),
                                                 _ename(a_err)))
            continue
        found: list[tuple[str, Any, Any, str]] = []
        maps.compare(e_fields, a_fields, "", found)
        for path, e, a, note in found:
            report.differences.append(Difference(req.unique, name, path, e, a, note))
    report.nodeids = dict(maps.node)
    report.handles = dict(maps.fh)
    return report


def _ename(err: int) -> str:
    import errno

    return "OK" if err == 0 else errno.errorcode.get(err, str(err))


def assert_replay_matches(capture_path: str | os.PathLike[str],
                          ops_factory: Callable[[], Operations], *,
                          normalise: Normaliser = DEFAULT_NORMALISER,
                          show: int = 20) -> ReplayReport:
    """Replay and raise :class:`AssertionError` listing the differences, if any."""
    report = replay(capture_path, ops_factory, normalise=normalise)
    if not report.ok:
        lines = [report.summary(), *(d.render() for d in report.differences[:show])]
        if len(report.differences) > show:
            lines.append(f"... {len(report.differences) - show} more")
        raise AssertionError("\n".join(lines))
    return report


def ops_factory_from_spec(spec: str, extra: Mapping[str, str] | None = None,
                          source: str | None = None) -> Callable[[], Operations]:
    """``memfs``, ``passthrough`` (over ``source``) or ``MODULE:CLASS`` (with ``-o``
    style extras) as a factory."""
    from fusewire.examples import build_ops

    def factory() -> Operations:
        return build_ops(spec, source, dict(extra or {}))

    return factory
