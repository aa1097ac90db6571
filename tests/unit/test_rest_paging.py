"""The end-of-read rule of keyset paging (supasync.rest.read_ended), without a server."""

from __future__ import annotations

from supasync.rest import read_ended


def pages_read(total: int, limit: int, cap: int | None) -> list[int]:
    """The page sizes a read takes from a server holding *total* rows that answers at most
    *cap* rows (None: no cap) when asked for *limit*."""
    got: list[int] = []
    left, most = total, 0
    while True:
        count = min(left, limit, cap if cap is not None else limit)
        left -= count
        got.append(count)
        if read_ended(count, limit, most):
            return got
        most = max(most, count)


def test_an_uncapped_read_ends_at_its_short_page() -> None:
    assert pages_read(2500, 1000, None) == [1000, 1000, 500]


def test_a_capped_read_goes_on_past_short_pages() -> None:
    # Supabase's default cap (1000) under a 5000-row key scan: every row is read.
    assert sum(pages_read(12_345, 5000, 1000)) == 12_345
    assert pages_read(2500, 5000, 1000) == [1000, 1000, 500]


def test_edge_cases() -> None:
    assert pages_read(0, 1000, None) == [0]
    assert pages_read(10, 1000, None) == [10, 0]  # one more request when it fits in one page
    assert pages_read(2000, 1000, None) == [1000, 1000, 0]
    assert pages_read(2000, 5000, 1000) == [1000, 1000, 0]
    assert read_ended(0, 10, 0) and not read_ended(10, 10, 0) and not read_ended(5, 10, 0)
    assert read_ended(5, 10, 7) and not read_ended(7, 10, 7)
