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
    assert st.valid_len == w.offset
    tail = jn.read_all(fd)[w.offset:]            # the preallocated rest: zeros
    assert tail == bytes(len(tail))
    os.close(fd)


def test_writer_grows_and_a_successor_continues() -> None:
    fd, w = _journal_with(0)
    big = bytes(range(256)) * 1024               # 256 KiB payloads: crosses GROW_BYTES
    for _ in range(6):
        w.append(jn.RecordType.FS_SNAPSHOT, big)
    assert os.fstat(fd).st_size > jn.GROW_BYTES
    st = jn.load(jn.read_all(fd))
    assert st.valid_len == w.offset and st.records == 7
    w.close()
    # a successor appends after the valid records, not after the zero tail
    w2 = jn.JournalWriter(fd, st.valid_len)
    w2.append(jn.RecordType.ADD, struct.pack("<Q", 11))
    st2 = jn.load(jn.read_all(fd))
    assert st2.nodes == {11: 1} and st2.valid_len == w2.offset
    w3 = jn.JournalWriter(fd)                    # no offset: found by loading
    assert w3.offset == w2.offset
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
    assert st.nodes == {3: 1, 4: 1}     # read back as "at least one" (the snapshot said 2)
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
    nt.flush_forgets()                  # one FORGET record per request
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


def test_node_keys_follow_the_counts() -> None:
    # "handles" mode: a nodeid's stable handle is journaled with its first ADD,
    # once, and dropped when its count reaches zero
    fd = jn.new_memfd()
    w = jn.JournalWriter(fd)
    asked: list[int] = []

    def key_of(n: int) -> bytes | None:
        asked.append(n)
        return None if n == 99 else b"K%d" % n

    nt = jn.JournaledNodeTable(key_of=key_of)
    nt.writer = w
    nt.add([5, 6, 5, 99])
    w.append_raw(nt.take_pending())
    nt.add([5, 7])
    w.append_raw(nt.take_pending())
    assert asked == [5, 6, 99, 7]           # 99 has no key: asked again only if re-added
    st = jn.load(jn.read_all(fd))
    assert st.keys == {5: b"K5", 6: b"K6", 7: b"K7"} == nt.keys
    assert nt.counts == {5: 3, 6: 1, 7: 1, 99: 1}
    assert st.nodes == {5: 1, 6: 1, 7: 1, 99: 1}  # journaled: first lookups only
    assert nt.forget(6, 1) == 1 and nt.forget(5, 1) == 1
    nt.flush_forgets()
    st = jn.load(jn.read_all(fd))
    assert st.keys == {5: b"K5", 7: b"K7"} == nt.keys
    # a compacted journal carries the keys of the nodes in the table, nothing else
    body = jn.encode_snapshot({"minor": 45}, {"fs": "passthrough"}, None, nt.snapshot(), {},
                              nt.key_snapshot())
    st2 = jn.load(body)
    assert st2.keys == {5: b"K5", 7: b"K7"} and st2.nodes == {5: 1, 7: 1, 99: 1}
    os.close(fd)


def test_intent_inflight_init_and_handover_records() -> None:
    fd, w = _journal_with(0)
    w.append(jn.RecordType.INIT_IN, b"RAW-INIT")
    w.append(jn.RecordType.INTENT, jn.encode_intent(8 | (1 << 63), 9, (1, -1, 7)))
    w.append(jn.RecordType.INFLIGHT, jn.encode_inflight(8, 9))
    w.append(jn.RecordType.INFLIGHT, jn.encode_inflight(10, 16))
    st = jn.load(jn.read_all(fd))
    assert st.init_in == b"RAW-INIT"
    assert st.intents == {8: (9, (1, -1, 7))}      # keyed without the resend bit
    assert st.inflight == (10, 16)                  # the last one read
    assert not st.graceful
    w.append(jn.RecordType.HANDOVER, b"")
    assert jn.load(jn.read_all(fd)).graceful
    w.append(jn.RecordType.ADD, struct.pack("<Q", 3))
    assert not jn.load(jn.read_all(fd)).graceful  # something happened after the hand-over
    # a snapshot starts a new base: older intents are moot
    w.append(jn.RecordType.NODES, jn.encode_nodes({3: 1}))
    assert jn.load(jn.read_all(fd)).intents == {}
    os.close(fd)


def _fold(fd: int) -> tuple[object, ...]:
    s = jn.load(jn.read_all(fd))
    return (s.nodes, s.handles, s.keys, s.records, s.valid_len, s.session, s.snapshot_end)


def _view(s: jn.JournalState) -> tuple[object, ...]:
    return (s.nodes, s.handles, s.keys, s.records, s.valid_len, s.session, s.snapshot_end)


