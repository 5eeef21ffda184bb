"""ReaddirToken's packing: add_names (one frame, one join) against add_name and
the reference dirent_record schema."""

from __future__ import annotations

import os
import stat

import pytest
from readdir_churn import list_with_churn

from fusewire.examples.memfs import MemFS
from fusewire.readdir import PackedListing, ReaddirToken
from fusewire.structs.schemas import VARIABLE
from fusewire.testing.listing import ListingToken
from fusewire.types import RequestContext

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


# -- PackedListing / add_listing ------------------------------------------------------

def _decode(buf: bytes) -> list[tuple[bytes, int, int, int]]:
    rec = VARIABLE["dirent_record"]
    off, got = 0, []
    while off < len(buf):
        r = rec.parse(buf[off:])
        got.append((r.name, r.ino, r.type, r.off))
        off += (24 + r.namelen + 7) & ~7
    return got


@pytest.mark.parametrize("size", [0, 24, 32, 200, 1000, 4096, 1 << 20])
@pytest.mark.parametrize("after", [0, 2, 5, 20, 42, 43, 10**6])
def test_add_listing_adds_what_add_names_adds(size: int, after: int) -> None:
    listing = PackedListing(ENTRIES)
    assert len(listing) == len(ENTRIES)
    tok = ReaddirToken(size, False)
    done = tok.add_listing(listing, after)
    want = ReaddirToken(size, False)
    fitted = want.add_names(e for e in ENTRIES if e[3] > after)
    assert bytes(tok.buf) == bytes(want.buf) and len(tok) == len(want)
    assert done == fitted


def test_add_listing_after_other_entries_pages_through() -> None:
    listing = PackedListing(ENTRIES)
    seen: list[tuple[bytes, int, int, int]] = []
    after = 0
    while True:
        tok = ReaddirToken(1200, False)  # room for "." and the 1024-byte name
        assert tok.add_name(b".", 1, stat.S_IFDIR, 1)
        done = tok.add_listing(listing, after)
        got = _decode(bytes(tok.buf))[1:]
        seen += got
        if done:
            break
        assert got, "a page that fits nothing would loop forever"
        after = got[-1][3]
    assert seen == [(n, i, stat.S_IFMT(m) >> 12, c) for n, i, m, c in ENTRIES]


def test_add_listing_declines_plus_and_subclasses() -> None:
    listing = PackedListing(ENTRIES)
    assert ReaddirToken(4096, True).add_listing(listing, 0) is None
    tok = ListingToken()
    assert tok.add_listing(listing, 0) is None and tok.entries == []


def test_packed_listing_refuses_bad_names_and_unordered_cookies() -> None:
    with pytest.raises(ValueError):
        PackedListing([(b"a/b", 1, stat.S_IFREG, 3)])
    with pytest.raises(ValueError):
        PackedListing([(b"a", 1, stat.S_IFREG, 4), (b"b", 2, stat.S_IFREG, 4)])


# -- memfs keeps an unchanged directory's records packed -----------------------------

CTX = RequestContext(uid=0, gid=0, pid=1, umask=0o022)


def _wire_listing(fs: MemFS, ino: int, page: int) -> list[tuple[bytes, int, int, int]]:
    """List ``ino`` as the dispatcher does: ReaddirTokens of ``page`` bytes."""
    fh = fs.opendir(ino, CTX)
    out: list[tuple[bytes, int, int, int]] = []
    cookie = 0
    while True:
        tok = ReaddirToken(page, False)
        fs.readdir(fh, cookie, tok)
        got = _decode(bytes(tok.buf))
        if not got:
            break
        out += got
        cookie = got[-1][3]
    fs.releasedir(fh)
    return out


def _slow_listing(fs: MemFS, ino: int) -> list[tuple[bytes, int, int, int]]:
    """The same listing through a subclass token: one add_name per entry."""
    fh = fs.opendir(ino, CTX)
    tok = ListingToken()
    fs.readdir(fh, 0, tok)
    fs.releasedir(fh)
    return [(n, a.st_ino, stat.S_IFMT(a.st_mode) >> 12, c) for n, a, c in tok.entries]


def _mk(fs: MemFS, parent: int, name: bytes) -> None:
    fi, _ = fs.create(parent, name, stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    fs.release(fi.fh)


@pytest.mark.parametrize("page", [200, 4096])
def test_memfs_packed_listing_matches_the_per_entry_listing(page: int) -> None:
    fs = MemFS()
    d = fs.mkdir(1, b"d", 0o755, CTX).st_ino
    for i in range(100):
        _mk(fs, d, b"f%03d" % i)
    fs.mkdir(d, b"sub", 0o755, CTX)
    want = _slow_listing(fs, d)
    assert len(want) == 103
    for _ in range(3):  # the second and third listing come from the packed records
        assert _wire_listing(fs, d, page) == want
    assert len(fs._inodes[d].data.listing) == 101  # type: ignore[union-attr]
    fs.unlink(d, b"f010", CTX)
    _mk(fs, d, b"late")
    fs.rename(d, b"f020", d, b"f030", 0, CTX)  # f030 now names f020's inode
    want = _slow_listing(fs, d)
    assert [n for n, *_ in want].count(b"f030") == 1 and b"f010" not in [n for n, *_ in want]
    for _ in range(3):
        assert _wire_listing(fs, d, page) == want


def test_memfs_listing_that_changes_between_pages() -> None:
    fs = MemFS()
    d = fs.mkdir(1, b"d", 0o755, CTX).st_ino
    for i in range(300):
        _mk(fs, d, b"n%04d" % i)
    _wire_listing(fs, d, 4096)
    _wire_listing(fs, d, 4096)  # packed now
    def read_page(fh: int, cookie: int) -> list[tuple[bytes, int]]:
        tok = ReaddirToken(400, False)
        fs.readdir(fh, cookie, tok)
        return [(n, c) for n, _, _, c in _decode(bytes(tok.buf))]

    seen, removed = list_with_churn(fs, d, read_page, lambda name: _mk(fs, d, name))
    assert len(seen) == len(set(seen))
    assert {b"n%04d" % i for i in range(300)} - removed <= set(seen)
    assert {b"new%04d" % i for i in range(20)} <= set(seen)
