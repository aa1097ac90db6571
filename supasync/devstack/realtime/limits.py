"""Tenant rate limits of the local Realtime server (realtime-protocol.md §10), off by default.

The real server counts per tenant with ``GenCounter``/``RateCounter``: 5 s ticks, 12 buckets,
the limit compared with the 60 s moving average ([S] ``lib/realtime/tenants.ex``,
``rate_counter``). Two of its limits are emulated, each enabled by ``supasync dev`` options
(``--max-events-per-second``, ``--max-joins-per-second``; the real defaults are 100 each, which
would throttle tests and benchmarks, so the local stack has none unless asked):

* **events per second**: client broadcast pushes, REST and database broadcasts, and every
  broadcast delivered to a channel count. While the average is over the limit, every channel
  that would receive a broadcast is shut down instead with the system error
  ``Too many messages per second`` and ``phx_close`` (presence and postgres_changes deliveries
  are neither counted nor refused).
* **joins per second**: every ``phx_join`` counts; over the limit the join is refused with
  ``ClientJoinRateLimitReached: Too many joins per second`` and the socket is closed (1001).

:class:`RateCounter` takes the clock as an argument (sans-I/O, unit-tested).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["EVENTS_TEXT", "JOINS_CODE", "JOINS_TEXT", "RateCounter", "TenantLimits"]

EVENTS_TEXT = "Too many messages per second"
JOINS_CODE = "ClientJoinRateLimitReached"
JOINS_TEXT = "Too many joins per second"

TICK_S = 5.0
BUCKETS = 12


class RateCounter:
    """Counts in ``tick``-second buckets; :meth:`average` is the mean per second over the last
    ``buckets`` ticks (the real server's 60 s moving average)."""

    def __init__(self, limit: float, *, tick: float = TICK_S, buckets: int = BUCKETS) -> None:
        self.limit = limit
        self.tick = tick
        self.buckets = buckets
        self._counts: deque[tuple[int, int]] = deque()  # (tick index, count)

    def add(self, n: int, now: float) -> None:
        index = int(now // self.tick)
        if self._counts and self._counts[-1][0] == index:
            self._counts[-1] = (index, self._counts[-1][1] + n)
        else:
            self._counts.append((index, n))
        self._trim(index)

    def _trim(self, index: int) -> None:
        while self._counts and self._counts[0][0] <= index - self.buckets:
            self._counts.popleft()

    def average(self, now: float) -> float:
        self._trim(int(now // self.tick))
        return sum(c for _, c in self._counts) / (self.tick * self.buckets)

    def over(self, now: float) -> bool:
        return self.average(now) > self.limit


@dataclass
class TenantLimits:
    """The enabled limits (None: unlimited)."""

    events_per_second: float | None = None
    joins_per_second: float | None = None
    events: RateCounter | None = field(init=False, default=None)
    joins: RateCounter | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.events_per_second is not None:
            self.events = RateCounter(self.events_per_second)
        if self.joins_per_second is not None:
            self.joins = RateCounter(self.joins_per_second)

    def join(self, now: float) -> bool:
        """Count a join; False when the joins limit refuses it."""
        if self.joins is None:
            return True
        self.joins.add(1, now)
        return not self.joins.over(now)

    def events_over(self, now: float) -> bool:
        return self.events is not None and self.events.over(now)

    def count_events(self, n: int, now: float) -> None:
        if self.events is not None:
            self.events.add(n, now)
