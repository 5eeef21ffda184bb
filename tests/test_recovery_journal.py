"""The recovery journal: records, torn tails, checksums, compaction, node table."""

from __future__ import annotations

import json
import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from fusewire.recovery import journal as jn


def _req(unique: int, opcode: int = 9, body: bytes = b"x") -> bytes:
    return struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, 1, 0, 0, 0, 0, 0) + body


def _reply(unique: int, err: int = 0, body: bytes = b"") -> bytes:
    return struct.pack("<IiQ", 16 + len(body), err, unique) + body


def _journal_with(n: int) -> tuple[int, jn.JournalWriter]:
    fd = jn.new_memfd()
    w = jn.JournalWriter(fd)
    w.append(jn.RecordType.SESSION, json.dumps({"minor": 45}).encode())
    for i in range(n):
        w.append(jn.RecordType.REQ, jn.encode_req(i, _req(2 * i + 2), _reply(2 * i + 2),
                                                  None, None))
    return fd, w


def test_append_and_load() -> None:
    fd, w = _journal_with(5)
    w.append_raw(jn.encode_record(jn.RecordType.ADD, struct.pack("<QQQ", 5, 6, 5)))
    w.append(jn.RecordType.FORGET, struct.pack("<QQ", 5, 1))
    st = jn.load(jn.read_all(fd))
    assert st.session == {"minor": 45}
    assert len(st.requests) == 5
    assert set(st.replies) == {2, 4, 6, 8, 10}
    assert st.nodes == {5: 1, 6: 1}
    assert st.valid_len == os.fstat(fd).st_size
    os.close(fd)


def test_torn_tail_ignored_and_truncated_by_next_writer() -> None:
    fd, w = _journal_with(3)
    good = w.offset
    rec = jn.encode_record(jn.RecordType.ADD, struct.pack("<Q", 7))
    for cut in range(1, len(rec)):
        os.ftruncate(fd, good)
        os.pwrite(fd, rec[:cut], good)
        st = jn.load(jn.read_all(fd))
        assert st.valid_len == good
        assert st.nodes == {}
        assert len(st.requests) == 3
    # a new writer drops the torn bytes, so its own records are visible
    w2 = jn.JournalWriter(fd, st.valid_len)
    w2.append(jn.RecordType.ADD, struct.pack("<Q", 9))
    assert jn.load(jn.read_all(fd)).nodes == {9: 1}
    os.close(fd)


def test_crc_mismatch_stops_loading() -> None:
    fd, w = _journal_with(4)
    data = bytearray(jn.read_all(fd))
    # flip a byte inside the third REQ record's payload
    ends = [end for _, _, end in jn.iter_records(bytes(data))]
    data[ends[2] + 10] ^= 0xFF
    st = jn.load(bytes(data))
    assert len(st.requests) == 2
    assert st.valid_len == ends[2]
    os.close(fd)


def test_bad_magic_is_empty() -> None:
    st = jn.load(b"NOTAJRNL" + jn.encode_record(1, b"{}"))
    assert st.records == 0 and st.session is None


def test_compaction_snapshot_replaces_history() -> None:
    fd, w = _journal_with(10)
    w.append(jn.RecordType.ADD, struct.pack("<QQ", 3, 4))
    body = jn.encode_snapshot({"minor": 45}, {"fs": "memfs"}, b"FSBLOB", {3: 1, 4: 2},
                              {7: (3, 2)})
    fd2 = jn.new_memfd()
    os.pwrite(fd2, body, 0)
    w2 = jn.JournalWriter(fd2, len(body))
    w2.append(jn.RecordType.REQ, jn.encode_req(1, _req(100, 14), _reply(100, 0, b"F" * 16),
                                               (11, 4, 0), None))
    st = jn.load(jn.read_all(fd2))
    assert st.fs_snapshot == b"FSBLOB"
    assert st.meta == {"fs": "memfs"}
    assert st.nodes == {3: 1, 4: 2}
    assert st.handles == {7: (3, 2), 11: (4, 0)}
    assert [r[0] for r in st.requests] == [1]
    assert set(st.replies) == {100}
    os.close(fd)
    os.close(fd2)


def test_release_removes_handle_and_resend_reply_readdressed() -> None:
    fd, w = _journal_with(0)
    w.append(jn.RecordType.REQ, jn.encode_req(1, _req(4, 14), _reply(4, 0, bytes(16)),
                                              (5, 2, 0), None))
    w.append(jn.RecordType.REQ, jn.encode_req(2, _req(6, 18), _reply(6), None, 5))
    st = jn.load(jn.read_all(fd))
    assert st.handles == {}
    bufs = jn.reply_with_unique(st.replies[6], 6 | (1 << 63))
    assert struct.unpack_from("<IiQ", bufs[0]) == (16, 0, 6 | (1 << 63))
    os.close(fd)


def test_node_table_journals_forget_and_pending_adds() -> None:
    fd = jn.new_memfd()
    w = jn.JournalWriter(fd)
    nt = jn.JournaledNodeTable()
    nt.writer = w
    nt.add([2, 3, 2])
    w.append_raw(nt.take_pending())
    assert nt.take_pending() == b""
    assert nt.forget(2, 5) == 2
    assert nt.forget(9, 1) == 0
    st = jn.load(jn.read_all(fd))
    assert st.nodes == {3: 1} == nt.counts
    os.close(fd)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.binary(max_size=64)), max_size=20),
       st.integers(0, 2000))
def test_any_prefix_loads_a_prefix_of_records(records: list[tuple[int, bytes]],
                                              cut: int) -> None:
    blob = jn.MAGIC + b"".join(jn.encode_record(t, p) for t, p in records)
    cut = min(cut, len(blob))
    got = [(t, bytes(p)) for t, p, _ in jn.iter_records(blob[:cut])]
    assert got == records[:len(got)]
    full = [(t, bytes(p)) for t, p, _ in jn.iter_records(blob)]
    assert full == records
