"""Walk construct schemas to derive struct formats and the records module.

Pure functions over :mod:`fusewire.structs.schemas`; :mod:`.codec` uses them
to build the fast codecs and ``python -m fusewire.structs.codec`` uses
:func:`render_records_module` to regenerate ``records.py``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from construct import Array, Bytes, Construct, FormatField, Renamed, Struct

from fusewire.structs.schemas import DRAFT, FIXED

__all__ = ["FieldSpec", "class_name", "py_name", "render_records_module"]


def py_name(field: str) -> str:
    """Python name of a kernel field: leading underscores dropped (``__spare2`` -> ``spare2``),
    because NamedTuple fields may not start with one."""
    return field.lstrip("_")


@dataclass(frozen=True)
class FieldSpec:
    """One field of a fixed struct as the deriver sees it."""

    name: str
    kind: str  # "int", "array", "bytes" or "struct"
    fmt: str  # struct format characters of this field (flattened)
    count: int  # array length, bytes length, 1 for int, n-fields for struct
    sub: str | None  # schema name of a nested struct


def class_name(schema_name: str) -> str:
    """``entry_out`` -> ``EntryOut``."""
    return "".join(part.capitalize() for part in schema_name.split("_"))


_BY_ID = {id(schema): name for name, schema in FIXED.items()}


def _fields(schema: Construct) -> list[FieldSpec]:
    assert isinstance(schema, Struct)
    out: list[FieldSpec] = []
    for sc in schema.subcons:
        if not isinstance(sc, Renamed):
            raise TypeError(f"anonymous field in schema: {sc!r}")
        inner = sc.subcon
        name = sc.name
        assert name is not None
        if isinstance(inner, FormatField):
            out.append(FieldSpec(name, "int", inner.fmtstr[1:], 1, None))
        elif isinstance(inner, Array):
            elem = inner.subcon
            assert isinstance(elem, FormatField) and isinstance(inner.count, int)
            out.append(FieldSpec(name, "array", elem.fmtstr[1:] * inner.count, inner.count, None))
        elif isinstance(inner, Bytes):
            assert isinstance(inner.length, int)
            out.append(FieldSpec(name, "bytes", f"{inner.length}s", inner.length, None))
        elif isinstance(inner, Struct):
            sub = _BY_ID[id(inner)]
            fmt = "".join(f.fmt for f in _fields(inner))
            out.append(FieldSpec(name, "struct", fmt, len(struct.Struct("<" + fmt).unpack(
                bytes(struct.calcsize("<" + fmt)))), sub))
        else:
            raise TypeError(f"cannot derive a struct format for {name}: {inner!r}")
    return out


def _flat_width(spec: FieldSpec) -> int:
    """How many values this field occupies in the flat unpacked tuple."""
    if spec.kind in ("int", "bytes"):
        return 1
    if spec.kind == "array":
        return spec.count
    return spec.count


def _decode_expr(schema_name: str, base: int) -> tuple[str, int]:
    """Python expression building the record from flat tuple ``v`` starting at ``base``."""
    parts: list[str] = []
    i = base
    for f in _fields(FIXED[schema_name]):
        if f.kind in ("int", "bytes"):
            parts.append(f"v[{i}]")
            i += 1
        elif f.kind == "array":
            parts.append(f"v[{i}:{i + f.count}]")
            i += f.count
        else:
            assert f.sub is not None
            expr, i = _decode_expr(f.sub, i)
            parts.append(expr)
    return f"_new(R_{class_name(schema_name)}, ({', '.join(parts)},))", i


def _encode_args(schema_name: str, path: str) -> list[str]:
    args: list[str] = []
    for k, f in enumerate(_fields(FIXED[schema_name])):
        if f.kind in ("int", "bytes"):
            args.append(f"{path}[{k}]")
        elif f.kind == "array":
            args.append(f"*{path}[{k}]")
        else:
            assert f.sub is not None
            args.extend(_encode_args(f.sub, f"{path}[{k}]"))
    return args


def _is_flat(schema_name: str) -> bool:
    return all(f.kind in ("int", "bytes") for f in _fields(FIXED[schema_name]))


def _py_type(f: FieldSpec) -> str:
    if f.kind == "int":
        return "int"
    if f.kind == "bytes":
        return "bytes"
    if f.kind == "array":
        return "tuple[int, ...]"
    assert f.sub is not None
    return class_name(f.sub)


def render_records_module() -> str:
    """Source of ``records.py``: one NamedTuple per fixed schema, in schema order."""
    lines = [
        '"""Typed records of the FUSE wire structs.',
        "",
        "GENERATED from fusewire/structs/schemas.py by ``python -m fusewire.structs.codec``;",
        "do not edit.  tests/test_structs.py fails when this file is out of date.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import NamedTuple",
        "",
        "__all__ = [",
    ]
    names = sorted(class_name(n) for n in FIXED)
    lines += [f'    "{n}",' for n in names]
    lines.append("]")
    for name, schema in FIXED.items():
        tag = " DRAFT (LOOKUP_HANDLE RFC)." if name in DRAFT else ""
        lines += ["", "", f"class {class_name(name)}(NamedTuple):",
                  f'    """``fuse_{name}``.{tag}"""', ""]
        for f in _fields(schema):
            shadow = "  # type: ignore[assignment]" if f.name in ("count", "index") else ""
            lines.append(f"    {py_name(f.name)}: {_py_type(f)}{shadow}")
    lines.append("")
    return "\n".join(lines)


