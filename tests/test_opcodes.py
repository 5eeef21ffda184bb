"""The OPS table is complete, consistent, and names only real Operations methods."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusewire import Operations
from fusewire.opcodes import (
    DRAFT_OPS,
    NOTIFICATIONS,
    OPS,
    UNSUPPORTED,
    InitFlag,
    NotifyCode,
    Opcode,
    OpInfo,
    Reply,
    Trailing,
    ops_for_profile,
)
from fusewire.server.dispatch import Dispatcher
from fusewire.structs.schemas import FIXED


def test_every_opcode_1_to_53_has_a_row_or_a_documented_gap() -> None:
    for code in range(1, 54):
        assert (code in OPS) != (code in UNSUPPORTED), code
    assert Opcode.CUSE_INIT in OPS
    assert set(OPS) == {int(o) for o in Opcode}


def test_every_notification_has_a_row() -> None:
    assert set(NOTIFICATIONS) == {int(c) for c in NotifyCode} == set(range(1, 10))


@pytest.mark.parametrize("row", [*OPS.values(), *[r for p in DRAFT_OPS.values()
                                                   for r in p.values()]],
                         ids=lambda r: r.name)
def test_rows_are_consistent(row) -> None:  # type: ignore[no-untyped-def]
    if row.handler is not None:
        assert hasattr(Operations, row.handler), f"{row.name}: no Operations.{row.handler}"
    if row.request is not None:
        assert row.request in FIXED
    if row.reply is Reply.STRUCT:
        assert row.reply_struct in FIXED
    if row.trailing in (Trailing.FORGETS, Trailing.MAPPINGS):
        assert row.request in ("batch_forget_in", "removemapping_in")
    assert 0 <= row.since <= 46
    assert (row.draft is not None) == (row.opcode >= 54 and row.opcode != Opcode.CUSE_INIT)


def test_no_reply_opcodes() -> None:
    assert {r.name for r in OPS.values() if r.no_reply} == {
        "FORGET", "BATCH_FORGET", "NOTIFY_REPLY"}


def _all_rows() -> list[OpInfo]:
    rows = list(OPS.values())
    for profile in DRAFT_OPS:
        rows += ops_for_profile(profile).values()
    return rows


def test_dispatcher_serves_every_row_with_a_handler() -> None:
    # the row names the server function; the dispatcher binds exactly that
    for row in _all_rows():
        if row.handler is not None:
            assert row.serve is not None, row.name
        if row.serve is not None:
            assert callable(getattr(Dispatcher, row.serve, None)), (row.name, row.serve)


def test_every_server_function_is_named_by_a_row() -> None:
    # no server function is bound by building its name from an opcode's name
    named = {row.serve for row in _all_rows() if row.serve is not None}
    defined = {name for name in dir(Dispatcher) if name.startswith("_op_")}
    assert defined == named
    server = Path(__file__).parent.parent / "fusewire" / "server"
    for module in ("dispatch.py", "draft_serve.py"):
        src = (server / module).read_text()
        assert '"_op_' not in src and "f\"_op_" not in src, module


def test_calls_flock_matches_the_kernel() -> None:
    # FUSE_LK_FLOCK on SETLK/SETLKW; FUSE_RELEASE_FLOCK_UNLOCK on RELEASE
    assert _names("calls_flock") == {"SETLK", "SETLKW", "RELEASE"}


def test_draft_rows_only_in_profiles() -> None:
    assert ops_for_profile(None) is OPS
    v2 = ops_for_profile("rfc-v2")
    # RFC v2: LOOKUP_HANDLE (54) replaces LOOKUP; create-type requests carry the
    # parent's handle after the names
    assert v2[54].name == "LOOKUP_HANDLE" and v2[54].trailing is Trailing.HANDLE
    assert v2[Opcode.MKNOD].trailing is Trailing.HANDLE
    assert v2[Opcode.LOOKUP].trailing is Trailing.NONE and 55 not in v2
    v3 = ops_for_profile("rfc-v3")
    assert v3[54].name == "COMPOUND" and 55 in v3 and 56 in v3 and 57 not in v3
    fw = ops_for_profile("fusewire")
    assert 55 in fw and 56 in fw and 57 in fw and 54 not in fw


def test_init_flags_cover_64_bit_space_through_745() -> None:
    assert InitFlag.REQUEST_TIMEOUT == 1 << 42
    assert InitFlag.INIT_EXT == 1 << 30 and InitFlag.SECURITY_CTX == 1 << 32
    bits = sorted(f.value.bit_length() - 1 for f in InitFlag)
    assert bits == list(range(44))


# --- opcode sets are row fields, never re-declared --------------------------------------

#: The boolean set fields of OpInfo; each one is a set other modules used to spell out.
SET_FIELDS = ("enosys_cached", "idempotent", "ext", "create_type", "opens", "releases",
              "namespace", "parent_handle", "background", "sized_data", "calls_flock")


def test_every_boolean_field_is_a_known_set() -> None:
    import dataclasses

    from fusewire.opcodes import OpInfo

    bools = {f.name for f in dataclasses.fields(OpInfo) if f.type in ("bool", bool)}
    assert bools == set(SET_FIELDS), "a new boolean row field: add it to SET_FIELDS " \
        "and to the protocol reference"


def _names(field: str) -> set[str]:
    from fusewire.opcodes import ops_where

    return {OPS[op].name for op in ops_where(field)}


def test_set_fields_match_the_kernel() -> None:
    # The kernel's own lists (fs/fuse/dir.c, file.c, dev.c), stated once here as
    # the specification the rows are checked against.
    assert _names("create_type") == {"MKNOD", "MKDIR", "SYMLINK", "LINK", "CREATE", "TMPFILE"}
    assert _names("opens") == {"OPEN", "OPENDIR", "CREATE", "TMPFILE"}
    assert _names("releases") == {"RELEASE", "RELEASEDIR"}
    assert _names("namespace") == {"MKNOD", "MKDIR", "SYMLINK", "LINK", "CREATE", "UNLINK",
                                   "RMDIR", "RENAME", "RENAME2"}
    assert _names("parent_handle") == _names("create_type") | {"LOOKUP"}
    assert _names("background") == {"FORGET", "BATCH_FORGET", "RELEASE", "RELEASEDIR",
                                     "INTERRUPT"}
    assert _names("sized_data") == {"WRITE", "SETXATTR"}
    assert {r.name for r in OPS.values() if not r.needs_reply} == {
        "FORGET", "BATCH_FORGET", "NOTIFY_REPLY", "INTERRUPT"}


@pytest.mark.parametrize("row", [*OPS.values(), *[r for p in DRAFT_OPS.values()
                                                   for r in p.values()]],
                         ids=lambda r: f"{r.draft or 'upstream'}-{r.name}")
def test_set_fields_are_consistent_with_the_layout(row) -> None:  # type: ignore[no-untyped-def]
    if row.create_type:
        assert row.reply in (Reply.ENTRY, Reply.ENTRY_OPEN) and row.names >= 1
        assert not row.idempotent
    if row.opens:
        assert row.reply is Reply.ENTRY_OPEN or row.reply_struct == "open_out"
    assert (row.reply is Reply.ENTRY_OPEN) <= (row.create_type and row.opens)
    if row.releases:
        assert row.request == "release_in"
    if row.namespace:
        assert not row.idempotent and row.names >= 1
    if row.sized_data:
        assert row.trailing is Trailing.DATA
    if row.no_reply:
        assert row.background or row.handler is None


def _opcode_literals() -> list[tuple[str, int, frozenset[str]]]:
    """Every tuple/list/set literal naming two or more ``Opcode.X`` in fusewire."""
    import ast
    from pathlib import Path

    import fusewire

    root = Path(fusewire.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel == "fusewire/opcodes/table.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                members = frozenset(
                    e.attr for e in node.elts
                    if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name)
                    and e.value.id == "Opcode")
                if len(members) >= 2:
                    found.append((rel, node.lineno, members))
    return found


#: Opcode sets that are not protocol facts but one module's own routing, with the reason.
OWN_SETS: dict[tuple[str, frozenset[str]], str] = {
    ("fusewire/server/dispatch.py", frozenset({"SETLK", "SETLKW", "RELEASE"})):
        "the dispatcher's handlers that also call Operations.flock",
}


def test_no_opcode_set_is_redeclared() -> None:
    field_sets = {f: frozenset(_names(f)) for f in SET_FIELDS}
    bad = []
    for rel, line, members in _opcode_literals():
        if (rel, members) in OWN_SETS:
            continue
        same = [f for f, names in field_sets.items() if names == members]
        if len(members) >= 3 or same:
            hint = f" (use ops_where({same[0]!r}))" if same else " (make it a row field)"
            bad.append(f"{rel}:{line}: {sorted(members)}{hint}")
    assert not bad, "opcode sets spelled out outside the table:\n" + "\n".join(bad)


def test_the_redeclaration_check_sees_a_set() -> None:
    import ast

    tree = ast.parse("X = (Opcode.RELEASE, Opcode.RELEASEDIR)")
    node = tree.body[0].value  # type: ignore[attr-defined]
    assert {e.attr for e in node.elts} == _names("releases")
    assert _opcode_literals(), "the scanner finds the two-opcode comparisons that remain"


# --- the protocol reference is generated from the table --------------------------------


def test_protocol_reference_is_current() -> None:
    from pathlib import Path

    from fusewire.opcodes.reference import render

    path = Path(__file__).parent.parent / "docs" / "protocol-reference.md"
    assert path.read_text() == render(), (
        "docs/protocol-reference.md is stale: python -m fusewire.opcodes.reference "
        "> docs/protocol-reference.md")


def test_protocol_reference_shows_every_field_and_row() -> None:
    import dataclasses

    from fusewire.opcodes import OpInfo
    from fusewire.opcodes.reference import SET_COLUMNS, SHOWN_FIELDS, render

    assert {f.name for f in dataclasses.fields(OpInfo)} == SHOWN_FIELDS
    assert set(SET_FIELDS) - {"enosys_cached", "idempotent"} == set(SET_COLUMNS)
    text = render()
    for row in OPS.values():
        assert f"| {row.name} | {row.opcode} |" in text


def test_protocol_reference_check_command(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fusewire.opcodes.reference import main, render

    good = tmp_path / "ref.md"
    good.write_text(render())
    assert main(["--check", str(good)]) == 0
    good.write_text(render().replace("LOOKUP", "LOOKOUT", 1))
    assert main(["--check", str(good)]) == 1
    err = capsys.readouterr().err
    assert "stale" in err and err.count("\n") == 1


def test_the_connection_retires_requests_itself() -> None:
    # the dispatcher answers through Connection.reply/reply_error (which retire the
    # request) or, on its fused fast paths, Connection.retire: never a private member
    src = (Path(__file__).parent.parent / "fusewire" / "server" / "dispatch.py").read_text()
    assert "conn._" not in src
