"""postgres_changes frames read by supasync itself (supasync/client/frames.py), against the local
stack.

The real server sends ``Error 401`` / ``Error 400`` payloads with ``commit_timestamp: null``;
realtime-py's pydantic model rejects those frames and skips them, so without the tap an app never
learns that changes happened that it may not read.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from realtime import AsyncRealtimeClient

from supasync import Change, Realtime
from supasync.client.frames import REALTIME_CLIENT_LOGGER, TappedRealtimeClient
from supasync.core.backoff import BackoffPolicy
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


async def test_an_application_realtime_py_client_keeps_its_own_logging(
    stack: StackProcess,
) -> None:
    """supasync quiets realtime-py's loss records only for its own clients: a realtime-py
    client the application built logs a lost socket at ERROR as before."""
    TappedRealtimeClient(stack.realtime_url, token=stack.anon_key)  # installs the filter
    seen: asyncio.Queue[logging.LogRecord] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            loop.call_soon_threadsafe(seen.put_nowait, record)

    target = logging.getLogger(REALTIME_CLIENT_LOGGER)
    catch = Catch(logging.ERROR)
    target.addHandler(catch)
    client = AsyncRealtimeClient(stack.realtime_url, token=stack.anon_key, auto_reconnect=False)
    try:
        await client.connect()
        await asyncio.to_thread(stack.drop_connections)
        record = await asyncio.wait_for(seen.get(), WAIT)
        assert record.levelno == logging.ERROR
        assert record.getMessage().startswith("WebSocket connection closed with code")
    finally:
        target.removeHandler(catch)
        await client.close()
