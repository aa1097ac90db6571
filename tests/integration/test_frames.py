"""postgres_changes frames read by supasync itself (supasync/frames.py), against the local stack.

The real server sends ``Error 401`` / ``Error 400`` payloads with ``commit_timestamp: null``;
realtime-py's pydantic model rejects those frames and skips them, so without the tap an app never
learns that changes happened that it may not read.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from supasync import Change, Realtime
from supasync.backoff import BackoffPolicy
from supasync.devstack.testing import StackProcess

WAIT = 30.0


@pytest.fixture
async def table(stack: StackProcess) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:10]}"
    # The subscriber may read `title` but not the key: the server cannot say which row changed.
    stack.sql(
        f"""
        create table {name} (id bigint primary key, title text);
        revoke all on {name} from anon, authenticated;
        grant select (title) on {name} to authenticated;
        alter publication supabase_realtime add table {name};
        """
    )
    yield name


async def test_an_error_401_change_reaches_the_handler_as_partial(
    stack: StackProcess, table: str
) -> None:
    user = str(uuid.uuid4())
    token = stack.mint({"role": "authenticated", "sub": user})
    got: asyncio.Queue[Change] = asyncio.Queue()
    rt = Realtime(stack.url, stack.anon_key, token=token, repair="off",
                  backoff=BackoffPolicy(initial=0.1, cap=1.0))
    rt.subscribe(table, handler=got.put)
    async with rt:
        await rt.wait_live(WAIT)
        await asyncio.to_thread(stack.sql, f"insert into {table} values (1, 'hidden')")
        change = await asyncio.wait_for(got.get(), WAIT)
    assert change.op == "INSERT"
    assert change.errors == ("Error 401: Unauthorized",)
    assert change.partial and change.pk == () and change.commit_timestamp is None
    assert change.new is None
