"""Run one mirrored table's repair the way ``supasync mirror --once`` does (its gate, the
library's CachedGate, on a mirror file), for tests that look at a single repair closely."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from supasync.client.watch import Repaired
from supasync.mirror.status import TableFigures
from supasync.mirror.table import MirrorTable, Progress, TableWatcher, shape_from_info
from supasync.repair.repairer import RepairConfig, RepairResult
from supasync.repair.rest import Rest
from supasync.store.cache import CacheFile
from supasync.store.tables import MirrorStore, TableShape


async def repair_table(
    store: MirrorStore, rest_url: str, api_key: str, token: Callable[[], Awaitable[str]],
    table: str, config: RepairConfig, *, progress: Progress | None = None,
    **gate_options: Any,
) -> tuple[RepairResult, Repaired, TableShape]:
    """One repair of ``public.<table>`` into *store* (a snapshot the first time); returns the
    repair's result, what it did, and the table's shape in the file afterwards. A failure of
    the server is raised."""
    rest = Rest(rest_url, api_key, token)
    try:
        shape = shape_from_info("public", table, await rest.table_info("public", table))
    finally:
        await rest.aclose()
    mirrored = MirrorTable("public", table, None, CacheFile.over(store), shape, config,
                           TableWatcher(TableFigures(f"public.{table}"), progress))
    result = await mirrored.repair_once(mirrored.gate(**gate_options), rest_url, api_key,
                                        token)
    assert result is not None and mirrored.watcher.last is not None
    stored = mirrored.cache.shape(mirrored.name)
    assert stored is not None
    return result, mirrored.watcher.last, stored
