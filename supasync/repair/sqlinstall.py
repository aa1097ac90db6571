"""Install, print and remove the SQL of exact-mode gap repair (``supasync sql``).

* :func:`render` returns the install script for some tables (the text ``supasync sql`` prints):
  :file:`supasync/repair/sql/exact.sql` with the table list and the retention filled in. It is
  idempotent: running it again re-creates the triggers (picking up a changed primary key), adds
  tables and updates the retention; tables installed before stay logged. With ``touch=COLUMN``
  it also installs :file:`supasync/repair/sql/touch.sql`: a BEFORE INSERT OR UPDATE trigger
  that sets *COLUMN* on every write, and the RPC ``supasync_cursor_columns()`` through which
  ``repair="auto"`` learns that the column is a cursor it may trust (``log=False`` installs
  only that, without the change log).
* :func:`apply` runs it against a database URL (``SUPABASE_DB_URL``) in one transaction.
* :func:`uninstall` removes everything (triggers, RPC, the ``supasync`` schema with its log).
* :func:`status` says what is installed (for ``verify`` and tests).

Table names are given as PostgreSQL would parse them (``todos``, ``public.todos``,
``public."My Table"``); the script looks each up with ``to_regclass`` and fails, naming the
table, if it does not exist or has no primary key.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ..core.errors import ConfigError

__all__ = [
    "CURSOR_RPC_NAME",
    "DEFAULT_RETENTION",
    "RPC_NAME",
    "InstallStatus",
    "apply",
    "render",
    "status",
    "uninstall",
    "uninstall_sql",
]

RPC_NAME = "supasync_changes"
CURSOR_RPC_NAME = "supasync_cursor_columns"
DEFAULT_RETENTION = _dt.timedelta(days=7)

# A PostgreSQL interval literal in words or ISO 8601 form; anything else is refused before it
# reaches SQL (it is placed in a quoted literal anyway).
_INTERVAL = re.compile(r"^[0-9A-Za-z .:+-]{1,64}$")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _interval(retention: _dt.timedelta | str) -> str:
    if isinstance(retention, _dt.timedelta):
        seconds = retention.total_seconds()
        if seconds <= 0:
            raise ConfigError(
                "the change-log retention must be positive",
                key="retention",
                value=str(retention),
                fix="give a duration such as 7 days",
            )
        return f"{_literal(f'{seconds:.6f} seconds')}::interval"
    if not _INTERVAL.match(retention.strip()):
        raise ConfigError(
            "the change-log retention is not an interval",
            key="retention",
            value=retention,
            fix="use PostgreSQL interval text such as '7 days' or '36 hours'",
        )
    return f"{_literal(retention.strip())}::interval"


def _sql(name: str) -> str:
    # Next to this module (works for installed, editable and namespace-package layouts alike).
    return (Path(__file__).parent / "sql" / name).read_text(encoding="utf-8")


def render(
    tables: Sequence[str],
    retention: _dt.timedelta | str = DEFAULT_RETENTION,
    *,
    touch: str | None = None,
    log: bool = True,
) -> str:
    """The install script for *tables*, keeping log entries for *retention*.

    Args:
        tables: the tables, as PostgreSQL parses names (``todos``, ``public.todos``).
        retention: how long change-log entries are kept.
        touch: a timestamp column (e.g. ``updated_at``) that a supasync trigger sets on every
            INSERT and UPDATE of *tables*; ``repair="auto"`` then trusts it as a cursor
            (reported by the RPC ``supasync_cursor_columns()``). None installs no trigger.
        log: install the exact-mode change log for *tables* (False: only the *touch* trigger).

    Raises:
        ConfigError: no tables, an empty name, a retention that is not an interval, an empty
            *touch* column, or nothing to install (``log=False`` without *touch*).
    """
    names = [t.strip() for t in tables]
    if not names or any(not n for n in names):
        raise ConfigError(
            "exact mode needs at least one table name",
            key="tables",
            value=list(tables),
            fix="name the tables to log, e.g. `supasync sql public.todos`",
        )
    array = "array[" + ", ".join(_literal(n) for n in names) + "]"
    if touch is not None and not touch.strip():
        raise ConfigError(
            "the cursor column to touch is empty",
            key="touch",
            value=touch,
            fix="name a timestamp column, e.g. --touch updated_at",
        )
    if not log and touch is None:
        raise ConfigError(
            "nothing to install: no change log and no cursor column to touch",
            key="touch",
            fix="give a column to touch (e.g. updated_at), or install the change log",
        )
    parts: list[str] = []
    if log:
        parts.append(
            _sql("exact.sql").replace("{{tables}}", array).replace(
                "{{retention}}", _interval(retention)
            )
        )
    if touch is not None:
        parts.append(
            _sql("touch.sql").replace("{{touch_tables}}", array).replace(
                "{{touch_column}}", _literal(touch.strip())
            )
        )
    return "\n".join(parts)


def uninstall_sql() -> str:
    """The removal script (idempotent)."""
    return _sql("uninstall.sql")


def _run(db_url: str, script: str) -> None:
    # No parameters: psycopg sends the script as one simple query, so it may hold many
    # statements; autocommit off makes it one transaction.
    with psycopg.connect(db_url) as conn:
        conn.execute(script.encode())
        conn.commit()


def apply(
    db_url: str,
    tables: Sequence[str],
    retention: _dt.timedelta | str = DEFAULT_RETENTION,
    *,
    touch: str | None = None,
    log: bool = True,
) -> None:
    """Install (or update) exact mode for *tables* in the database at *db_url* (and, with
    *touch*, the cursor trigger on that column; see :func:`render`).

    Needs a role that may create schemas, functions and triggers (Supabase's ``postgres``).

    Raises:
        ConfigError: bad arguments (see :func:`render`).
        psycopg.Error: the database refused (the message names the table when one is missing
            or lacks a primary key).
    """
    _run(db_url, render(tables, retention, touch=touch, log=log))


def uninstall(db_url: str) -> None:
    """Remove exact mode from the database at *db_url*; nothing happens if it is not there."""
    _run(db_url, uninstall_sql())


@dataclass(frozen=True)
class InstallStatus:
    """What :func:`status` found: installed tables (``schema.table`` -> key columns)."""

    installed: bool
    tables: dict[str, tuple[str, ...]]
    retention_s: float | None


def status(db_url: str) -> InstallStatus:
    """Which tables are logged, and the retention, in the database at *db_url*."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        found = conn.execute("select to_regclass('supasync.logged_tables') is not null").fetchone()
        if not found or not found[0]:
            return InstallStatus(False, {}, None)
        rows: list[tuple[Any, ...]] = conn.execute(
            "select schema_name || '.' || table_name, pk_columns from supasync.logged_tables "
            "order by 1"
        ).fetchall()
        ret = conn.execute(
            "select extract(epoch from retention)::float8 from supasync.settings"
        ).fetchone()
    return InstallStatus(
        True, {str(name): tuple(cols) for name, cols in rows}, float(ret[0]) if ret else None
    )
