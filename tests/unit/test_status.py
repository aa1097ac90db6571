"""Status model: the transition tables, observe(), and the StatusStream."""

from __future__ import annotations

import asyncio

import pytest

from supasync.core.status import (
    CONNECTION_TRANSITIONS,
    ConnectionState,
    GapOpened,
    GapRepaired,
    HandlerFailed,
    IllegalTransition,
    Observation,
    StateChanged,
    StatusStream,
    SubscriptionEvent,
    SubscriptionState,
    SubscriptionStateChanged,
    next_connection_state,
    next_subscription_state,
    observe,
    utcnow,
)

C = ConnectionState
S = SubscriptionState
E = SubscriptionEvent
O = Observation  # noqa: E741


def changed(state: ConnectionState, reason: str = "test") -> StateChanged:
    return StateChanged(state, utcnow(), reason)


# --------------------------------------------------------------------------- tables


def test_connection_table_is_total() -> None:
    for state in ConnectionState:
        for observation in Observation:
            assert (state, observation) in CONNECTION_TRANSITIONS


def test_stopped_is_terminal() -> None:
    for observation in Observation:
        assert next_connection_state(C.STOPPED, observation) is C.STOPPED


@pytest.mark.parametrize(
    ("state", "observation", "expected"),
    [
        (C.CONNECTING, O.JOINING, C.CONNECTING),
        (C.CONNECTING, O.ALL_LIVE, C.LIVE),
        (C.LIVE, O.DOWN, C.RECONNECTING),
        (C.LIVE, O.PARTIAL, C.DEGRADED),
        (C.RECONNECTING, O.ALL_LIVE, C.LIVE),
        (C.RECONNECTING, O.JOINING, C.CONNECTING),
        (C.LIVE, O.JOINING, C.CONNECTING),
        (C.CONNECTING, O.FAILED, C.DEGRADED),
        (C.DEGRADED, O.STOP, C.STOPPED),
    ],
)
def test_connection_transitions(
    state: ConnectionState, observation: Observation, expected: ConnectionState
) -> None:
    assert next_connection_state(state, observation) is expected


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (S.PENDING, E.SUBSCRIBED, S.LIVE),
        (S.PENDING, E.LOST, S.PENDING),
        (S.LIVE, E.LOST, S.GAP),
        (S.LIVE, E.SUBSCRIBED, S.LIVE),  # repeated after access_token refresh
        (S.GAP, E.SUBSCRIBED, S.LIVE),
        (S.GAP, E.FAILED, S.FAILED),
        (S.FAILED, E.CLOSED, S.CLOSED),
    ],
)
def test_subscription_transitions(
    state: SubscriptionState, event: SubscriptionEvent, expected: SubscriptionState
) -> None:
    assert next_subscription_state(state, event) is expected


def test_failed_cannot_become_live() -> None:
    with pytest.raises(IllegalTransition, match="failed"):
        next_subscription_state(S.FAILED, E.SUBSCRIBED)
    with pytest.raises(IllegalTransition):
        next_subscription_state(S.CLOSED, E.SUBSCRIBED)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], O.ALL_LIVE),
        ([S.LIVE, S.LIVE], O.ALL_LIVE),
        ([S.PENDING, S.LIVE], O.JOINING),
        ([S.GAP, S.LIVE], O.PARTIAL),
        ([S.FAILED, S.LIVE], O.PARTIAL),
        ([S.GAP, S.PENDING], O.DOWN),
        ([S.FAILED, S.PENDING], O.FAILED),
        ([S.LIVE, S.CLOSED], O.ALL_LIVE),
    ],
)
def test_observe(states: list[SubscriptionState], expected: Observation) -> None:
    assert observe(states) is expected


# --------------------------------------------------------------------------- stream


async def test_state_and_history_follow_published_events() -> None:
    stream = StatusStream()
    assert stream.state is C.CONNECTING
    stream.publish(SubscriptionStateChanged("a", S.LIVE, utcnow(), "x", S.PENDING))
    stream.publish(changed(C.LIVE))
    assert stream.state is C.LIVE
    assert stream.subscriptions == {"a": S.LIVE}
    assert [type(e) for e in stream.history] == [SubscriptionStateChanged, StateChanged]


