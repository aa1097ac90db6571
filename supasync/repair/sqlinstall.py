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

Printing needs no database driver; :func:`apply`, :func:`uninstall` and :func:`status` import
psycopg when called (the ``db`` extra) and raise :class:`~supasync.core.errors.MissingExtra`,
naming ``pip install 'supasync[db]'``, without it.

Table names are given as PostgreSQL would parse them (``todos``, ``public.todos``,
``public."My Table"``); the script looks each up with ``to_regclass`` and fails, naming the
table, if it does not exist or has no primary key: :func:`apply` raises that as a
:class:`~supasync.core.errors.ConfigError` naming the table and the fix.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..core.errors import ConfigError
from ..core.extras import require

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


def _psycopg(feature: str) -> ModuleType:
    return require("psycopg", "db", feature)


def _run(db_url: str, script: str, feature: str) -> None:
    # No parameters: psycopg sends the script as one simple query, so it may hold many
    # statements; autocommit off makes it one transaction.
    with _psycopg(feature).connect(db_url) as conn:
        conn.execute(script.encode())
        conn.commit()


def _table_error(exc: BaseException, errors: ModuleType) -> ConfigError | None:
    """The script's own refusal of a table (``supasync: table ...``) as a ConfigError naming
    the table and the fix; None for any other database error. *errors* is ``psycopg.errors``
    (passed in: this module imports the driver only through :func:`_psycopg`)."""
    if not isinstance(exc, errors.UndefinedTable | errors.InvalidTableDefinition):
        return None
    diag = exc.diag
    if not (diag.message_primary or "").startswith("supasync: table"):
        return None
    table = diag.message_detail or "?"
    if isinstance(exc, errors.UndefinedTable):
        return ConfigError(
            f"table {table} does not exist",
            fix="create it first, check the name, or schema-qualify it (e.g. public.todos)")
    return ConfigError(
        f"table {table} has no primary key; exact mode needs one",
        fix="add a primary key to it, or use the cursor or diff repair mode for it")


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
        ConfigError: bad arguments (see :func:`render`), or a table that does not exist or
            has no primary key (named, with the fix; nothing is installed).
        MissingExtra: psycopg is not installed (``pip install 'supasync[db]'``).
        psycopg.Error: the database refused for another reason.
    """
    # Bad arguments are told before a missing driver.
    script = render(tables, retention, touch=touch, log=log)
    psycopg = _psycopg("applying the exact-mode SQL (supasync sql --apply)")
    try:
        _run(db_url, script, "applying the exact-mode SQL (supasync sql --apply)")
    except psycopg.Error as exc:
        refused = _table_error(exc, psycopg.errors)
        if refused is not None:
            raise refused from None
        raise


def uninstall(db_url: str) -> None:
    """Remove exact mode from the database at *db_url*; nothing happens if it is not there.

    Raises:
        MissingExtra: psycopg is not installed (``pip install 'supasync[db]'``).
        psycopg.Error: the database refused.
    """
    _run(db_url, uninstall_sql(), "removing the exact-mode SQL (supasync sql --uninstall)")


@dataclass(frozen=True)
class InstallStatus:
    """What :func:`status` found: installed tables (``schema.table`` -> key columns)."""

    installed: bool
    tables: dict[str, tuple[str, ...]]
    retention_s: float | None


def status(db_url: str) -> InstallStatus:
    """Which tables are logged, and the retention, in the database at *db_url*.

    Raises:
        MissingExtra: psycopg is not installed (``pip install 'supasync[db]'``).
        psycopg.Error: the database could not be read.
    """
    with _psycopg("reading the exact-mode install status").connect(db_url,
                                                                   autocommit=True) as conn:
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
