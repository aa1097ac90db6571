"""The official supabase-py AsyncClient, unmodified, against the local stack with 12-second
tokens: signed in as a user, it keeps receiving postgres_changes for 30 s through many
refreshes (its own auth timer calls ``realtime.set_auth`` with each new token), and RLS limits
it to the user's own rows.

Why 12 s and not 5: supabase-auth refreshes ``EXPIRY_MARGIN`` (10 s) before ``exp`` when the
token lives longer than that, but only 0.5 s before it otherwise, from a ``round(time.time())``
clock - so a 5 s token is often pushed to the channel at or after its ``exp``, and the server
(ours, like the real one) closes the channel with "Token has expired", which realtime-py never
rejoins. That race is the official client's (python-clients.md section 3), not the stack's; it
failed this test once in a loaded CI run. With 12 s tokens the client refreshes 2 s after each
issue, a dozen times in 30 s."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from supabase import acreate_client

from supasync.devstack.testing import StackProcess

DURATION_S = 30.0
INTERVAL_S = 0.5


async def test_async_client_keeps_receiving_through_refreshes(
    supabase_stack_factory: Callable[..., StackProcess],
) -> None:
    data_dir = tempfile.mkdtemp(prefix="supasync-sbpy-")
    os.chmod(data_dir, 0o755)
    stack = supabase_stack_factory(jwt_expiry=12, data_dir=data_dir)
    stack.sql("""
        create table public.notes (id bigint generated always as identity primary key,
                                   owner uuid not null, body text);
        alter table public.notes enable row level security;
        create policy own_notes on public.notes for select to authenticated
          using (owner = auth.uid());
        alter publication supabase_realtime add table public.notes;
    """)
    email, password = f"u{uuid.uuid4().hex[:8]}@example.com", "a-long-password-1"
    me = stack.create_user(email, password)["id"]
    other = stack.create_user(f"o{uuid.uuid4().hex[:8]}@example.com", password)["id"]

    client = await acreate_client(stack.url, stack.anon_key)
    await client.auth.sign_in_with_password({"email": email, "password": password})
    received: list[str] = []
    subscribed = asyncio.Event()
    tokens: set[str] = set()
    expected: set[str] | None = None
    all_in = asyncio.Event()

    def check() -> None:
        if expected is not None and expected <= set(received):
            all_in.set()

    def on_insert(payload: dict[str, Any]) -> None:
        received.append(payload["data"]["record"]["body"])
        check()

    def on_system(payload: Any) -> None:
        if getattr(payload, "message", "") == "Subscribed to PostgreSQL":
            subscribed.set()

    channel = client.channel("notes")
    channel.on_postgres_changes("INSERT", on_insert, table="notes", schema="public")
    channel.on_system(on_system)
    await channel.subscribe()
    await asyncio.wait_for(subscribed.wait(), 30)

    sent: list[str] = []
    deadline = time.monotonic() + DURATION_S
    i = 0
    while time.monotonic() < deadline:
        body = f"note-{i}"
        await asyncio.to_thread(
            stack.sql, "insert into notes (owner, body) values (%s, %s), (%s, %s)",
            (me, body, other, f"hidden-{i}"),
        )
        sent.append(body)
        tokens.add(str(client.realtime.access_token))
        i += 1
        await asyncio.sleep(INTERVAL_S)  # pacing the writer, not synchronisation

    expected = set(sent)
    check()
    try:
        await asyncio.wait_for(all_in.wait(), 15)
    finally:
        await client.remove_all_channels()
        await client.auth.sign_out()
    assert set(received) == set(sent)  # every one of mine, none of the other user's
    assert len(tokens) >= 4, "the client's token should have been refreshed several times"
