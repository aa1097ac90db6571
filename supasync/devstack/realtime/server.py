"""Placeholder: replaced by the real server."""
from __future__ import annotations
from typing import Any
from aiohttp import web


class RealtimeServer:
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def add_routes(self, app: web.Application) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
