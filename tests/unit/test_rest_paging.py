"""The end-of-read rule of keyset paging (supasync.repair.rest.read_ended) and Rest.by_keys' reads
past a cap, without a server."""

from __future__ import annotations

import httpx
import pytest

from supasync.repair.rest import Rest, read_ended


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


# --------------------------------------------------------------------------- by_keys
# Rest.by_keys against a server that caps its answers below the chunk of keys asked: a
# stand-in for PostgREST's db-max-rows (this is the read loop's logic; the real server path is
# tests/integration/test_repair_cap.py).


class CappingServer:
    """Answers ``GET /items?id=in.(...)&id=gt.N&order=id.asc&limit=L`` from *rows*, at most
    *cap* rows per answer, with the total in ``Content-Range`` when asked (and *counts*)."""

    def __init__(self, rows: set[int], cap: int, counts: bool) -> None:
        self.rows, self.cap, self.counts = rows, cap, counts
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        wanted, after, limit = set(self.rows), -1, 10**9
        for name, value in request.url.params.multi_items():
            if name == "id" and value.startswith("in.("):
                wanted &= {int(v) for v in value[4:-1].split(",")}
            elif name == "id" and value.startswith("gt."):
                after = int(value[3:])
            elif name == "limit":
                limit = int(value)
        match = sorted(k for k in wanted if k > after)
        page = match[: min(limit, self.cap)]
        total = str(len(match)) if self.counts and "count=exact" in request.headers.get(
            "Prefer", "") else "*"
        span = f"0-{len(page) - 1}" if page else "*"
        return httpx.Response(200, json=[{"id": k} for k in page],
                              headers={"Content-Range": f"{span}/{total}"})


async def _by_keys(server: CappingServer, keys: list[int]) -> list[int]:
    async def token() -> str:
        return "t"

    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        rest = Rest("http://pgrst.test/rest/v1", "anon", token, client=client)
        rows = await rest.by_keys("public", "items", ["id"], [[k] for k in keys])
    return sorted(r["id"] for r in rows)


@pytest.mark.parametrize("counts", [True, False])
@pytest.mark.parametrize("cap", [7, 40, 100, 1000])
async def test_by_keys_reads_past_a_cap(cap: int, counts: bool) -> None:
    present = set(range(0, 600, 2))  # every other key exists: half the keys asked are gone
    keys = list(range(0, 500))
    server = CappingServer(present, cap, counts)
    assert await _by_keys(server, keys) == sorted(present & set(keys))


async def test_by_keys_takes_one_request_per_chunk_from_a_counting_server() -> None:
    server = CappingServer(set(range(0, 600, 2)), cap=1000, counts=True)
    await _by_keys(server, list(range(500)))
    assert server.requests == 5  # 100 keys per chunk, some of them gone: no second read
