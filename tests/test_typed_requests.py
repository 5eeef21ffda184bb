"""Requests are typed at the core boundary, and the types agree with the table.

``Request[ArgT, DataT]`` carries the row's record and trailing data type.
Every server function declares the ones its row says (checked here against
the opcode table, draft profiles included); ``mypy --strict fusewire`` then
checks every field a server function reads.  The parser produces exactly
those types (checked with hypothesis over every opcode).
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusewire.connection import Pairs, Request, parse_request
from fusewire.opcodes.table import OPS, OpInfo, Trailing, ops_for_profile
from fusewire.server.dispatch import Dispatcher
from fusewire.structs.codec import CODECS
from fusewire.testing import strategies as fst
from fusewire.wire import make_session

#: what each trailing kind parses to
DATA_TYPES: dict[Trailing, Any] = {Trailing.DATA: memoryview, Trailing.FORGETS: Pairs,
                                   Trailing.MAPPINGS: Pairs, Trailing.NONE: bytes,
                                   Trailing.HANDLE: bytes}


def _rows() -> list[tuple[str, OpInfo]]:
    seen: dict[tuple[str, int], OpInfo] = {}
    for profile in (None, "rfc-v2", "rfc-v3", "fusewire"):
        for row in ops_for_profile(profile).values():
            if row.serve is not None:
                seen[(row.serve, row.opcode)] = row
    return [(f"{serve}-{row.name}", row) for (serve, _), row in sorted(seen.items())]


ROWS = _rows()


def _members(t: Any) -> set[Any]:
    if isinstance(t, types.UnionType) or get_origin(t) is Union:
        return set(get_args(t))
    return {t}


def _record(row: OpInfo) -> Any:
    return CODECS[row.request].record if row.request is not None else type(None)


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_server_function_declares_its_rows_types(row: OpInfo) -> None:
    fn = getattr(Dispatcher, row.serve or "")
    req = get_type_hints(fn)["req"]
    assert get_origin(req) is Request, f"{row.serve}: req is {req}, not Request[..., ...]"
    arg_t, data_t = get_args(req)
    assert _record(row) in _members(arg_t), f"{row.serve} ({row.name}): arg {arg_t}"
    assert DATA_TYPES[row.trailing] in _members(data_t), f"{row.serve} ({row.name}): data {data_t}"


def test_generic_code_takes_any_request() -> None:
    hints = get_type_hints(Dispatcher.handle)
    assert get_args(hints["req"]) == (Any, Any)
    assert get_args(get_type_hints(parse_request)["return"]) == (Any, Any)


PARSED = sorted(op for op, row in OPS.items() if op in fst._ASK_REPLY_OPS)


@pytest.mark.parametrize("opcode", PARSED, ids=[OPS[op].name for op in PARSED])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parser_produces_the_declared_types(opcode: int, data: st.DataObject) -> None:
    minor, flags, msg = data.draw(fst.requests(opcode))
    req = parse_request(msg, make_session(minor, flags))
    row = OPS[opcode]
    assert isinstance(req.arg, _record(row))
    want = DATA_TYPES[row.trailing]
    if want is Pairs:
        assert isinstance(req.data, tuple)
        assert all(isinstance(p, tuple) and len(p) == 2 for p in req.data)
    else:
        assert isinstance(req.data, want)