async def test_every_iterator_gets_every_event_and_ends_on_close() -> None:
    stream = StatusStream()
    got: list[list[object]] = [[], []]
    started = [asyncio.Event(), asyncio.Event()]

    async def read(i: int) -> None:
        iterator = stream.__aiter__()
        first = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0)  # let the generator register its reader
        started[i].set()
        got[i].append(await first)
        async for event in iterator:
            got[i].append(event)

    tasks = [asyncio.create_task(read(i)) for i in range(2)]
    await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 5)
    events = [changed(C.LIVE), GapOpened("a", utcnow(), "drop"), changed(C.RECONNECTING)]
    for event in events:
        stream.publish(event)
    stream.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert got[0] == events
    assert got[1] == events


async def test_slow_reader_drops_oldest_instead_of_blocking() -> None:
    stream = StatusStream(reader_buffer=2)
    iterator = stream.__aiter__()
    pending = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0)
    events = [GapOpened(str(i), utcnow(), "drop") for i in range(5)]
    for event in events:
        stream.publish(event)  # never blocks
    first = await asyncio.wait_for(pending, 5)
    rest = [await iterator.__anext__()]
    assert first in events
    assert rest[-1] == events[-1]
    await iterator.aclose()  # type: ignore[attr-defined]
    assert stream.dropped >= 2


async def test_wait_for_state_returns_at_once_when_already_there() -> None:
    stream = StatusStream()
    event = await stream.wait_for(C.CONNECTING, timeout=0.1)
    assert isinstance(event, StateChanged)


async def test_wait_for_state_and_predicate() -> None:
    stream = StatusStream()
    live = asyncio.create_task(stream.wait_for(C.LIVE, timeout=5))
    repaired = asyncio.create_task(
        stream.wait_for(lambda e: isinstance(e, GapRepaired) and e.subscription == "b", 5)
    )
    await asyncio.sleep(0)
    stream.publish(changed(C.LIVE))
    now = utcnow()
    stream.publish(GapRepaired("a", now, now, 0.0, "none"))
    stream.publish(GapRepaired("b", now, now, 0.0, "none"))
    assert (await live).state is C.LIVE  # type: ignore[union-attr]
    assert (await repaired).subscription == "b"  # type: ignore[union-attr]


async def test_wait_for_times_out_with_a_clear_message() -> None:
    stream = StatusStream()
    with pytest.raises(TimeoutError, match="live"):
        await stream.wait_for(C.LIVE, timeout=0.01)


async def test_callbacks_sync_and_async_and_failures_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = StatusStream()
    seen: list[object] = []
    done = asyncio.Event()

    def bad(event: object) -> None:
        raise RuntimeError("callback bug")

    async def good_async(event: object) -> None:
        seen.append(("async", event))
        done.set()

    stream.subscribe(bad)
    unsubscribe = stream.subscribe(lambda e: seen.append(("sync", e)))
    stream.subscribe(good_async)
    event = HandlerFailed("a", "h", ValueError("x"), ("public", "t", (1,)))
    stream.publish(event)
    await asyncio.wait_for(done.wait(), 5)
    assert ("sync", event) in seen and ("async", event) in seen
    assert "callback bug" in caplog.text
    unsubscribe()
    stream.publish(changed(C.LIVE))
    assert sum(1 for kind, _ in seen if kind == "sync") == 1  # type: ignore[misc]


async def test_publish_after_close_is_ignored() -> None:
    stream = StatusStream()
    stream.close()
    stream.publish(changed(C.LIVE))
    assert stream.state is C.CONNECTING
    async for _ in stream:
        raise AssertionError("a closed stream yields nothing")


def test_unrepaired_follows_gaps_and_their_repairs() -> None:
    stream = StatusStream()
    now = utcnow()
    stream.publish(GapOpened("a", now, "first-join"))
    stream.publish(GapOpened("b", now, "first-join"))
    assert stream.unrepaired == {"a", "b"}
    stream.publish(GapRepaired("a", now, now, 0.0, "snapshot"))
    assert stream.unrepaired == {"b"}
    stream.publish(GapOpened("a", now, "drop"))
    assert stream.unrepaired == {"a", "b"}
    stream.publish(SubscriptionStateChanged("b", S.FAILED, now, "bad filter", S.PENDING))
    stream.publish(GapRepaired("a", now, now, 0.0, "exact"))
    assert stream.unrepaired == frozenset()
