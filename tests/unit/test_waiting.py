"""``wait_event`` keeps a cancellation that ``asyncio.wait_for`` on 3.11 swallows when the event
is set in the same loop iteration (the cause of ``supasync tail`` ignoring SIGTERM, issue #17),
and ``install_stop_signals`` hands the second signal back to its default action."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from supasync.core.waiting import install_stop_signals, restore_signals, wait_event


async def _set_and_cancel_together(waiter: object) -> bool:
    """Whether cancelling a loop that waits with *waiter* ends it, when the event it waits on is
    set in the same iteration as the cancel."""
    event = asyncio.Event()
    rounds = 0

    async def supervisor() -> None:
        nonlocal rounds
        while True:  # like Connection._watch
            rounds += 1
            event.clear()
            await waiter(event)  # type: ignore[operator]

    task = asyncio.create_task(supervisor())
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    except asyncio.CancelledError:
        return True
    except TimeoutError:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return False
    return task.cancelled()


async def test_wait_event_lets_a_simultaneous_cancellation_through() -> None:
    assert await _set_and_cancel_together(lambda e: wait_event(e, 10)) is True


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for was fixed in 3.12")
async def test_wait_for_swallows_it_on_311_which_is_why_wait_event_exists() -> None:
    assert await _set_and_cancel_together(lambda e: asyncio.wait_for(e.wait(), 10)) is False


async def test_wait_event_times_out_and_reports_a_set_event() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_first_signal_stops_second_gets_the_default_action() -> None:
    stop = asyncio.Event()
    installed = install_stop_signals(stop)
    try:
        assert set(installed) == {signal.SIGINT, signal.SIGTERM}
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
        assert installed == []  # handed back: the next SIGTERM would terminate
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        restore_signals(installed)