def test_follower_applies_only_what_was_appended() -> None:
    fd, w = _journal_with(3)
    f = jn.JournalFollower(fd)
    assert _view(f.update()) == _fold(fd)
    for i in range(5):
        nt_blob = jn.encode_record(jn.RecordType.NODE_KEYS, jn.encode_keys([(i + 2, b"k")]))
        w.append_raw(nt_blob + jn.encode_record(jn.RecordType.ADD, struct.pack("<Q", i + 2)))
        w.append(jn.RecordType.REQ, jn.encode_req(i, _req(50 + 2 * i, 14),
                                                  _reply(50 + 2 * i, 0, bytes(16)),
                                                  (100 + i, i + 2, 2), None))
        assert _view(f.update()) == _fold(fd)
    # a torn tail is not applied; the next writer truncates it and appends
    good = w.offset
    rec = jn.encode_record(jn.RecordType.FORGET, struct.pack("<QQ", 2, 1))
    os.pwrite(fd, rec[:5], good)
    assert _view(f.update()) == _fold(fd)
    w2 = jn.JournalWriter(fd, jn.load(jn.read_all(fd)).valid_len)
    w2.append(jn.RecordType.FORGET, struct.pack("<QQ", 2, 1))
    assert _view(f.update()) == _fold(fd)
    assert 2 not in f.state.nodes and 2 not in f.state.keys
    # a swapped (compacted) journal: start over
    fd2 = jn.new_memfd()
    os.pwrite(fd2, jn.encode_snapshot(None, {}, None, {4: 1}, {}), 0)
    assert _view(f.update(fd2)) == _fold(fd2)
    assert f.state.nodes == {4: 1}
    os.close(fd)
    os.close(fd2)


def test_resend_decided_by_the_negotiated_minor() -> None:
    from fusewire.connection import Config
    from fusewire.recovery.takeover import resend_supported

    assert resend_supported(jn.JournalState(session={"minor": 40}), Config())
    assert not resend_supported(jn.JournalState(session={"minor": 39}), Config())
    init = _req(2, 26, struct.pack("<IIII", 7, 45, 0, 0))   # INIT from a 7.45 kernel
    assert resend_supported(jn.JournalState(init_in=init), Config())
    assert not resend_supported(jn.JournalState(init_in=init), Config(max_minor=39))
    old = _req(2, 26, struct.pack("<IIII", 7, 38, 0, 0))    # a 7.38 kernel
    assert not resend_supported(jn.JournalState(init_in=old), Config())
    assert resend_supported(jn.JournalState(), Config())     # nothing known: try RESEND


def test_follower_sees_a_new_journal_under_a_reused_fd_number() -> None:
    # The keeper closes the old journal after taking the compacted one, so the
    # descriptor numbers alternate: after two compactions the number is the same.
    fd, w = _journal_with(3)
    f = jn.JournalFollower(fd)
    assert f.update(fd).records == 4
    new = jn.new_memfd()
    os.pwrite(new, jn.encode_snapshot(None, {}, None, {7: 1, 8: 2}, {}), 0)
    w.close()
    os.dup2(new, fd)                    # same number, another file
    os.close(new)
    st = f.update(fd)
    assert st.nodes == {7: 1, 8: 2} and st.records == _fold(fd)[3]
    os.close(fd)


def test_compaction_accounting_survives_a_new_writer() -> None:
    # the log since the snapshot counts for a successor, whoever appended it
    fd = jn.new_memfd()
    body = jn.encode_snapshot({"minor": 45}, {}, b"fs", {1: 1}, {})
    os.pwrite(fd, body, 0)
    w = jn.JournalWriter(fd, len(body))
    for i in range(10):
        w.append(jn.RecordType.REQ, jn.encode_req(i, _req(2 * i + 2), _reply(2 * i + 2),
                                                  None, None))
    state = jn.load(jn.read_all(fd))
    assert state.log_start == len(body) and state.since_snapshot == 10
    w2 = jn.JournalWriter(fd, state.valid_len)
    w2.inherit(state)
    w2.append(jn.RecordType.ADD, struct.pack("<Q", 5))
    assert w2.log_records == 11
    assert w2.log_bytes == w2.offset - len(body)
    os.close(fd)


def test_append_parts_writes_the_same_record_as_encode() -> None:
    fd = jn.new_memfd()
    w = jn.JournalWriter(fd)
    prefix = jn.encode_record(jn.RecordType.ADD, struct.pack("<Q", 9))
    head = jn.req_head(5, 41, (3, 9, 2), None)
    raw = memoryview(_req(4, 16, b"y"))
    w.append_parts(prefix, jn.RecordType.REQ, (head, raw, _reply(4)))
    data = jn.read_all(fd)
    want = jn.MAGIC + prefix + jn.encode_record(
        jn.RecordType.REQ, jn.encode_req(5, bytes(raw), _reply(4), (3, 9, 2), None))
    assert data[:len(want)] == want
    st = jn.load(data)
    assert st.nodes == {9: 1} and st.handles == {3: (9, 2)} and st.requests[0][0] == 5
    os.close(fd)


def test_backing_ids_follow_opens_releases_and_snapshots() -> None:
    fd = jn.new_memfd()
    w = jn.JournalWriter(fd)
    open_out = struct.pack("<QIi", 700, 1 << 7, 3)         # FOPEN_PASSTHROUGH, id 3
    w.append(jn.RecordType.REQ, jn.encode_req(1, _req(2, 14), _reply(2, 0, open_out),
                                              (700, 5, 2), None))
    plain = struct.pack("<QIi", 701, 0, 0)
    w.append(jn.RecordType.REQ, jn.encode_req(2, _req(4, 14), _reply(4, 0, plain),
                                              (701, 6, 0), None))
    st = jn.load(jn.read_all(fd))
    assert st.backing == {700: 3}
    snap = jn.encode_snapshot(None, {}, None, {5: 1}, st.handles, None, st.backing)
    assert jn.load(snap).backing == {700: 3} and jn.load(snap).since_snapshot == 0
    w.append(jn.RecordType.REQ, jn.encode_req(3, _req(6, 18), _reply(6), None, 700))
    assert jn.load(jn.read_all(fd)).backing == {}
    os.close(fd)
