"""supasync.web.source.Hub without I/O: the shared ring of recent events, bounded in events
and bytes, and the positions it can serve from memory."""

from __future__ import annotations

from supasync.web.events import LiveEvent
from supasync.web.source import Batch, Hub


class NoSource:
    table = "t"

    def seq(self) -> int:
        return 0


def events(first: int, n: int, size: int = 90) -> tuple[LiveEvent, ...]:
    return tuple(LiveEvent(i, "t", "insert", (i,), {"id": i, "p": "x" * size}, "live",
                           None).encoded() for i in range(first, first + n))


async def test_the_ring_serves_what_it_covers_and_sends_older_positions_to_the_source() -> None:
    hub = Hub(NoSource(), ring=10, ring_bytes=1 << 20)  # type: ignore[arg-type]
    for i in range(1, 101, 5):
        hub._publish(Batch(events(i, 5), i + 4))
    assert hub.seq == 100 and len(hub._ring) <= 20
    got = hub.after(hub.covered, 1000)
    assert got is not None and [e.seq for e in got.events] == list(range(hub.covered + 1, 101))
    assert hub.after(hub.covered - 1, 10) is None  # older than the ring: read the journal
    part = hub.after(95, 2)
    assert part is not None and [e.seq for e in part.events] == [96, 97] and part.seq == 97
    assert hub.after(100, 10) == Batch((), 100)


async def test_the_ring_is_bounded_in_bytes_too() -> None:
    hub = Hub(NoSource(), ring=10_000, ring_bytes=2_000)  # type: ignore[arg-type]
    for i in range(1, 201, 10):
        hub._publish(Batch(events(i, 10, size=400), i + 9))
    assert hub._bytes <= 2 * 2_000 and hub._bytes == sum(len(e.wire) for e in hub._ring)
    assert hub.covered == hub._seqs[0] - 1


async def test_a_reset_voids_the_ring() -> None:
    hub = Hub(NoSource(), ring=10)  # type: ignore[arg-type]
    hub._publish(Batch(events(1, 5), 5))
    hub._publish(Batch((), 9, must_refetch=True, reason="snapshot"))
    assert hub.covered == 9 and hub.after(5, 10) is None and hub.after(9, 10) == Batch((), 9)
