"""Reconnect and rejoin delays: jittered exponential backoff, capped, with no retry ceiling.

Pure policy, in the manner of websockets' ``client.backoff()``: no asyncio, no clock reads, no
global random state. The caller passes ``random`` (a ``() -> float in [0, 1)``) and, where time
matters, ``now`` (seconds on any monotonic clock).

Why these choices:

* **No ceiling.** realtime-py stops after ``max_retries`` attempts and leaves the client dead
  (docs/python-clients.md §3, "Outage longer than the retry budget"); a backend must outlast any
  outage, so :class:`Backoff` never runs out.
* **Jitter.** After a server restart every client reconnects at once; the "equal jitter" used here
  (half fixed, half random) spreads them out while keeping a floor, so a client never hammers a
  recovering server with near-zero delays.
* **Cap.** Waiting longer than ``cap`` (default 30 s) buys nothing and delays recovery.
* **Reset after stability.** A connection that stayed up for ``reset_after`` seconds earns a fresh
  start; one that flaps (up for a second, down again) keeps backing off instead of retrying at
  the initial delay for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Backoff", "BackoffPolicy", "delays", "jittered_delay"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The numbers of a backoff schedule.

    Attributes:
        initial: the first delay's nominal value (seconds).
        factor: growth per attempt.
        cap: the largest nominal delay.
        jitter: fraction of each delay that is random (0 = none, 1 = "full jitter"); the default
            0.5 is "equal jitter".
        reset_after: seconds a connection must stay up before the attempt count starts over.
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap <= 0:
            raise ValueError("backoff initial and cap must be positive")
        if self.factor < 1:
            raise ValueError("backoff factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")
        if self.reset_after < 0:
            raise ValueError("backoff reset_after must not be negative")


def jittered_delay(policy: BackoffPolicy, attempt: int, random: Callable[[], float]) -> float:
    """The delay before retry number ``attempt`` (1 for the first retry).

    The nominal delay is ``min(cap, initial * factor**(attempt-1))``; a ``jitter`` share of it is
    replaced by ``random() *`` that share. The result lies in ``[nominal*(1-jitter), nominal]``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    # Cap the exponent before computing the power so huge attempt counts cannot overflow.
    nominal = policy.initial
    for _ in range(attempt - 1):
        nominal *= policy.factor
        if nominal >= policy.cap:
            break
    nominal = min(policy.cap, nominal)
    fixed = nominal * (1.0 - policy.jitter)
    r = min(max(random(), 0.0), 1.0)
    return fixed + nominal * policy.jitter * r


def delays(policy: BackoffPolicy, random: Callable[[], float]) -> Iterator[float]:
    """An endless iterator of delays for attempts 1, 2, 3, ... (never exhausted)."""
    attempt = 0
    while True:
        attempt += 1
        yield jittered_delay(policy, attempt, random)


class Backoff:
    """Backoff state for one retry loop: attempt count plus the "stable since" mark.

    Call :meth:`failure` after a failed attempt (or a lost connection) to get the next delay, and
    :meth:`success` when an attempt succeeds. The count starts over only when the next failure
    comes at least ``reset_after`` seconds after the last success.
    """

    def __init__(self, policy: BackoffPolicy | None = None, *, random: Callable[[], float]) -> None:
        self.policy = policy or BackoffPolicy()
        self._random = random
        self.attempt = 0
        self._up_since: float | None = None

    def success(self, now: float) -> None:
        """An attempt succeeded at ``now``."""
        self._up_since = now

    def failure(self, now: float) -> float:
        """An attempt failed (or the connection was lost) at ``now``: the delay before retrying."""
        if self._up_since is not None and now - self._up_since >= self.policy.reset_after:
            self.attempt = 0
        self._up_since = None
        self.attempt += 1
        return jittered_delay(self.policy, self.attempt, self._random)

    def reset(self) -> None:
        """Start over (e.g. after the app changed the configuration)."""
        self.attempt = 0
        self._up_since = None
