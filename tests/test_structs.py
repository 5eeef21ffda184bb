"""Struct layouts: sizes and offsets vs the kernel, golden bytes, fast codec vs construct."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from construct import Container, ListContainer
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_layout import KERNEL_LAYOUT

from fusewire.opcodes import flags as F
from fusewire.structs import records
from fusewire.structs.codec import CODECS
from fusewire.structs.derive import _fields, class_name, py_name, render_records_module
from fusewire.structs.layout import decode_sized, encode_sized, sizes_for, struct_size
from fusewire.structs.schemas import DRAFT, FIXED, VARIABLE

KERNEL_LAYOUT = {
    **KERNEL_LAYOUT,
    "cuse_init_in": (16, [(0, "major", "u32"), (4, "minor", "u32"), (8, "unused", "u32"),
                          (12, "flags", "u32")]),
    "cuse_init_out": (72, [(0, "major", "u32"), (4, "minor", "u32"), (8, "unused", "u32"),
                           (12, "flags", "u32"), (16, "max_read", "u32"),
                           (20, "max_write", "u32"), (24, "dev_major", "u32"),
                           (28, "dev_minor", "u32"), (32, "spare", "u32[10]")]),
}


def _offsets(name: str) -> list[tuple[int, str]]:
    out, off = [], 0
    for f in _fields(FIXED[name]):
        out.append((off, f.name))
        off += struct.calcsize("<" + f.fmt)
    return out


def test_records_module_is_generated_from_the_schemas() -> None:
    with open(records.__file__, encoding="utf-8") as fh:
        assert fh.read() == render_records_module(), \
            "records.py is stale: run python -m fusewire.structs.codec"


@pytest.mark.parametrize("kname", sorted(KERNEL_LAYOUT))
def test_size_and_offsets_match_kernel(kname: str) -> None:
    size, fields = KERNEL_LAYOUT[kname]
    ours = kname.removeprefix("fuse_")
    assert ours in FIXED, f"no schema for {kname}"
    assert CODECS[ours].size == size
    assert FIXED[ours].sizeof() == size
    # flexible array members (u32 groups[]) are variable parts, not fixed fields
    assert _offsets(ours) == [(o, n) for o, n, t in fields if not t.endswith("[]")]


def test_every_upstream_schema_is_in_the_kernel_table() -> None:
    ours = {n for n in FIXED if n not in DRAFT} - {"cuse_init_in", "cuse_init_out"}
    missing = {n for n in ours if f"fuse_{n}" not in KERNEL_LAYOUT}
    assert not missing


def test_compat_sizes_equal_kernel_constants() -> None:
    all_flags = 0
    assert struct_size("entry_out", 8, all_flags) == F.FUSE_COMPAT_ENTRY_OUT_SIZE
    assert struct_size("attr_out", 8, all_flags) == F.FUSE_COMPAT_ATTR_OUT_SIZE
    assert struct_size("mknod_in", 11, all_flags) == F.FUSE_COMPAT_MKNOD_IN_SIZE
    assert struct_size("write_in", 8, all_flags) == F.FUSE_COMPAT_WRITE_IN_SIZE
    assert struct_size("statfs_out", 3, all_flags) == F.FUSE_COMPAT_STATFS_SIZE
    assert struct_size("init_out", 4, all_flags) == F.FUSE_COMPAT_INIT_OUT_SIZE
    assert struct_size("init_out", 22, all_flags) == F.FUSE_COMPAT_22_INIT_OUT_SIZE
    assert struct_size("setxattr_in", 45, 0) == F.FUSE_COMPAT_SETXATTR_IN_SIZE
    assert struct_size("setxattr_in", 45, F.InitFlag.SETXATTR_EXT) == 16
    full = sizes_for(45, int(F.InitFlag.SETXATTR_EXT))
    assert full["entry_out"] == 128 and full["init_out"] == 64 and full["getattr_in"] == 16
    assert sizes_for(19, 0)["getattr_in"] == 16 and sizes_for(8, 0)["getattr_in"] == 0


def test_compat_decode_reads_missing_tail_as_zero() -> None:
    codec = CODECS["write_in"]
    rec = codec.record(1, 2, 3, 4, 5, 6, 7)
    short = encode_sized(codec, rec, 24)
    assert len(short) == 24
    assert decode_sized(codec, short, 0, 24) == rec._replace(lock_owner=0, flags=0, padding=0)


# -- golden bytes: rows of eight, fields named per row ------------------------------

GOLDEN: list[tuple[str, dict[str, Any], bytes]] = [
    ("in_header", dict(len=56, opcode=3, unique=0x1122334455667788, nodeid=1, uid=1000,
                       gid=100, pid=4242, total_extlen=0, padding=0),
     bytes.fromhex(
         "38000000" "03000000"          # len, opcode
         "8877665544332211"             # unique
         "0100000000000000"             # nodeid
         "e8030000" "64000000"          # uid, gid
         "92100000" "0000" "0000")),    # pid, total_extlen, padding
    ("out_header", dict(len=16, error=-2, unique=4),
     bytes.fromhex("10000000" "feffffff" "0400000000000000")),
    ("open_out", dict(fh=0xAB, open_flags=int(F.FOPEN.KEEP_CACHE | F.FOPEN.PASSTHROUGH),
                      backing_id=-1),
     bytes.fromhex("ab00000000000000" "82000000" "ffffffff")),
    ("notify_inval_inode_out", dict(ino=2, off=-1, len=0),
     bytes.fromhex("0200000000000000" "ffffffffffffffff" "0000000000000000")),
    ("removemapping_in", dict(count=3), bytes.fromhex("03000000")),
    ("file_handle_v3", dict(size=9), bytes.fromhex("0900")),
]


@pytest.mark.parametrize(("name", "values", "golden"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bytes(name: str, values: dict[str, Any], golden: bytes) -> None:
    codec = CODECS[name]
    rec = codec.record(**values)
    assert codec.encode(rec) == golden
    assert codec.decode(golden) == rec
    assert FIXED[name].build(values) == golden
    assert _plain(FIXED[name].parse(golden)) == _plain(rec)


def test_golden_entry_out() -> None:
    attr = records.Attr(ino=2, size=6, blocks=1, atime=10, mtime=11, ctime=12, atimensec=1,
                        mtimensec=2, ctimensec=3, mode=0o100644, nlink=1, uid=0, gid=0, rdev=0,
                        blksize=4096, flags=0)
    rec = records.EntryOut(nodeid=2, generation=7, entry_valid=1, attr_valid=1,
                           entry_valid_nsec=0, attr_valid_nsec=500, attr=attr)
    data = CODECS["entry_out"].encode(rec)
    assert data[:40] == bytes.fromhex(
        "0200000000000000" "0700000000000000"   # nodeid, generation
        "0100000000000000" "0100000000000000"   # entry_valid, attr_valid
        "00000000" "f4010000")                  # entry_valid_nsec, attr_valid_nsec
    assert data[40 + 60:40 + 64] == struct.pack("<I", 0o100644)   # attr.mode at 60
    assert data[40 + 80:40 + 84] == struct.pack("<I", 4096)       # attr.blksize at 80
    assert CODECS["entry_out"].decode(data) == rec


# -- fast codec vs construct on random values -------------------------------------------

_FMT_RANGE = {"B": (0, 2**8 - 1), "H": (0, 2**16 - 1), "I": (0, 2**32 - 1),
              "Q": (0, 2**64 - 1), "i": (-2**31, 2**31 - 1), "q": (-2**63, 2**63 - 1),
              "L": (0, 2**32 - 1), "l": (-2**31, 2**31 - 1)}


def _record_strategy(name: str) -> st.SearchStrategy[Any]:
    codec = CODECS[name]
    parts: list[st.SearchStrategy[Any]] = []
    for f in _fields(FIXED[name]):
        if f.kind == "int":
            lo, hi = _FMT_RANGE[f.fmt]
            parts.append(st.one_of(st.sampled_from([lo, hi, 0]), st.integers(lo, hi)))
        elif f.kind == "array":
            lo, hi = _FMT_RANGE[f.fmt[0]]
            parts.append(st.tuples(*[st.integers(lo, hi)] * f.count))
        elif f.kind == "bytes":
            parts.append(st.binary(min_size=f.count, max_size=f.count))
        else:
            assert f.sub is not None
            parts.append(_record_strategy(f.sub))
    return st.tuples(*parts).map(lambda t: codec.record(*t))


def _plain(value: Any) -> Any:
    """construct Container / ListContainer / records -> comparable plain data."""
    if isinstance(value, Container):
        return tuple(_plain(v) for k, v in value.items() if not k.startswith("_io"))
    if isinstance(value, ListContainer | list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def _as_dict(rec: Any, schema_name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f, v in zip(_fields(FIXED[schema_name]), rec, strict=True):
        if f.kind == "struct":
            assert f.sub is not None
            out[f.name] = _as_dict(v, f.sub)
        elif f.kind == "array":
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fast_codec_agrees_with_construct(name: str) -> None:
    codec = CODECS[name]

    @settings(max_examples=40, deadline=None)
    @given(_record_strategy(name))
    def check(rec: Any) -> None:
        fast = codec.encode(rec)
        ref = FIXED[name].build(_as_dict(rec, name))
        assert fast == ref
        assert codec.decode(ref) == rec
        assert _plain(FIXED[name].parse(fast)) == _plain(rec)

    check()


def test_record_field_names_are_kernel_names() -> None:
    for name in FIXED:
        rec_cls = getattr(records, class_name(name))
        assert rec_cls._fields == tuple(py_name(f.name) for f in _fields(FIXED[name]))


def test_variable_schemas_parse_their_shapes() -> None:
    rec = VARIABLE["dirent_record"].parse(
        struct.pack("<QQII", 5, 1, 3, 8) + b"abc" + bytes(5))
    assert rec.name == b"abc" and rec.ino == 5
    forgets = VARIABLE["batch_forget"].parse(struct.pack("<II", 2, 0) +
                                             struct.pack("<QQQQ", 2, 1, 3, 4))
    assert [(f.nodeid, f.nlookup) for f in forgets.forgets] == [(2, 1), (3, 4)]
