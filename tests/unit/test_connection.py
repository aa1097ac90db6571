"""Pure parts of the supervisor: heartbeat bookkeeping, shard assignment, channel outcomes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import websockets.exceptions
from websockets.frames import Close

from supasync.client.connection import (
    Connection,
    HeartbeatMonitor,
    Outcome,
    assign_shard,
    channel_outcome,
)
from supasync.client.subscription import Emit, PassThroughGate, Subscription, SubscriptionInfo
from supasync.core.errors import FilterRejected, TableNotPublished, Unauthorized
from supasync.core.status import ConnectionState, SubscriptionState


def test_heartbeat_due_sent_replied() -> None:
    m = HeartbeatMonitor(interval=10, timeout=5)
    m.start(now=100)
    assert not m.due(105)
    assert m.due(110)
    ref = m.sent(110)
    assert ref.startswith("supasync-hb-")
    assert not m.dead(114.9)
    m.replied(ref, 112)
    assert not m.dead(200)
    assert m.last_reply == 112
    assert m.next_deadline(112) == 120


def test_heartbeat_without_reply_is_dead_and_foreign_refs_do_not_count() -> None:
    m = HeartbeatMonitor(interval=10, timeout=5)
    m.start(0)
    ref = m.sent(10)
    m.replied(None, 11)  # realtime-py's own heartbeats have ref null
    m.replied("someone-else", 11)
    assert m.next_deadline(11) == 15
    assert m.dead(15)
    m.start(20)  # a new socket forgets the old heartbeats
    assert not m.dead(100) or m.due(100)
    del ref


def test_heartbeat_silence_during_joins_is_not_death() -> None:
    m = HeartbeatMonitor(interval=10, timeout=5)
    m.start(0)
    m.sent(10)
    assert not m.dead(30, joins_pending=3)  # the server answers nothing while joining
    assert m.next_deadline(30, joins_pending=3) == 30  # only the next send is pending
    assert m.dead(30, joins_pending=0)
    m.joins_settled(30)  # replies queued behind the joins get a full timeout from now
    assert not m.dead(34)
    assert m.dead(35)


def test_assign_shard_fills_sockets_up_to_the_limit() -> None:
    sizes: list[int] = []
    for _ in range(150):
        index = assign_shard(sizes, 100)
        if index == len(sizes):
            sizes.append(0)
        sizes[index] += 1
    assert sizes == [100, 50]
    assert assign_shard([100, 99], 100) == 1
    assert assign_shard([40, 100], 100) == 0  # a freed slot is reused


def system_error(message: str) -> Exception:
    # What realtime-py hands the subscribe callback for a system error (channel.py on_error).
    payload = {"channel": "x", "extension": "postgres_changes", "message": message}
    return Exception(json.dumps({**payload, "status": "error"}))


@pytest.mark.parametrize(
    ("message", "outcome", "typed"),
    [
        (
            "Unable to subscribe to changes with given parameters. Please check Realtime is "
            "enabled for the given connect parameters: [event: *, schema: public, table: nope]",
            Outcome.FAILED,
            TableNotPublished,
        ),
        ('Error parsing `filter` params: ["wrong"]', Outcome.FAILED, FilterRejected),
        (
            "Unable to subscribe to changes with given parameters. An exception happened so "
            "please check your connect parameters: [...]. Exception: ERROR P0001 "
            "(raise_exception) invalid column for filter notacolumn",
            Outcome.FAILED,
            FilterRejected,
        ),
        ("Token has expired 0 seconds ago", Outcome.TOKEN, Unauthorized),
        ('{:error, "Too many database timeouts"}', Outcome.RETRY, None),
    ],
)
def test_system_errors(message: str, outcome: Outcome, typed: type | None) -> None:
    got, _reason, error = channel_outcome("CHANNEL_ERROR", system_error(message), "s")
    assert got is outcome
    if typed is not None:
        assert isinstance(error, typed)
        assert error.subscription == "s"


def test_join_error_reply_uses_the_reason() -> None:
    err = Exception(json.dumps({"reason": "MalformedJWT: The token provided is not a valid JWT"}))
    got, _, error = channel_outcome("CHANNEL_ERROR", err, "s")
    assert got is Outcome.FAILED and isinstance(error, Unauthorized)


def test_socket_closes_are_socket_outcomes() -> None:
    clean = websockets.exceptions.ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)
    broken = websockets.exceptions.ConnectionClosedError(None, None, None)
    restart = websockets.exceptions.ConnectionClosedError(Close(1012, ""), None, None)
    assert channel_outcome("CHANNEL_ERROR", clean, "s")[:2] == (Outcome.SOCKET, "close")
    assert channel_outcome("CHANNEL_ERROR", restart, "s")[:2] == (Outcome.SOCKET, "close")
    assert channel_outcome("CHANNEL_ERROR", broken, "s")[:2] == (Outcome.SOCKET, "drop")


def test_other_states() -> None:
    assert channel_outcome("SUBSCRIBED", None, "s")[0] is Outcome.JOINED
    assert channel_outcome("TIMED_OUT", None, "s")[0] is Outcome.RETRY
    assert channel_outcome("CLOSED", None, "s")[0] is Outcome.RETRY
    mismatch = Exception("mismatch between server and client bindings for postgres changes")
    assert channel_outcome("CHANNEL_ERROR", mismatch, "s")[0] is Outcome.FAILED


class _Tokens:
    api_key = "anon"

    async def token(self) -> str:
        return "t"

    async def refresh(self, *, reason: str) -> str:
        return "t"

    def on_change(self, callback: object) -> Callable[[], None]:
        return lambda: None


class _SlowOpenGate(PassThroughGate):
    async def open(self, info: SubscriptionInfo, emit: Emit) -> None:
        await asyncio.sleep(0)  # a gate doing I/O yields while opening
        await super().open(info, emit)


async def test_concurrent_adds_are_sharded_correctly() -> None:
    conn = Connection("ws://127.0.0.1:9/realtime/v1", _Tokens())
    subs = [Subscription("t", name=f"s{i}", gate=_SlowOpenGate()) for i in range(150)]
    await asyncio.gather(*(conn.add(s) for s in subs))
    assert sorted(len(s.members) for s in conn._shards) == [50, 100]
    assert conn.shard_count == 2
    assert all(conn.state_of(s.name) is SubscriptionState.PENDING for s in subs)
    await conn.aclose()
    assert conn.status.state is ConnectionState.STOPPED
    assert all(s.closed for s in subs)


def test_token_expiries_rejoin_at_once_however_often_they_come() -> None:
    """Issue #17: with expiries every 20 s (less than reset_after), the time from an expiry to
    the rejoin grew 0.2, 1.0, 1.4, 3.9, 7.7 ... 20 s, because each expiry counted as a failure.
    An expiry is not a failure: every one rejoins at once, and a real failure afterwards still
    gets the first delay."""
    from supasync.client.connection import rejoin_delay
    from supasync.core.backoff import Backoff, BackoffPolicy

    backoff = Backoff(BackoffPolicy(initial=0.5, reset_after=30.0), random=lambda: 1.0)
    now = 0.0
    for _ in range(20):
        backoff.success(now)  # "Subscribed" again
        now += 20.0  # the next expiry, sooner than reset_after
        assert rejoin_delay(Outcome.TOKEN, "token-expired", backoff, now,
                            fresh_token_tried=False) == 0.0
    assert rejoin_delay(Outcome.RETRY, "join failed", backoff, now + 1,
                        fresh_token_tried=False) == 0.5


def test_an_expiry_the_fresh_token_did_not_fix_backs_off() -> None:
    from supasync.client.connection import rejoin_delay
    from supasync.core.backoff import Backoff, BackoffPolicy

    backoff = Backoff(BackoffPolicy(initial=0.5), random=lambda: 1.0)
    assert rejoin_delay(Outcome.TOKEN, "token-expired", backoff, 0.0,
                        fresh_token_tried=False) == 0.0
    first = rejoin_delay(Outcome.TOKEN, "token-expired", backoff, 0.1, fresh_token_tried=True)
    second = rejoin_delay(Outcome.TOKEN, "token-expired", backoff, 0.2, fresh_token_tried=True)
    assert 0 < first < second
    assert rejoin_delay(Outcome.RETRY, "RateLimitReached: too many joins", backoff, 0.3,
                        fresh_token_tried=False) >= 10.0
