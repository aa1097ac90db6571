"""The supasync demo: a local Supabase-compatible stack, a table, and changes arriving live.

Run it with ``scripts/demo``. It starts the local stack (PostgreSQL with logical decoding plus
the Realtime, REST and auth servers on one port), creates a table, subscribes to it with the
unmodified official client (realtime-py), writes rows and shows each change arriving with its
commit-to-arrival latency.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from datetime import datetime
from typing import Any

from realtime import AsyncRealtimeClient
from rich.console import Console
from rich.table import Table

from supasync.devstack.testing import StackProcess

console = Console()


def _commit_ms(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000


async def realtime_demo(stack: StackProcess) -> None:
    stack.sql(
        """
        create table if not exists public.demo_todos (
          id bigint generated always as identity primary key,
          task text not null,
          done boolean not null default false,
          updated_at timestamptz not null default now()
        );
        alter table public.demo_todos replica identity full;
        do $$ begin
          if not exists (select 1 from pg_publication_tables
                         where pubname = 'supabase_realtime' and tablename = 'demo_todos') then
            alter publication supabase_realtime add table public.demo_todos;
          end if;
        end $$;
        """
    )
    console.rule("[bold]1. realtime-py subscribes to public.demo_todos")
    client = AsyncRealtimeClient(f"ws://127.0.0.1:{stack.port}/realtime/v1",
                                 token=stack.service_role_key)
    arrived: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    subscribed = asyncio.Event()

    def on_change(payload: dict[str, Any]) -> None:
        arrived.put_nowait((time.time() * 1000, payload))

    def on_system(payload: Any) -> None:
        if getattr(payload, "message", "") == "Subscribed to PostgreSQL":
            subscribed.set()

    channel = client.channel("demo")
    channel.on_postgres_changes("*", on_change, table="demo_todos", schema="public")
    channel.on_system(on_system)
    await channel.subscribe()
    await asyncio.wait_for(subscribed.wait(), 30)
    console.print("[green]Subscribed to PostgreSQL[/green] — now writing rows.")

    writes = [
        "insert into demo_todos (task) values ('buy milk')",
        "insert into demo_todos (task) values ('write the docs')",
        "update demo_todos set done = true, updated_at = now() where task = 'buy milk'",
        "delete from demo_todos where task = 'write the docs'",
    ] + [f"insert into demo_todos (task) values ('task {i}')" for i in range(20)]
    table = Table("op", "record", "old_record", "commit→arrival ms")
    latencies: list[float] = []
    for sql in writes:
        await asyncio.to_thread(stack.sql, sql)
        at, payload = await asyncio.wait_for(arrived.get(), 10)
        data = payload["data"]
        lat = at - _commit_ms(data["commit_timestamp"])
        latencies.append(lat)
        if len(latencies) <= 6:
            table.add_row(data["type"], str(data.get("record", "")), str(data.get("old_record", "")),
                          f"{lat:.1f}")
    console.print(table)
    console.print(
        f"{len(latencies)} changes; commit→arrival p50 {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms (commit_timestamp has millisecond precision)."
    )
    await client.close()


def main() -> int:
    console.rule("[bold]supasync demo: starting the local stack")
    with StackProcess() as stack:
        console.print(f"SUPABASE_URL={stack.url}")
        console.print(f"SUPABASE_DB_URL={stack.db_url}")
        console.print("(keys are printed by `supasync dev`; hidden here)")
        asyncio.run(realtime_demo(stack))
    console.rule("[bold]done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
