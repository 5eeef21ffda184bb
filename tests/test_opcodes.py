"""The OPS table is complete, consistent, and names only real Operations methods."""

from __future__ import annotations

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


def test_dispatcher_serves_every_row_with_a_handler() -> None:
    served = {name.removeprefix("_op_").upper() for name in dir(Dispatcher)
              if name.startswith("_op_")}
    for row in OPS.values():
        if row.handler is not None:
            assert row.name in served, row.name


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
