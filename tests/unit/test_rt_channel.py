"""Channel logic of the local Realtime server (realtime-protocol.md §3, §4, §7, §9.6)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from supasync.devstack.keys import StackKeys
from supasync.devstack.realtime.channel import (
    MAX_CHANNELS_PER_CLIENT,
    Channel,
    JoinError,
    PgState,
    binding_id,
    check_join,
    expiry_delay,
    flexible_bool,
    join_token,
    legacy_params,
    parse_join_payload,
    sub_topic_of,
)
from supasync.devstack.realtime.presence import CallWindow, PresenceTopic, parse_presence_push

KEYS = StackKeys.generate("unit-test-secret-unit-test-secret-unit-test")
NOW = time.time()


def _channel(payload: dict[str, Any] | None = None, *, token: str | None = None) -> Channel:
    params = parse_join_payload(payload if payload is not None else {"config": {}})
    tok, claims = check_join("room", params, socket_token=token or KEYS.anon_key,
                             secret=KEYS.jwt_secret, channel_count=0, now=time.time())
    return Channel(key=("c", 1), topic="realtime:room", join_ref="1", params=params,
                   token=tok, claims=claims)


def test_topics() -> None:
    assert sub_topic_of("realtime:room") == "room"
    assert sub_topic_of("realtime:") == ""
    assert sub_topic_of("room") is None and sub_topic_of("phoenix") is None


def test_flexible_booleans() -> None:
    assert flexible_bool("TRUE") == (True, True)
    assert flexible_bool("false") == (False, True)
    assert flexible_bool(None, True) == (True, True)
    assert flexible_bool(1) == (False, False)
    params = parse_join_payload({"config": {"broadcast": {"self": "True", "ack": "yes"},
                                            "private": "FALSE"}})
    assert params.broadcast_self and not params.broadcast_ack and not params.private
    assert params.problems == ("config.broadcast.ack must be a boolean",)


def test_join_payload_is_never_rejected() -> None:
    payloads: list[Any] = [None, [], "x", {"config": 3}, {"config": {"postgres_changes": "x"}}]
    for payload in payloads:
        params = parse_join_payload(payload)
        assert params.postgres_changes == ()
    params = parse_join_payload({"config": {"postgres_changes": [None, {"event": "*"}, 5],
                                            "presence": {"key": 7, "enabled": True}}})
    assert params.postgres_changes == ({"event": "*"},)
    assert params.presence_key == "7" and params.presence_enabled and not params.legacy
    assert parse_join_payload({}).legacy


def test_binding_ids_are_stable_positive_and_shared_by_equal_params() -> None:
    a = {"event": "*", "schema": "public", "table": "todos"}
    b = {"table": "todos", "schema": "public", "event": "*"}
    assert binding_id(a) == binding_id(b)
    assert binding_id(a) != binding_id({**a, "filter": "id=eq.1"})
    assert 0 < binding_id(a) < 2**31
    ch = _channel({"config": {"postgres_changes": [a, b, {**a, "select": ["id"]}]}})
    reply = ch.join_reply("9")
    pcs = reply.payload["response"]["postgres_changes"]
    assert [p["id"] for p in pcs][:2] == [binding_id(a)] * 2
    assert pcs[2] == {**a, "select": ["id"], "id": binding_id({**a, "select": ["id"]})}
    assert reply.ref == "9" and reply.join_ref == "1"


def test_legacy_join_subscribes_to_the_sub_topic() -> None:
    assert legacy_params("public:todos:id=eq.1") == {
        "event": "*", "schema": "public", "table": "todos", "filter": "id=eq.1"}
    params = parse_join_payload({})
    ch = Channel(key=1, topic="realtime:public:todos", join_ref="1", params=params,
                 token="t", claims={})
    assert ch.echo == [] and ch.bindings[0][1] == {"event": "*", "schema": "public",
                                                   "table": "todos"}
    ch.begin_subscribe()
    ch.feed_answer(None)
    m = ch.deliver({"ids": [1], "data": {"type": "INSERT", "record": {"id": 1}}})
    assert m is not None and m.event == "INSERT" and m.payload["record"] == {"id": 1}


def test_join_tokens() -> None:
    p = parse_join_payload({"config": {}, "access_token": "sb_publishable_x"})
    assert join_token(p, "sock") == "sock"
    p = parse_join_payload({"config": {}, "user_token": "u"})
    assert join_token(p, "sock") == "u"
    assert join_token(parse_join_payload({"config": {}}), "sock") == "sock"


def test_join_errors_in_pipeline_order() -> None:
    def reason(sub: str, payload: dict[str, Any], count: int = 0) -> str:
        with pytest.raises(JoinError) as info:
            check_join(sub, parse_join_payload(payload), socket_token=KEYS.anon_key,
                       secret=KEYS.jwt_secret, channel_count=count, now=time.time())
        return info.value.reason

    expired = KEYS.mint({"role": "anon"}, expires_in=-5)
    assert reason("", {"access_token": expired}) == (
        "TopicNameRequired: You must provide a topic name")
    assert reason("r", {"access_token": expired}, MAX_CHANNELS_PER_CLIENT) == (
        "ChannelRateLimitReached: Too many channels")
    assert reason("r", {"access_token": expired}).startswith(
        "InvalidJWTToken: Token has expired ")
    assert reason("r", {"access_token": "nope"}) == (
        "MalformedJWT: The token provided is not a valid JWT")
    other = StackKeys.generate("another-secret-another-secret-another-secret")
    assert reason("r", {"access_token": other.anon_key}) == (
        "JwtSignatureError: Failed to validate JWT signature")
    no_role = KEYS.mint({"sub": "x"})
    assert reason("r", {"access_token": no_role}) == (
        "InvalidJWTToken: Fields `role` and `exp` are required in JWT")
    assert reason("r", {"config": {"broadcast": {"replay": {"since": 1}}}}) == (
        "UnableToReplayMessages: Replay is not allowed for public channels")
    assert reason("r", {"config": {"private": True, "broadcast": {"replay": {"since": "x"}}}}) == (
        "UnableToReplayMessages: Replay params are not valid")


def test_changes_wait_for_subscribed() -> None:
    ch = _channel({"config": {"postgres_changes": [{"event": "*", "schema": "public"}]}})
    assert ch.needs_feed and ch.pg is PgState.NONE
    ch.begin_subscribe()
    assert ch.deliver({"ids": [1], "data": {"n": 1}}) is None  # held back
    out = ch.feed_answer(None)
    assert [m.event for m in out] == ["system", "postgres_changes"]
    assert out[0].payload == {"extension": "postgres_changes", "status": "ok",
                              "message": "Subscribed to PostgreSQL", "channel": "room"}
    assert out[0].ref is None and out[0].join_ref == "1"
    assert out[1].ref is None and out[1].join_ref is None
    live = ch.deliver({"ids": [1], "data": {"n": 2}})
    assert live is not None and live.payload["data"] == {"n": 2}
    # Errors from the feed do not end the channel (§4).
    err = ch.feed_answer("boom")
    assert [(m.event, m.payload["status"]) for m in err] == [("system", "error")]
    assert ch.pg.value == PgState.FAILED.value and not ch.closed


def test_close_is_once_and_stops_delivery() -> None:
    ch = _channel({"config": {"postgres_changes": [{"event": "*", "schema": "public"}]}})
    ch.begin_subscribe()
    assert ch.close() and ch.was_feeding
    assert not ch.close()
    assert ch.feed_answer(None) == [] and ch.deliver({"ids": [], "data": {}}) is None


def test_access_token_push() -> None:
    ch = _channel()
    secret = KEYS.jwt_secret
    assert ch.access_token(None, secret, time.time()) == ("ignored", [])
    assert ch.access_token(ch.token, secret, time.time()) == ("ignored", [])
    assert ch.access_token("sb_secret_x", secret, time.time()) == ("ignored", [])
    fresh = KEYS.mint({"role": "authenticated", "sub": "u1"}, expires_in=600)
    assert ch.access_token(fresh, secret, time.time()) == ("refreshed", [])
    assert ch.claims["sub"] == "u1"
    outcome, msgs = ch.access_token("", secret, time.time())
    assert outcome == "closed"
    assert [m.event for m in msgs] == ["system", "phx_close"]
    assert msgs[0].payload == {"extension": "system", "status": "error",
                               "message": "The token provided is not a valid JWT",
                               "channel": "room"}
    assert msgs[1].ref == msgs[1].join_ref == "1"


def test_expiry() -> None:
    token = KEYS.mint({"role": "anon"}, expires_in=2)
    ch = _channel({"config": {}, "access_token": token})
    now = time.time()
    assert 0 < expiry_delay(ch.claims, now) <= 2
    assert expiry_delay({"exp": now + 10_000}, now) == 300
    assert ch.check_token(KEYS.jwt_secret, now) == []
    msgs = ch.check_token(KEYS.jwt_secret, ch.claims["exp"] + 3.5)
    assert msgs[0].payload["message"] == "Token has expired 3 seconds ago"
    ch2 = _channel()
    msgs = ch2.expire(time.time())
    assert msgs[0].payload["message"] == "Token has expired 0 seconds ago"
    assert ch2.expire(time.time()) == []


def test_presence_tracking() -> None:
    topic = PresenceTopic()
    diff = topic.track("a", "alice", {"user": "alice"})
    assert diff is not None and diff["leaves"] == {}
    meta = diff["joins"]["alice"]["metas"][0]
    assert meta["user"] == "alice" and isinstance(meta["phx_ref"], str)
    assert topic.track("a", "alice", {"user": "alice"}) is None  # identical: no-op
    upd = topic.track("a", "alice", {"user": "alice", "typing": True})
    assert upd is not None
    assert upd["joins"]["alice"]["metas"][0]["phx_ref_prev"] == meta["phx_ref"]
    assert upd["leaves"]["alice"]["metas"][0] == meta
    topic.track("b", "alice", {"user": "alice2"})
    assert [m["user"] for m in topic.state()["alice"]["metas"]] == ["alice", "alice2"]
    left = topic.untrack("a")
    assert left is not None and list(left["leaves"]) == ["alice"]
    assert topic.untrack("a") is None


def test_presence_push_parsing_and_rate() -> None:
    assert parse_presence_push({"event": "TRACK", "payload": {"x": 1}}).action == "track"
    assert parse_presence_push({"type": "presence", "event": "untrack"}).reply == ("ok", {})
    bad = parse_presence_push({"event": "track", "payload": [1]})
    assert bad.reply == ("error", {"reason": "Presence track payload must be a map"})
    assert parse_presence_push({"event": "dance"}).reply == ("error", {})
    window = CallWindow()
    assert all(window.allow(100.0 + i) for i in range(5))
    assert not window.allow(106.0)
    assert window.allow(200.0)


class _Rcv:
    def __init__(self, serializer: Any) -> None:
        self.serializer = serializer
        self.frames: list[str | bytes] = []

    def send_frame(self, frame: str | bytes) -> None:
        self.frames.append(frame)


def test_hub_fanout_by_namespace_and_serializer() -> None:
    from supasync.devstack.realtime.broadcast import Hub
    from supasync.devstack.realtime.protocol import V1, V2, Message, UserBroadcast

    hub = Hub()
    chans = []
    for i, (ser, private) in enumerate([(V1, False), (V2, False), (V2, False), (V1, True)]):
        params = parse_join_payload({"config": {"private": private}})
        ch = Channel(key=i, topic="realtime:room", join_ref=str(i), params=params,
                     token="t", claims={})
        rcv = _Rcv(ser)
        hub.add(ch, rcv)
        chans.append((ch, rcv))
    sent = hub.fanout((False, "room"), Message.fanout("realtime:room", "broadcast", {"a": 1}),
                      exclude=1)
    assert sent == 2
    assert [len(r.frames) for _, r in chans] == [1, 0, 1, 0]
    assert chans[0][1].frames[0] != chans[2][1].frames[0]  # V1 object vs V2 array
    n = hub.fanout_user((False, "room"), UserBroadcast("realtime:room", "e", b"\x00", 0))
    assert n == 2 and isinstance(chans[1][1].frames[0], bytes)  # V1 gets no binary payload
    hub.remove(chans[3][0])
    assert hub.fanout((True, "room"), Message.fanout("realtime:room", "x", {})) == 0
    assert Message.error("3", "realtime:room").payload == {"reason": "channel_crash"}
