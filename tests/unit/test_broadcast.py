"""The sans-I/O parts of broadcast and presence (supasync.core.broadcast), the durable outbox
table (supasync.store.outbox) and the channel errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supasync.client.connection import channel_outcome
from supasync.core.broadcast import (
    ID_KEY,
    Outbox,
    PresenceState,
    SeenIds,
    parse_broadcast,
    validate_topic,
)
from supasync.core.errors import (
    ChannelUnauthorized,
    ConfigError,
    OutboxFull,
    SendFailed,
    Unauthorized,
)
from supasync.store.outbox import DurableOutbox, outbox_path

# -- messages ------------------------------------------------------------------------------


def test_wire_payload_carries_the_id_and_parse_takes_it_out() -> None:
    box = Outbox("room")
    msg = box.put("progress", {"pct": 40})
    wire = msg.wire_payload()
    assert wire == {"type": "broadcast", "event": "progress",
                    "payload": {"pct": 40, ID_KEY: msg.id}}
    got = parse_broadcast("room", wire)
    assert got is not None
    assert (got.topic, got.event, got.payload, got.id, got.replayed) == (
        "room", "progress", {"pct": 40}, msg.id, False)


def test_parse_prefers_the_servers_meta_id_and_reads_replayed() -> None:
    raw = {"event": "db", "payload": {"a": 1}, "type": "broadcast",
           "meta": {"id": "m-1", "replayed": True}}
    got = parse_broadcast("t", raw)
    assert got is not None and (got.id, got.replayed, got.payload) == ("m-1", True, {"a": 1})
    assert parse_broadcast("t", {"payload": {}}) is None  # no event: not a broadcast
    plain = parse_broadcast("t", {"event": "e", "payload": {"x": 1}})
    assert plain is not None and plain.id is None


def test_seen_ids_drops_repeats_within_its_window() -> None:
    seen = SeenIds(size=2)
    assert [seen.seen(x) for x in ("a", "b", "a", None, None)] == [False, False, True, False,
                                                                    False]
    seen.seen("c")  # pushes "a" out
    assert seen.seen("a") is False


def test_topic_validation_names_the_fix() -> None:
    assert validate_topic("room") == "room"
    with pytest.raises(ConfigError, match="without the 'realtime:' prefix"):
        validate_topic("realtime:room")
    with pytest.raises(ConfigError, match="non-empty"):
        validate_topic("")


# -- the outbox ----------------------------------------------------------------------------


def test_outbox_is_fifo_bounded_and_never_drops_silently() -> None:
    box = Outbox("room", limit=2)
    a = box.put("e", {"n": 1})
    b = box.put("e", {"n": 2})
    with pytest.raises(OutboxFull, match="full \\(2 messages"):
        box.put("e", {"n": 3})
    assert box.head is a and a.seq < b.seq and a.id != b.id
    box.acked(a)
    box.acked(a)  # twice is harmless
    assert box.head is b and len(box) == 1
    box.put("e", {"n": 3})
    assert [m.payload["n"] for m in box.drain()] == [2, 3] and box.head is None


def test_outbox_restores_ids_and_order_from_storage() -> None:
    box = Outbox("room")
    box.put("e", {}, mid="stored-1", seq=7)
    fresh = box.put("e", {})
    assert box.head is not None and box.head.id == "stored-1"
    assert fresh.seq > 7


def test_outbox_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="outbox_size"):
        Outbox("room", limit=0)


# -- presence ------------------------------------------------------------------------------


def meta(ref: str, **kv: object) -> dict[str, object]:
    return {"phx_ref": ref, **kv}


def test_presence_state_then_diffs() -> None:
    p = PresenceState()
    ch = p.apply_state({"w1": {"metas": [meta("r1", job=0)]}})
    assert ch.joins == {"w1": [{"job": 0}]} and ch.leaves == {}
    ch = p.apply_diff({"joins": {"w2": {"metas": [meta("r2")]}}, "leaves": {}})
    assert ch.joins == {"w2": [{}]} and set(p.snapshot()) == {"w1", "w2"}
    ch = p.apply_diff({"joins": {}, "leaves": {"w1": {"metas": [meta("r1", job=0)]}}})
    assert ch.leaves == {"w1": [{"job": 0}]} and set(p.snapshot()) == {"w2"}


def test_presence_update_replaces_the_previous_meta() -> None:
    p = PresenceState()
    p.apply_state({"w1": {"metas": [meta("r1", job=0)]}})
    ch = p.apply_diff({"joins": {"w1": {"metas": [meta("r2", job=1, phx_ref_prev="r1")]}},
                       "leaves": {}})
    assert p.snapshot() == {"w1": [{"job": 1}]}
    assert ch.joins == {"w1": [{"job": 1}]}


def test_presence_state_after_a_rejoin_reports_only_real_changes() -> None:
    p = PresenceState()
    p.apply_state({"w1": {"metas": [meta("r1")]}, "w2": {"metas": [meta("r2")]}})
    # After a reconnect: w1 is still there (same ref), w2 left, w3 came.
    ch = p.apply_state({"w1": {"metas": [meta("r1")]}, "w3": {"metas": [meta("r3")]}})
    assert ch.joins == {"w3": [{}]} and ch.leaves == {"w2": [{}]}
    assert p.apply_state({"w1": {"metas": [meta("r1")]}, "w3": {"metas": [meta("r3")]}}).empty
    assert p.clear().leaves == {"w1": [{}], "w3": [{}]} and p.snapshot() == {}


def test_presence_ignores_malformed_entries() -> None:
    p = PresenceState()
    assert p.apply_state({"x": {"metas": "nope"}, "y": 3}).empty
    assert p.apply_diff({"joins": [], "leaves": None}).empty


# -- errors and outcomes -------------------------------------------------------------------


def test_private_channel_refusal_is_typed_and_names_the_policy() -> None:
    reason = "Unauthorized: You do not have permissions to read from this Channel topic: room:1"
    outcome, _, typed = channel_outcome("CHANNEL_ERROR",
                                        Exception(json.dumps({"reason": reason})), "channel:room:1")
    assert outcome == "failed" and isinstance(typed, Unauthorized)
    err = ChannelUnauthorized(typed.subscription, typed.reason, topic="room:1")
    text = str(err)
    assert "realtime.messages" in text and "realtime.topic() = 'room:1'" in text
    assert "for select" in text
    assert "for insert" in str(ChannelUnauthorized("c", "r", topic="t", write=True))
    assert "failed: no ack" in str(SendFailed("t", "e", "id-1", "no ack"))


# -- the durable outbox --------------------------------------------------------------------


def test_durable_outbox_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    box = DurableOutbox(path)
    box.add("room", False, 1, "id-1", "e", {"n": 1})
    box.add("room", False, 2, "id-2", "e", {"n": 2})
    box.add("room", True, 1, "id-p", "e", {"n": 9})  # the private namespace is separate
    box.remove("room", False, 1)
    box.close()
    again = DurableOutbox(path)
    assert [(m.seq, m.id, m.payload) for m in again.load("room", False)] == [
        (2, "id-2", {"n": 2})]
    assert again.count() == 2
    again.close()


def test_outbox_path_only_for_files(tmp_path: Path) -> None:
    assert outbox_path(None) is None
    assert outbox_path("memory:") is None
    assert outbox_path(str(tmp_path / "a.db")) == tmp_path / "a.db"
    assert outbox_path("sqlite:///x/y.db") == Path("/x/y.db")

    class Temp:
        temporary = True
        path = "/tmp/x.db"

    class Kept:
        temporary = False
        path = "/data/x.db"

    assert outbox_path(Temp()) is None
    assert outbox_path(Kept()) == Path("/data/x.db")


# -- verify --broadcast and supasync sql --broadcast ----------------------------------------


def test_broadcast_verify_checks_from_facts() -> None:
    from supasync.verify.broadcast import (
        BroadcastTrigger,
        check_broadcast_probe,
        check_broadcast_read,
        check_broadcast_trigger,
    )

    good = BroadcastTrigger("supasync_broadcast", "public.f()", topic_found=True)
    assert check_broadcast_trigger("s", "public.t", "t", [good]).status == "ok"
    missing = check_broadcast_trigger("s", "public.t", "t", [])
    assert missing.status == "fail" and "supasync sql public.t --broadcast" in missing.fix
    other = BroadcastTrigger("mine", "public.g()", topic_found=False)
    assert check_broadcast_trigger("s", "public.t", "t", [other]).status == "warn"
    off = BroadcastTrigger("supasync_broadcast", "public.f()", True, enabled=False)
    assert "enable trigger" in check_broadcast_trigger("s", "public.t", "t", [off]).fix
    assert check_broadcast_trigger("s", "public.t", "t", None, "no db").status == "skip"

    denied = ChannelUnauthorized("s", "Unauthorized: ...", topic="t")
    read = check_broadcast_read("s", "t", True, False, denied)
    assert read.status == "fail" and "realtime.topic() = 't'" in read.fix
    assert check_broadcast_read("s", "t", True, True, None).status == "ok"
    assert check_broadcast_read("s", "t", True, False, TimeoutError()).status == "fail"

    assert check_broadcast_probe("s", "t", True, 5).status == "ok"
    assert check_broadcast_probe("s", "t", False, 5).status == "fail"
    assert check_broadcast_probe("s", "t", None, 5).status == "skip"
    assert check_broadcast_probe("s", "t", None, 5, "no db").status == "fail"


def test_broadcast_sql_renders_safely() -> None:
    from supasync.repair.broadcast_sql import render_broadcast

    text = render_broadcast("public.todos", read_role="authenticated")
    assert "to_regclass('public.todos')" in text and "security definer" in text
    assert 'create policy "supasync read todos" on realtime.messages' in text
    assert "-- create policy" not in text
    quoted = render_broadcast("o'neil", topic="it's")
    assert "to_regclass('o''neil')" in quoted and "'it''s'" in quoted
    with pytest.raises(ConfigError, match="role name"):
        render_broadcast("t", read_role="x; drop table y")
    with pytest.raises(ConfigError, match="'\\$'"):
        render_broadcast("t", topic="a$supasync$b")
    with pytest.raises(ConfigError, match="needs a table"):
        render_broadcast(" ")


def test_broadcast_message_becomes_the_postgres_changes_payload() -> None:
    from supasync.client.broadcast_source import as_postgres_changes
    from supasync.client.subscription import Subscription

    sub = Subscription("todos", filter="done=eq.false")
    msg = {"operation": "INSERT", "table": "todos", "schema": "public",
           "record": {"id": 1, "done": False}, "old_record": None}
    payload = as_postgres_changes(sub, msg, "2026-01-01T00:00:00Z")
    assert payload is not None
    assert payload["data"]["type"] == "INSERT" and payload["data"]["record"] == {
        "id": 1, "done": False}
    assert as_postgres_changes(sub, {**msg, "record": {"id": 2, "done": True}}, "t") is None
    assert as_postgres_changes(sub, {**msg, "table": "other"}, "t") is None
    assert as_postgres_changes(sub, {**msg, "operation": "TRUNCATE"}, "t") is None


def test_tenant_rate_counter_is_a_60_second_average() -> None:
    from supasync.devstack.realtime.limits import RateCounter, TenantLimits

    counter = RateCounter(1.0)
    counter.add(60, now=100.0)
    assert not counter.over(100.0)  # 60 events / 60 s = 1.0, not over
    counter.add(1, now=101.0)
    assert counter.over(101.0)
    assert not counter.over(100.0 + 65.0)  # the buckets have aged out
    limits = TenantLimits(joins_per_second=1)
    assert all(limits.join(float(i) / 10) for i in range(60))
    assert not limits.join(6.0)
    assert TenantLimits().join(0.0) and not TenantLimits().events_over(0.0)
