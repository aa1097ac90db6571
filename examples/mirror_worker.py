"""A mirror worker embedded in your own program, and what you can do with the file.

    python examples/mirror_worker.py --table todos --db todos.sqlite
    python examples/mirror_worker.py --table todos --db todos.sqlite --once   # for cron

``supasync mirror`` is the ready-made command; this shows the library call behind it, for a
process that also wants to read the mirror (here: every few seconds, what changed in the local
file since the last look, from its change journal, without touching Supabase). Settings come
from the environment or ``.env``; use an identity that may read every row you want mirrored
(``SUPASYNC_TOKEN_SOURCE=service_role`` for a server-side mirror).

The mirror is an ordinary SQLite file: open it read-only from any other process (WAL mode lets
readers run while the worker writes)::

    sqlite3 'file:todos.sqlite?mode=ro' 'select count(*) from todos where not done'
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from supasync.client.config import load_settings
from supasync.core.errors import CacheError
from supasync.mirror.worker import MirrorOptions, mirror_targets, run_mirror
from supasync.store.reads import StoreReader
from supasync.store.tables import mirror_table_name


async def follow(db: Path, table: str, every: float) -> None:
    """Read the mirror like any other consumer would, from another thread: a count, then every
    change the worker applied since the last look, from the file's change journal."""
    reader: StoreReader | None = None
    position = 0
    while True:
        await asyncio.sleep(every)  # a periodic look
        if reader is None:
            try:
                reader = StoreReader(db)
            except CacheError:
                continue  # the worker has not created the file yet
        try:
            news = await asyncio.to_thread(reader.changes_since, table, position)
            count = await asyncio.to_thread(reader.count, table)
        except CacheError:
            continue  # the first snapshot has not created the table yet
        if news.must_refetch:
            print(f"{table}: {count} rows (a snapshot: read everything again)", flush=True)
        else:
            for e in news.entries:
                print(f"{table}: #{e.seq} {e.op} {list(e.pk or ())} ({e.origin})", flush=True)
        position = news.seq


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="todos")
    parser.add_argument("--db", type=Path, default=Path("mirror.sqlite"))
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    settings = load_settings()
    targets = mirror_targets([args.table], None, settings)
    options = MirrorOptions(db=args.db, once=args.once, status_interval=10.0)
    table = mirror_table_name(targets[0].schema, targets[0].table)  # its name in the file
    reader = asyncio.create_task(follow(args.db, table, 2.0))
    try:
        # Returns on SIGINT/SIGTERM (after committing the current batch) or, with --once,
        # after the snapshot/repair. Bad input raises ConfigError/CacheError before any write.
        return await run_mirror(settings, targets, options)
    finally:
        reader.cancel()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
