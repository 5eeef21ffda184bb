"""ReaddirToken's packing: add_names (one frame, one join) against add_name and
the reference dirent_record schema."""

from __future__ import annotations

import stat

import pytest

from fusewire.readdir import ReaddirToken
from fusewire.structs.schemas import VARIABLE
from fusewire.testing.listing import ListingToken

ENTRIES = [(b"a" * n, 100 + n, stat.S_IFREG | 0o644 if n % 2 else stat.S_IFDIR | 0o755, n + 3)
           for n in range(1, 40)] + [(b"x" * 1024, 7, stat.S_IFLNK | 0o777, 99)]


def _one_by_one(size: int) -> tuple[bytes, int]:
    tok = ReaddirToken(size, False)
    for e in ENTRIES:
        if not tok.add_name(*e):
            break
    return bytes(tok.buf), len(tok)


@pytest.mark.parametrize("size", [0, 24, 32, 200, 1000, 4096, 1 << 20])
def test_add_names_packs_what_add_name_packs(size: int) -> None:
    tok = ReaddirToken(size, False)
    fitted = tok.add_names(iter(ENTRIES))
    want, count = _one_by_one(size)
    assert bytes(tok.buf) == want
    assert len(tok) == count
    assert fitted == (count == len(ENTRIES))
    assert len(tok.buf) <= size


def test_records_decode_with_the_reference_schema() -> None:
    tok = ReaddirToken(1 << 20, False)
    assert tok.add_names(ENTRIES)
    rec = VARIABLE["dirent_record"]
    buf, off, got = bytes(tok.buf), 0, []
    while off < len(buf):
        r = rec.parse(buf[off:])
        got.append((r.name, r.ino, r.type, r.off))
        off += (24 + r.namelen + 7) & ~7
    assert off == len(buf)
    assert got == [(n, i, stat.S_IFMT(m) >> 12, c) for n, i, m, c in ENTRIES]


def test_add_names_continues_after_add_name() -> None:
    tok = ReaddirToken(4096, False)
    assert tok.add_name(*ENTRIES[0])
    assert tok.add_names(ENTRIES[1:5])
    assert bytes(tok.buf) == _one_by_one(sum((31 + len(e[0])) & ~7 for e in ENTRIES[:5]))[0]
    assert len(tok) == 5


@pytest.mark.parametrize("bad", [b"", b"a/b", b"y" * 1025])
def test_add_names_refuses_a_bad_name_and_adds_nothing(bad: bytes) -> None:
    tok = ReaddirToken(4096, False)
    with pytest.raises(ValueError):
        tok.add_names([ENTRIES[0], (bad, 5, stat.S_IFREG, 9)])
    assert tok.buf == bytearray() and len(tok) == 0


def test_add_names_on_plus_raises() -> None:
    with pytest.raises(ValueError):
        ReaddirToken(4096, True).add_names(ENTRIES[:1])


def test_add_names_uses_a_subclass_add_name() -> None:
    tok = ListingToken(capacity=3)
    assert not tok.add_names(ENTRIES)
    assert [(n, a.st_ino, a.st_mode, c) for n, a, c in tok.entries] == ENTRIES[:3]
