"""``fusewire dump`` and ``fusewire replay``: CLI front ends of the capture tools."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``dump`` and ``replay`` subcommands to the ``fusewire`` parser."""
    d = subparsers.add_parser(
        "dump", help="print a capture, one line per message",
        description="Render a --capture file strace-style: time offset, direction, opcode, "
                    "unique, nodeid, decoded arguments, result and latency.")
    d.add_argument("file", help="capture file written by mount --capture")
    d.add_argument("--json", action="store_true", help="one JSON object per line")
    d.add_argument("--opcode", metavar="NAME[,NAME]", action="append", default=[],
                   help="only these opcodes / notification names (repeatable)")
    d.add_argument("--nodeid", type=int, help="only messages that involve this nodeid")
    d.set_defaults(func=_cmd_dump)
    r = subparsers.add_parser(
        "replay", help="replay a capture into a fresh filesystem and diff the replies",
        description="Feed a capture's requests to a fresh filesystem through a fresh "
                    "Connection and Dispatcher; print replies that differ from the recorded "
                    "ones (after normalising timestamps, handles, nodeids, generation, "
                    "statfs counts).  Exits 1 if any differ.")
    r.add_argument("file", help="capture file written by mount --capture")
    r.add_argument("--ops", default="memfs", metavar="MODULE:CLASS",
                   help="filesystem to replay into: memfs, passthrough or MODULE:CLASS "
                        "(default memfs)")
    r.add_argument("--source", metavar="DIR",
                   help="with --ops passthrough: the directory to replay into (the replay "
                        "writes there: give it an empty one)")
    r.add_argument("-o", dest="options", action="append", default=[],
                   help="filesystem options as at mount time (entry_timeout=...)")
    r.add_argument("--max-diffs", type=int, default=50, help="print at most this many")
    r.set_defaults(func=_cmd_replay)


def _fail(cmd: str, exc: Exception) -> int:
    sys.stderr.write(f"fusewire {cmd}: {exc}\n")
    return 2


def _cmd_dump(args: argparse.Namespace) -> int:
    from fusewire.testing.capture import CaptureError, CaptureReader
    from fusewire.testing.dump import event_matches, iter_events, render_json, render_line

    try:
        reader = CaptureReader(args.file)
    except (OSError, CaptureError) as exc:
        return _fail("dump", exc)
    names: set[str] | None = None
    if args.opcode:
        names = {n.strip().upper() for spec in args.opcode for n in spec.split(",") if n.strip()}
    render = render_json if args.json else render_line
    out = sys.stdout
    try:
        for ev in iter_events(reader):
            if event_matches(ev, names, args.nodeid):
                out.write(render(ev) + "\n")
    except BrokenPipeError:  # pragma: no cover - `fusewire dump | head`
        return 0
    if reader.dropped_bytes:
        sys.stderr.write(f"fusewire dump: dropped {reader.dropped_bytes} trailing bytes "
                         f"({reader.drop_reason})\n")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from fusewire.server import mount as _mount
    from fusewire.testing.capture import CaptureError
    from fusewire.testing.replay import ops_factory_from_spec, replay

    if args.ops == "passthrough" and not args.source:
        return _fail("replay", ValueError("--ops passthrough needs --source DIR (an empty "
                                          "directory the replay may write into)"))
    if args.source and args.ops != "passthrough":
        return _fail("replay", ValueError("--source is for --ops passthrough"))
    source = os.path.abspath(args.source) if args.source else None
    try:
        extra = dict(_mount.parse_options(args.options).extra) if args.options else {}
        factory = ops_factory_from_spec(args.ops, extra, source)
        factory()  # a mistake (module, class, source, options) shows here, in one line
        report = replay(args.file, factory)
    except (OSError, CaptureError, ValueError) as exc:  # UsageError is a ValueError
        return _fail("replay", exc)
    print(report.summary())
    for diff in report.differences[:args.max_diffs]:
        print(diff.render())
    if len(report.differences) > args.max_diffs:
        print(f"... {len(report.differences) - args.max_diffs} more")
    return 0 if report.ok else 1
