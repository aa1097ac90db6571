"""Full reads of a table over PostgREST: disjoint key ranges read concurrently, pages ahead.

The full reads of :class:`~supasync.repair.repairer.Repairer` (a first snapshot or a read
model's full comparison through a :class:`~supasync.repair.repairer.PageWriter`), for the
library's cache and the mirror alike: until issue #13 the mirror had a page loop of its own,
and only it fetched ahead and split the key space.

* :func:`key_ranges` cuts an integer single-column key into ``streams`` ranges by its first
  and last value (two one-row reads); anything else is read as one range.
* :func:`ahead` reads several page sources concurrently: while this process decodes or writes
  one answer, the server is already producing the next ones. At most two pages per source
  wait in memory. Pages of different ranges arrive in no particular order, so callers that
  hand rows to someone who may care about key order (a handler receiving a snapshot) read one
  range: :func:`full_pages` with ``streams=1`` still fetches one page ahead.
* :func:`table_gone` tells a PostgREST error that says the table itself is not there (dropped,
  renamed, no longer readable by the role) from any other failure; :data:`MISSING_PROBLEM` is
  how both the gate and the mirror's status say it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TypeVar

from ..core.errors import RestError
from .rest import RawPage, Rest

__all__ = ["MIN_SPLIT", "MISSING_PROBLEM", "ahead", "full_pages", "key_ranges", "table_gone"]

_Page = TypeVar("_Page")

#: A key span below this is read as one range: the two extra reads and the extra requests
#: cost more than they save on a small table.
MIN_SPLIT = 20_000

#: What a table's status says while it is missing upstream.
MISSING_PROBLEM = ("table not found upstream (dropped, renamed, or no longer readable by this "
                   "role); checking again, repaired when it is back")


def table_gone(exc: BaseException) -> bool:
    """Whether a PostgREST error says the table itself is not there (dropped, renamed, or no
    longer visible to the role): ``PGRST205`` "Could not find the table", or SQLSTATE
    ``42P01``. Pure."""
    if not isinstance(exc, RestError):
        return False
    return exc.code in ("PGRST205", "42P01") or (
        exc.status == 404 and "could not find the table" in (exc.message or "").lower())


async def key_ranges(
    rest: Rest, schema: str, table: str, primary_key: Sequence[str],
    types: Mapping[str, str], filters: Sequence[tuple[str, str]], streams: int,
) -> list[list[tuple[str, str]]]:
    """PostgREST filters for *streams* disjoint ranges of an integer single-column key (by
    its first and last value among the rows *filters* keep); one unsplit range (``[[]]``)
    for any other key, an empty or small table, or ``streams < 2``."""
    pk = list(primary_key)
    if streams < 2 or len(pk) != 1 or types.get(pk[0]) not in ("int2", "int4", "int8",
                                                                "integer", "bigint",
                                                                "smallint"):
        return [[]]
    col = pk[0]
    ends = []
    for direction in ("asc", "desc"):
        rows = await rest.select(schema, table, [
            ("select", col), *filters, ("order", f"{col}.{direction}"), ("limit", "1")])
        if not rows:
            return [[]]
        ends.append(int(rows[0][col]))
    lo, hi = ends
    if hi - lo < MIN_SPLIT:
        return [[]]
    step = (hi - lo) // streams + 1
    cuts = [lo + i * step for i in range(1, streams)]
    out: list[list[tuple[str, str]]] = [[(col, f"lt.{cuts[0]}")]]
    for a, b in itertools.pairwise(cuts):
        out.append([(col, f"gte.{a}"), (col, f"lt.{b}")])
    out.append([(col, f"gte.{cuts[-1]}")])
    return out


async def ahead(sources: Sequence[AsyncIterator[_Page]], name: str = "table"
                ) -> AsyncIterator[_Page]:
    """Pages from *sources* (disjoint key ranges), fetched ahead while the caller handles the
    current one; a source's failure is raised here, and every source is cancelled when the
    caller stops early (see the module docstring)."""
    queue: asyncio.Queue[_Page | BaseException | None] = asyncio.Queue(2 * len(sources))

    async def produce(source: AsyncIterator[_Page]) -> None:
        try:
            async for page in source:
                await queue.put(page)
            await queue.put(None)
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put(exc)

    tasks = [asyncio.create_task(produce(source), name=f"supasync-pages-{name}")
             for source in sources]
    running = len(tasks)
    try:
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass


def full_pages(
    rest: Rest, schema: str, table: str, *, order: Sequence[str],
    filters: Sequence[tuple[str, str]], select: str, page_size: int,
    max_bytes: int | None = None,
    ranges: Sequence[Sequence[tuple[str, str]]] = ((),),
) -> AsyncIterator[RawPage]:
    """Keyset pages of *table* left undecoded, one source per key range of *ranges* (from
    :func:`key_ranges`), fetched ahead (:func:`ahead`). :meth:`Rest.raw_pages` reads to the
    end even from a server that caps answers below *page_size* (where a short page would
    look like the last one)."""
    return ahead([
        rest.raw_pages(schema, table, order=order, filters=[*filters, *extra], select=select,
                       page_size=page_size, max_bytes=max_bytes)
        for extra in ranges
    ], f"{schema}.{table}")
