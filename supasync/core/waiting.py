"""Waiting without losing a cancellation, and stopping on SIGINT/SIGTERM without ignoring them.

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when the event is set in
the same loop iteration as the waiting task is cancelled: the cancellation is swallowed
(CPython gh-86296, fixed in 3.12 where ``wait_for`` is built on ``asyncio.timeout``). A
supervisor loop that waits like this in ``while True`` then never ends, and whatever awaits
it - ``aclose()``, and so the CLI's shutdown on SIGINT/SIGTERM - hangs for ever (issue #17:
``supasync tail`` alive minutes after SIGTERM). :func:`wait_event` uses ``asyncio.timeout``,
which always lets an outside cancellation through.

:func:`install_stop_signals` is how every long-running command (``tail``, ``mirror``) turns
SIGINT/SIGTERM into its orderly shutdown, and only the first one: the second gets the default
action, so no state of a command can make it deaf to signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["install_stop_signals", "restore_signals", "unless_stopped", "wait_event"]


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109
    """Wait until *event* is set or *timeout* seconds pass; return whether it is set.

    A cancellation of the caller always propagates (unlike ``asyncio.wait_for`` on 3.11).
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Run *work* until it ends or *stop* is set (then cancel it and return None; whatever
    the cancelled work raises on the way out is dropped: the caller is stopping)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


def install_stop_signals(stop: asyncio.Event) -> list[signal.Signals]:
    """Make SIGINT and SIGTERM set *stop* (a long-running command's orderly shutdown) - once.

    The first signal sets *stop* and gives both signals back their default action, so a second
    one interrupts (SIGINT: ``KeyboardInterrupt``) or terminates (SIGTERM) even if the shutdown
    itself were to hang. Returns the signals handled here, for :func:`restore_signals`. Must
    run inside the event loop, in the main thread (elsewhere nothing is installed).
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal() -> None:
        stop.set()
        restore_signals(installed)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    return installed


def restore_signals(installed: list[signal.Signals]) -> None:
    """Undo :func:`install_stop_signals` (idempotent; empties *installed*)."""
    loop = asyncio.get_running_loop()
    while installed:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(installed.pop())
