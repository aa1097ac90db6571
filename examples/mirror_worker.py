"""A mirror worker embedded in your own program, and what you can do with the file.

    python examples/mirror_worker.py --table todos --db todos.sqlite
    python examples/mirror_worker.py --table todos --db todos.sqlite --once   # for cron

``supasync mirror`` is the ready-made command; this shows the library call behind it, for a
process that also wants to read the mirror (here: a line every few seconds with a count from
the local file, without touching Supabase). Settings come from the environment or ``.env``;
use an identity that may read every row you want mirrored (``SUPASYNC_TOKEN_SOURCE=service_role``
for a server-side mirror).

The mirror is an ordinary SQLite file: open it read-only from any other process (WAL mode lets
readers run while the worker writes)::

    sqlite3 'file:todos.sqlite?mode=ro' 'select count(*) from todos where not done'
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path

from supasync.client.config import load_settings
from supasync.mirror.worker import MirrorOptions, mirror_targets, run_mirror


def count_rows(db: Path, table: str) -> int | None:
    """Read the mirror like any other consumer would: a separate read-only connection."""
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (n,) = conn.execute(f'select count(*) from "{table}"').fetchone()
        return int(n)
    except sqlite3.OperationalError:
        return None  # the first snapshot has not created the table yet
    finally:
        conn.close()


async def report(db: Path, table: str, every: float) -> None:
    while True:
        await asyncio.sleep(every)  # a periodic report
        n = await asyncio.to_thread(count_rows, db, table)
        if n is not None:
            print(f"{table}: {n} rows in {db}", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="todos")
    parser.add_argument("--db", type=Path, default=Path("mirror.sqlite"))
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    settings = load_settings()
    targets = mirror_targets([args.table], None, settings)
    options = MirrorOptions(db=args.db, once=args.once, status_interval=10.0)
    reader = asyncio.create_task(report(args.db, targets[0].table, 5.0))
    try:
        # Returns on SIGINT/SIGTERM (after committing the current batch) or, with --once,
        # after the snapshot/repair. Bad input raises ConfigError/CacheError before any write.
        return await run_mirror(settings, targets, options)
    finally:
        reader.cancel()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
