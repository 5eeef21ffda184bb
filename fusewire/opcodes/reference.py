"""The protocol reference (docs/protocol-reference.md), generated from the opcode table.

``python -m fusewire.opcodes.reference > docs/protocol-reference.md`` writes
it; ``python -m fusewire.opcodes.reference --check docs/protocol-reference.md``
exits 1 with one line when the checked-in file differs from what the table
says (CI runs that, and a test does the same).  Nothing in the document is
written by hand: edit :mod:`fusewire.opcodes.table` and regenerate.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fusewire.opcodes.table import (
    DRAFT_OPS,
    NOTIFICATIONS,
    OPS,
    UNSUPPORTED,
    OpInfo,
    Reply,
    Trailing,
)

__all__ = ["SET_COLUMNS", "SHOWN_FIELDS", "main", "render"]

#: Boolean row fields shown in the "sets" column, with their short names.
SET_COLUMNS: dict[str, str] = {
    "create_type": "create",
    "opens": "opens",
    "releases": "releases",
    "namespace": "namespace",
    "parent_handle": "parent-handle",
    "background": "background",
    "sized_data": "sized-data",
    "ext": "ext",
    "calls_flock": "flock",
}

_HEAD = """\
# fusewire protocol reference

Generated from `fusewire/opcodes/table.py` by
`python -m fusewire.opcodes.reference > docs/protocol-reference.md`; do not
edit by hand (a test fails when this file is stale).

Columns: the opcode and its number; the fixed request struct, how many
NUL-terminated names follow it and what trails them; the reply (a struct, or
a variable kind); the `Operations` handler (`-`: the library answers); the
protocol minor that introduced it; whether executing it twice is harmless
(idempotent: recovery journals the replies of the others); whether the kernel
caches ENOSYS for it (an unimplemented handler then costs one round trip);
the server function the dispatcher binds to it (`Dispatcher.<serve>`; `-`:
answered ENOSYS).

Sets: **create** (returns the entry of a new name; nodeid 0 or 1 is a protocol
error), **opens** (the reply carries a file handle), **releases** (gives a file
handle back), **namespace** (adds, removes or renames directory entries),
**parent-handle** (a draft handle profile may name the parent directory by
handle), **background** (sent without the caller's credentials: uid, gid and
pid are 0), **sized-data** (the struct's `size` counts the trailing data),
**ext** (may carry request extensions), **flock** (the server function also
calls `Operations.flock`).
"""


def _reply(row: OpInfo) -> str:
    if row.reply is Reply.STRUCT:
        return f"`{row.reply_struct}`"
    return str(row.reply.value)


def _request(row: OpInfo) -> str:
    parts = [f"`{row.request}`"] if row.request else []
    if row.names:
        parts.append(f"+ {row.names} name{'s' if row.names > 1 else ''}")
    if row.trailing is not Trailing.NONE:
        parts.append(f"+ {row.trailing.value}")
    return " ".join(parts).removeprefix("+ ") or "-"


def _sets(row: OpInfo) -> str:
    return ", ".join(short for field, short in SET_COLUMNS.items() if getattr(row, field))


def _serve(row: OpInfo) -> str:
    return f"`{row.serve}`" if row.serve else "-"


def _yes(flag: bool) -> str:
    return "yes" if flag else ""


def _table(rows: Sequence[OpInfo]) -> list[str]:
    out = ["| opcode | # | request | reply | handler | since | idempotent | ENOSYS cached "
           "| server | sets |",
           "|---|---:|---|---|---|---:|---|---|---|---|"]
    for row in rows:
        out.append(f"| {row.name} | {row.opcode} | {_request(row)} | {_reply(row)} "
                   f"| {row.handler or '-'} | 7.{row.since} | {_yes(row.idempotent)} "
                   f"| {_yes(row.enosys_cached)} | {_serve(row)} | {_sets(row)} |")
    return out


def _notes(rows: Sequence[OpInfo]) -> list[str]:
    return [f"- **{row.name}**: {row.doc}" for row in rows if row.doc]


def render() -> str:
    """The whole reference document, as Markdown."""
    rows = sorted(OPS.values(), key=lambda r: r.opcode)
    lines = [_HEAD, "## Opcodes", "", *_table(rows), "", "Notes:", "", *_notes(rows), ""]
    lines += ["## Opcode numbers without a row", ""]
    lines += [f"- {code}: {why}" for code, why in sorted(UNSUPPORTED.items())]
    lines += ["", "## Notifications (server to kernel)", "",
              "| code | # | payload | trailing | since | Server method |",
              "|---|---:|---|---|---:|---|"]
    for n in sorted(NOTIFICATIONS.values(), key=lambda n: n.code):
        payload = f"`{n.payload}`" if n.payload else "-"
        lines.append(f"| {n.code.name} | {int(n.code)} | {payload} | {n.trailing} "
                     f"| 7.{n.since} | {n.method} |")
    lines += ["", "## Draft profiles (LOOKUP_HANDLE)", "",
              "Rows that exist only in a session that negotiated the profile (see "
              "docs/draft-handles.md); in profile rfc-v2 the parent-handle opcodes but "
              "LOOKUP also carry the parent's handle as a trailing in-arg.", ""]
    for profile, table in sorted(DRAFT_OPS.items()):
        drows = sorted(table.values(), key=lambda r: r.opcode)
        lines += [f"### Profile {profile}", "", *_table(drows), "", *_notes(drows), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


#: OpInfo fields the reference shows (a test checks that this is all of them).
SHOWN_FIELDS = frozenset({"opcode", "name", "request", "names", "trailing", "reply",
                          "reply_struct", "handler", "serve", "since", "idempotent",
                          "enosys_cached", "draft", "doc", *SET_COLUMNS})


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference to stdout, or ``--check FILE`` that FILE is current."""
    parser = argparse.ArgumentParser(prog="python -m fusewire.opcodes.reference",
                                     description="Generate docs/protocol-reference.md.")
    parser.add_argument("--check", metavar="FILE",
                        help="exit 1 if FILE differs from the generated reference")
    args = parser.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.check, encoding="utf-8") as f:
            current = f.read()
    except OSError as e:
        sys.stderr.write(f"protocol reference: cannot read {args.check}: {e.strerror}\n")
        return 1
    if current != text:
        sys.stderr.write(f"protocol reference: {args.check} is stale; regenerate it with "
                         f"python -m fusewire.opcodes.reference > {args.check}\n")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
