"""Fast codecs derived from the construct schemas at import time.

For each fixed-size schema in :data:`fusewire.structs.schemas.FIXED` this
module walks the construct tree once, derives a ``struct.Struct`` format
(nested structs flattened, arrays expanded) and generates two small
functions, ``decode(buf, offset)`` and ``encode(record)``, that move between
bytes and the typed record class of :mod:`fusewire.structs.records`.

The record classes are ``typing.NamedTuple`` subclasses (immutable, typed,
about 0.3 µs to build, against several µs for a frozen dataclass); they are
*generated* from the same schemas by :func:`render_records_module` and a test
fails when the checked-in ``records.py`` drifts from the schemas.  So the
construct schema stays the single declaration of every struct.

Run ``python -m fusewire.structs.codec`` to regenerate ``records.py``.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from construct import Construct

from fusewire.structs import records
from fusewire.structs.derive import (
    _decode_expr,
    _encode_args,
    _fields,
    _is_flat,
    class_name,
    render_records_module,
)
from fusewire.structs.schemas import FIXED

__all__ = ["CODECS", "Codec"]

T = TypeVar("T")


class Codec(Generic[T]):
    """A derived fast codec for one fixed-size struct.

    ``decode(buf, offset=0)`` reads ``size`` bytes at ``offset`` and returns
    the record; ``encode(record)`` returns the bytes; ``pack_into`` writes
    into a buffer.  ``schema`` is the construct reference.
    """

    __slots__ = ("decode", "encode", "fmt", "name", "record", "schema", "size", "struct")

    def __init__(self, name: str) -> None:
        self.name = name
        self.schema: Construct = FIXED[name]
        self.record: type[T] = getattr(records, class_name(name))
        self.fmt = "<" + "".join(f.fmt for f in _fields(self.schema))
        self.struct = struct.Struct(self.fmt)
        self.size: int = self.struct.size
        ns: dict[str, Any] = {"_new": tuple.__new__, "_unpack": self.struct.unpack_from,
                              "_pack": self.struct.pack}
        for sub in FIXED:
            ns[f"R_{class_name(sub)}"] = getattr(records, class_name(sub))
        if _is_flat(name):
            dec = (f"def decode(buf, offset=0):\n"
                   f"    return _new(R_{class_name(name)}, _unpack(buf, offset))\n")
            enc = "def encode(r):\n    return _pack(*r)\n"
        else:
            expr, _ = _decode_expr(name, 0)
            dec = (f"def decode(buf, offset=0):\n"
                   f"    v = _unpack(buf, offset)\n    return {expr}\n")
            enc = f"def encode(r):\n    return _pack({', '.join(_encode_args(name, 'r'))})\n"
        exec(dec + enc, ns)
        self.decode: Callable[..., T] = ns["decode"]
        self.encode: Callable[[T], bytes] = ns["encode"]

    def pack_into(self, buf: bytearray | memoryview, offset: int, rec: T) -> None:
        """Write ``rec`` into ``buf`` at ``offset``."""
        buf[offset:offset + self.size] = self.encode(rec)

    def zero(self) -> T:
        """The record with every field zero."""
        return self.decode(bytes(self.size))

    def head(self, count: int) -> struct.Struct:
        """A :class:`struct.Struct` of the first ``count`` flat fields only.

        For reading a few leading fields of a possibly short or foreign buffer
        (``CODECS["in_header"].head(3)`` is len, opcode, unique: 16 bytes)
        without re-declaring their format.
        """
        items = _FORMAT_ITEM.findall(self.fmt[1:])
        if not 0 < count <= len(items):
            raise ValueError(f"{self.name} has {len(items)} format items, not {count}")
        return struct.Struct(self.fmt[0] + "".join(items[:count]))

    def __repr__(self) -> str:
        return f"<Codec {self.name} {self.size} bytes {self.fmt!r}>"


#: one item of a struct format: an optional count and a type code ("Q", "44x", "128s")
_FORMAT_ITEM = re.compile(r"\d*[xcbB?hHiIlLqQnNefdspP]")

#: Every fixed struct's codec, by schema name.
CODECS: dict[str, Codec[Any]] = {name: Codec(name) for name in FIXED}


def _main() -> None:  # pragma: no cover - developer tool
    target = Path(records.__file__)
    target.write_text(render_records_module())
    sys.stdout.write(f"wrote {target}\n")


if __name__ == "__main__":  # pragma: no cover
    _main()
