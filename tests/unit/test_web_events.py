"""supasync.web.events, sans I/O: the SSE wire form, resume positions, filtering and
coalescing."""

from __future__ import annotations

import json

import pytest

from supasync.core.errors import ConfigError
from supasync.core.filters import parse_filter
from supasync.web.events import (
    Coalescer,
    LiveEvent,
    apply_filter,
    encode_event,
    encode_must_refetch,
    encode_position,
    parse_coalesce,
    parse_position,
)


def ev(seq: int, op: str, key: int, **record: object) -> LiveEvent:
    return LiveEvent(seq, "todos", op, (key,),  # type: ignore[arg-type]
                     None if op == "delete" else {"id": key, **record}, "live", None)


def test_an_event_is_id_event_and_one_line_of_json() -> None:
    wire = encode_event(ev(7, "insert", 1, title="two\nlines")).decode()
    lines = wire.split("\n")
    assert lines[0] == "id: 7" and lines[1] == "event: insert"
    assert lines[2].startswith("data: ") and lines[3:] == ["", ""]
    data = json.loads(lines[2][6:])
    assert data == {"seq": 7, "table": "todos", "op": "insert", "key": [1],
                    "record": {"id": 1, "title": "two\nlines"}, "origin": "live",
                    "commit_timestamp": None}


def test_must_refetch_has_no_id_and_positions_have_nothing_but_an_id() -> None:
    wire = encode_must_refetch("todos", 9, "why").decode()
    assert wire.startswith("event: must-refetch\ndata: ") and "id:" not in wire
    assert encode_position(5).decode() == "id: 5\n\n"
    assert encode_position(5, "heartbeat").decode() == ": heartbeat\nid: 5\n\n"


def test_the_header_wins_over_the_query_and_bad_positions_say_what_to_do() -> None:
    assert parse_position(None, None) is None
    assert parse_position("", " ") is None
    assert parse_position("12", "3") == 12
    assert parse_position(None, "3") == 3
    with pytest.raises(ConfigError, match="sequence number") as info:
        parse_position("abc", None)
    assert info.value.fix and "last event" in info.value.fix
    with pytest.raises(ConfigError):
        parse_position(None, "-1")


def test_coalesce_ms_is_bounded() -> None:
    assert parse_coalesce(None) == 0.0
    assert parse_coalesce("250") == 0.25
    for bad in ("x", "-1", "60001", "1.5"):
        with pytest.raises(ConfigError, match="coalesce_ms"):
            parse_coalesce(bad)


def test_a_filter_narrows_and_an_update_leaving_it_becomes_a_delete() -> None:
    where = parse_filter("done=eq.false")
    events = [ev(1, "insert", 1, done=False), ev(2, "insert", 2, done=True),
              ev(3, "update", 1, done=True), ev(4, "update", 3, done=False),
              ev(5, "delete", 4)]
    out = apply_filter(events, where)
    assert [(e.seq, e.op, e.key) for e in out] == [
        (1, "insert", (1,)), (3, "delete", (1,)), (4, "update", (3,)), (5, "delete", (4,))]
    assert out[1].record is None
    assert apply_filter(events, None) == events


def test_coalescing_keeps_the_latest_per_key_in_seq_order() -> None:
    c = Coalescer()
    c.add([ev(1, "update", 1, n=1), ev(2, "insert", 2, n=1), ev(3, "update", 1, n=2),
           ev(4, "update", 2, n=2), ev(5, "delete", 3)])
    out = c.drain()
    # key 2 was inserted in this window: still an insert, with its newest row
    assert [(e.seq, e.op, e.key, (e.record or {}).get("n")) for e in out] == [
        (3, "update", (1,), 2), (4, "insert", (2,), 2), (5, "delete", (3,), None)]
    assert len(c) == 0 and c.drain() == []


def test_resuming_from_any_coalesced_id_misses_no_key() -> None:
    """Every key changed after an id a client got is sent again from that id."""
    changes = [ev(s, "update", k, v=s) for s, k in enumerate([1, 2, 1, 3, 2, 1, 4], start=1)]
    c = Coalescer()
    c.add(changes)
    sent = c.drain()
    final = {e.key: e.record for e in changes}
    for cut in range(len(sent)):
        got = {e.key: e.record for e in sent[:cut + 1]}
        after = sent[cut].seq
        resumed = Coalescer()
        resumed.add([e for e in changes if e.seq > after])
        got.update({e.key: e.record for e in resumed.drain()})
        assert got == final


def test_bytes_encoded_once_are_not_reused_for_a_changed_event() -> None:
    update = ev(3, "update", 1, done=True).encoded()
    assert encode_event(update) is update.wire and b"event: update" in update.wire
    (moved,) = apply_filter([update], parse_filter("done=eq.false"))
    assert b"event: delete" in encode_event(moved)
    c = Coalescer()
    c.add([ev(1, "insert", 2, n=1).encoded(), ev(2, "update", 2, n=2).encoded()])
    (merged,) = c.drain()
    assert b"event: insert" in encode_event(merged) and b'"n":2' in encode_event(merged)
