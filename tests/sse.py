"""A small server-sent-events client for the tests of supasync.web: what an EventSource does
(parse ``id:``/``event:``/``data:``, remember the last id), over httpx or a raw socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Sse:
    """One dispatched event; ``event == ""`` for an ``id:``-only block (a position)."""

    id: int | None
    event: str
    data: Any = None


class Parser:
    """Feeds lines, yields events (WHATWG HTML, server-sent events, *interpreting a stream*)."""

    def __init__(self) -> None:
        self.id: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._saw_id = False

    def line(self, line: str) -> Sse | None:
        if line == "":
            out = None
            if self._data:
                text = "\n".join(self._data)
                out = Sse(self.id, self._event or "message", json.loads(text))
            elif self._saw_id:
                out = Sse(self.id, "")
            self._event, self._data, self._saw_id = "", [], False
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self.id, self._saw_id = int(value), True
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


@dataclass
class Stream:
    """One open stream, its events collected by a task; ``wait`` for a condition on them."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Sse] = field(default_factory=list)
    status: int | None = None
    ended: bool = False
    last_id: int | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def changes(self) -> list[Sse]:
        return [e for e in self.events if e.event in ("insert", "update", "delete")]

    async def _run(self, client: httpx.AsyncClient) -> None:
        parser = Parser()
        try:
            async with client.stream("GET", self.url, headers=self.headers,
                                     timeout=httpx.Timeout(60.0, read=None)) as resp:
                self.status = resp.status_code
                self._changed.set()
                if resp.status_code != 200:
                    await resp.aread()
                    self.events.append(Sse(None, "http-error", resp.json()))
                    return
                async for line in resp.aiter_lines():
                    ev = parser.line(line)
                    if ev is not None:
                        self.events.append(ev)
                        if ev.id is not None:
                            self.last_id = ev.id
                        self._changed.set()
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass
        finally:
            self.ended = True
            self._changed.set()

    def start(self, client: httpx.AsyncClient) -> Stream:
        self._task = asyncio.create_task(self._run(client))
        return self

    async def wait(self, check: Callable[[Stream], bool],
                   timeout: float = 30.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not check(self):
                if self.ended and not check(self):
                    raise AssertionError(f"stream ended; {len(self.events)} events, the last: "
                                         f"{str(self.events[-1:])[:300]}")
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def streams() -> AsyncIterator[Callable[..., Stream]]:
    """``open(url, headers=...)`` -> a started :class:`Stream`; all closed on exit."""
    opened: list[Stream] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None)) as client:

        def open_(url: str, headers: dict[str, str] | None = None) -> Stream:
            s = Stream(url, dict(headers or {})).start(client)
            opened.append(s)
            return s

        try:
            yield open_
        finally:
            for s in opened:
                await s.close()
