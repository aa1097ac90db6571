"""What the stack's servers share: its configuration, its keys and its database.

:class:`StackConfig` shapes one stack; :class:`StackContext` is handed to each server (Realtime,
REST, auth) by :class:`~supasync.devstack.app.Stack`. It lives apart from ``app`` so the servers
can name it without importing the gateway that starts them (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from .keys import StackKeys
from .postgres import Cluster

DEFAULT_PORT = 54321


@dataclass
class StackConfig:
    """Everything that shapes one stack. Defaults match a real Supabase project, except the
    real server's error back-offs, which are off unless asked for (they slow tests down)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path | None = None
    jwt_expiry: int = 3600
    jwt_secret: str | None = None
    max_record_bytes: int = 1_048_576
    max_rows: int | None = None  # PostgREST db-max-rows; Supabase: 1000 (None: no cap)
    connect_error_backoff_ms: int = 0  # real server: 2000
    join_error_backoff_ms: int = 0  # real server: 5000
    idle_timeout_s: float = 60.0
    poll_interval_ms: int = 100
    durable: bool = False  # fsync on; off by default: fast, not crash-safe
    # Tenant rate limits (realtime/limits.py); the real server's default is 100 for both,
    # None here: unlimited unless asked for.
    max_events_per_second: int | None = None
    max_joins_per_second: int | None = None
    sql_files: list[Path] = field(default_factory=list)


class StackContext:
    """What the servers share: the configuration, the keys and the database address."""

    def __init__(self, config: StackConfig, keys: StackKeys, cluster: Cluster) -> None:
        self.config = config
        self.keys = keys
        self.cluster = cluster

    @property
    def dsn(self) -> str:
        return self.cluster.dsn

    async def connect(self, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection as the superuser."""
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, **kwargs)
