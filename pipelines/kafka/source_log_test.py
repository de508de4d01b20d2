"""Deciding whether a partition's log is still the one landed from: every kind of change, and
the cases that must not count as a change."""
from pipelines.kafka.source_log import PARTITION_REMOVED, RECREATED, RETENTION, fingerprint, offsets_to_verify, source_changes

A0, A1, A2 = ("a", 0), ("a", 1), ("a", 2)


def fp(offset, ts=1_000, value=b"v"):
    return fingerprint(offset, ts, b"k", value)


def decide(stored, fps, partitions, beginnings, ends, observed, missing=(), seen=None):
    wanted = offsets_to_verify(stored, fps, partitions, beginnings, ends)
    assert set(observed) <= set(wanted), "observed records must be ones the check asked for"
    return source_changes(stored, fps, partitions, missing, beginnings, ends, observed, seen)


def test_fingerprint_separates_key_from_value_and_none_from_empty():
    assert fingerprint(1, 5, b"ab", b"c") != fingerprint(1, 5, b"a", b"bc")
    assert fingerprint(1, 5, None, b"x") != fingerprint(1, 5, b"", b"x")
    assert fingerprint(1, 5, b"k", b"v") == fingerprint(1, 5, b"k", b"v")
    assert fingerprint(1, 5, b"k", b"v") != fingerprint(1, 6, b"k", b"v")  # same bytes, other time


def test_same_log_is_no_change():
    assert decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 0}, {A0: 25}, {A0: fp(9)}) == []


def test_recreated_log_longer_than_before_is_detected_by_its_record():
    (change,) = decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 0}, {A0: 25}, {A0: fp(9, ts=2_000)})
    assert (change.kind, change.from_offset, change.to_offset, change.records) == (RECREATED, 10, 0, 10)


def test_recreated_log_with_the_same_end_is_detected():
    (change,) = decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 0}, {A0: 10}, {A0: fp(9, value=b"other")})
    assert change.kind == RECREATED and change.records == 10


def test_recreated_log_shorter_than_before_needs_no_fetch():
    assert offsets_to_verify({A0: 10}, {A0: fp(9)}, [A0], {A0: 0}, {A0: 4}) == {}
    (change,) = decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 0}, {A0: 4}, {})
    assert (change.kind, change.to_offset, change.records) == (RECREATED, 0, 4)
    (empty,) = decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 0}, {A0: 0}, {})
    assert (empty.kind, empty.records) == (RECREATED, 0)


def test_record_gone_from_inside_the_log_is_a_change():
    (change,) = decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 0}, {A0: 30}, {A0: None})
    assert change.kind == RECREATED


def test_retention_past_the_stored_offset_counts_lost_records():
    (change,) = decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 17}, {A0: 30}, {})
    assert (change.kind, change.from_offset, change.to_offset, change.records) == (RETENTION, 10, 17, 7)


def test_retention_up_to_the_stored_offset_loses_nothing_and_resumes_there():
    assert decide({A0: 10}, {A0: fp(9)}, [A0], {A0: 10}, {A0: 30}, {}) == []


def test_removed_partition_is_reported_with_what_was_left_unread_when_known():
    changes = decide({A0: 5, A1: 5, A2: 5}, {k: fp(4) for k in (A0, A1, A2)}, [A0], {A0: 0}, {A0: 9},
                     {A0: fp(4)}, seen={A1: 12})
    kinds = {(c.key, c.kind, c.records) for c in changes}
    assert kinds == {(A1, PARTITION_REMOVED, 7), (A2, PARTITION_REMOVED, None)}
    assert all("1 partition" in c.detail for c in changes)


def test_missing_topic_is_left_alone_until_it_comes_back():
    assert decide({A0: 5}, {A0: fp(4)}, [], {}, {}, {}, missing=["a"]) == []


def test_new_partitions_are_not_changes():
    assert decide({A0: 5}, {A0: fp(4)}, [A0, A1, A2], {A0: 0, A1: 0, A2: 0}, {A0: 5, A1: 3, A2: 0}, {A0: fp(4)}) == []


def test_unfingerprinted_offsets_fall_back_to_the_end_check():
    assert decide({A0: 10}, {}, [A0], {A0: 0}, {A0: 12}, {}) == []
    (change,) = decide({A0: 10}, {}, [A0], {A0: 0}, {A0: 3}, {})
    assert change.kind == RECREATED


def test_every_message_names_the_partition():
    changes = decide({A0: 10, A1: 10, A2: 3}, {A0: fp(9), A1: fp(9), A2: fp(2)}, [A0, A1], {A0: 0, A1: 12},
                     {A0: 20, A1: 20}, {A0: fp(9, ts=3)})
    assert {c.kind for c in changes} == {RECREATED, RETENTION, PARTITION_REMOVED}
    for c in changes:
        assert f"a[{c.partition}]" in c.message() and "\n" not in c.message()
