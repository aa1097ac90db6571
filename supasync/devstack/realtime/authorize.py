"""The SQL side of postgres_changes authorisation: catalog facts, subscribe-time validation,
column privileges and the RLS visibility check.

Behaviour from realtime-protocol.md §5.1 (what the ``subscription_check_filters`` trigger
rejects and with which texts) and §5.3 step 4 (RLS: run ``select exists(...)`` for the row's
primary key with the subscriber's role and ``request.jwt.claims`` set transaction-locally, at
poll time). Written for supasync; identifiers and type names always come from pg_catalog
(``format('%I.%I')``, ``regtype``), never from client input, and client values only travel as
bound parameters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .pg_filters import IS_KEYWORDS, MAX_IN_VALUES, Filter, ParamsError, SubscriptionParams

PUBLICATION = "supabase_realtime"


@dataclass(frozen=True)
class TableColumn:
    name: str
    typname: str  # pg_type.typname, as in the payload's "columns"
    type_sql: str  # atttypid::regtype::text, for casts
    is_pk: bool


@dataclass(frozen=True)
class TableMeta:
    relid: int
    schema: str
    table: str
    qualified: str  # format('%I.%I')
    rls: bool
    columns: tuple[TableColumn, ...]  # attribute order
    pk: tuple[str, ...] = ()  # primary-key column names, attribute order

    def __post_init__(self) -> None:
        object.__setattr__(self, "pk", tuple(c.name for c in self.columns if c.is_pk))


async def load_tables(
    conn: psycopg.AsyncConnection[Any], relids: Iterable[int]
) -> dict[int, TableMeta]:
    """Catalog facts for each table (missing tables are left out)."""
    ids = sorted(set(relids))
    if not ids:
        return {}
    cur = await conn.execute(
        """
        select c.oid::int8, n.nspname, c.relname, format('%%I.%%I', n.nspname, c.relname),
               c.relrowsecurity,
               array_agg(a.attname order by a.attnum),
               array_agg(t.typname::text order by a.attnum),
               array_agg(a.atttypid::regtype::text order by a.attnum),
               array_agg(coalesce(a.attnum = any(pk.conkey), false) order by a.attnum)
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
        join pg_type t on t.oid = a.atttypid
        left join pg_constraint pk on pk.conrelid = c.oid and pk.contype = 'p'
        where c.oid = any(%s::oid[])
        group by c.oid, n.nspname, c.relname, c.relrowsecurity
        """,
        [ids],
    )
    out: dict[int, TableMeta] = {}
    for relid, schema, table, qualified, rls, names, typnames, types, pks in await cur.fetchall():
        cols = tuple(
            TableColumn(n, tn, ts, bool(p))
            for n, tn, ts, p in zip(names, typnames, types, pks, strict=True)
        )
        out[int(relid)] = TableMeta(int(relid), schema, table, qualified, bool(rls), cols)
    return out


async def selectable_columns(
    conn: psycopg.AsyncConnection[Any], pairs: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], frozenset[str]]:
    """For each (role, table), the columns the role may SELECT (unknown roles: none)."""
    pairs = sorted(set(pairs))
    if not pairs:
        return {}
    cur = await conn.execute(
        """
        select x.r, x.rel::int8, coalesce(array_agg(a.attname) filter (
                 where exists (select 1 from pg_roles where rolname = x.r)
                   and has_column_privilege(x.r, a.attrelid, a.attnum, 'SELECT')), '{}')
        from unnest(%s::text[], %s::oid[]) as x(r, rel)
        join pg_attribute a on a.attrelid = x.rel and a.attnum > 0 and not a.attisdropped
        group by x.r, x.rel
        """,
        [[p[0] for p in pairs], [p[1] for p in pairs]],
    )
    out = {(r, int(rel)): frozenset(cols) for r, rel, cols in await cur.fetchall()}
    for p in pairs:
        out.setdefault(p, frozenset())
    return out


@dataclass
class RlsCheck:
    """One row whose visibility to one set of claims must be checked."""

    table: TableMeta
    pk_values: tuple[str | None, ...]  # text forms, in ``table.pk`` order


async def visible(
    conn: psycopg.AsyncConnection[Any],
    role: str,
    claims: dict[str, Any],
    checks: Sequence[RlsCheck],
) -> list[bool]:
    """Which rows ``role`` with these claims can SELECT right now, through RLS (§5.3 step 4).

    One transaction for the whole list, one statement per table. Any error (unknown role, no
    table privilege) counts as "not visible".
    """
    result = [False] * len(checks)
    by_table: dict[int, list[int]] = {}
    for i, c in enumerate(checks):
        by_table.setdefault(c.table.relid, []).append(i)
    try:
        async with conn.transaction():
            await conn.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                [role, json.dumps(claims)],
            )
            for idxs in by_table.values():
                table = checks[idxs[0]].table
                pk_cols = [c for c in table.columns if c.is_pk]
                arrays: list[Any] = [idxs]
                unnest_args = [sql.SQL("%s::int[]")]
                aliases = [sql.Identifier("i")]
                conds = []
                for k, col in enumerate(pk_cols):
                    arrays.append([checks[i].pk_values[k] for i in idxs])
                    unnest_args.append(sql.SQL("%s::text[]"))
                    alias = sql.Identifier(f"k{k}")
                    aliases.append(alias)
                    conds.append(
                        sql.SQL("t.{col} = x.{alias}::{typ}").format(
                            col=sql.Identifier(col.name), alias=alias, typ=sql.SQL(col.type_sql)
                        )
                    )
                query = sql.SQL(
                    "select array(select x.i from unnest({args}) as x({aliases}) "
                    "where exists (select 1 from {table} t where {conds}))"
                ).format(
                    args=sql.SQL(", ").join(unnest_args),
                    aliases=sql.SQL(", ").join(aliases),
                    table=sql.SQL(table.qualified),
                    conds=sql.SQL(" and ").join(conds),
                )
                cur = await conn.execute(query, arrays)
                row = await cur.fetchone()
                for i in row[0] if row else []:
                    result[i] = True
            # read-only work: roll back rather than commit
            raise psycopg.Rollback
    except psycopg.Error:
        return [False] * len(checks)
    return result


# -- subscribe-time validation ---------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_text(exc: psycopg.Error) -> str:
    """Render a database error the way the server's Postgrex errors print:
    ``ERROR 22P02 (invalid_text_representation) invalid input syntax ...``."""
    diag = exc.diag
    severity = diag.severity_nonlocalized or diag.severity or "ERROR"
    code = diag.sqlstate or "XX000"
    name = _snake(type(exc).__name__)
    return f"{severity} {code} ({name}) {diag.message_primary or str(exc)}"


class _Raise(Exception):
    """A ``raise exception`` of the server's trigger (SQLSTATE P0001)."""


async def published_tables(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str
) -> list[int]:
    """OIDs of published tables matching the (LIKE, ``*`` = all) patterns (§5.1)."""
    cur = await conn.execute(
        """
        select format('%%I.%%I', p.schemaname, p.tablename)::regclass::oid::int8
        from pg_publication_tables p
        where p.pubname = %s
          and p.schemaname like (case %s when '*' then '%%' else %s end) escape ''
          and p.tablename like (case %s when '*' then '%%' else %s end) escape ''
        order by p.schemaname, p.tablename
        """,
        [PUBLICATION, schema, schema, table, table],
    )
    return [int(r[0]) for r in await cur.fetchall()]


async def _one(conn: psycopg.AsyncConnection[Any], query: str, params: Sequence[Any]) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return row[0] if row else None


async def _check_table(
    conn: psycopg.AsyncConnection[Any], relid: int, p: SubscriptionParams, role: str | None
) -> None:
    cols = await _one(
        conn,
        "select coalesce(array_agg(attname order by attnum), '{}') from pg_attribute"
        " where attrelid = %s and attnum > 0 and not attisdropped"
        " and has_column_privilege(%s::text, attrelid, attnum, 'SELECT')",
        [relid, role],
    )
    readable = set(cols or [])
    for f in p.filters:
        if f.column not in readable:
            raise _Raise(f"invalid column for filter {f.column}")
        col_type = await _one(
            conn,
            "select atttypid::regtype::text from pg_attribute where attrelid = %s and attname = %s",
            [relid, f.column],
        )
        if col_type is None:
            raise _Raise(f"failed to lookup type for column {f.column}")
        await _check_filter(conn, f, col_type)
    for c in p.select or ():
        if c not in readable:
            raise _Raise(f"invalid column for select {c}")


async def _check_filter(conn: psycopg.AsyncConnection[Any], f: Filter, col_type: str) -> None:
    t = sql.SQL(col_type)
    if f.op == "in":
        q = sql.SQL("select jsonb_array_length(to_jsonb(%s::{t}[]))").format(t=t)
        n = await _one(conn, q.as_string(conn), [f.value])
        if (n or 0) > MAX_IN_VALUES:
            raise _Raise("too many values for `in` filter. Maximum 100")
        return
    if f.op == "is":
        if f.value not in IS_KEYWORDS:
            raise _Raise("invalid value for is filter: must be null, true, false, or unknown")
        if f.value != "null" and col_type != "boolean":
            raise _Raise(f"is {f.value} filter requires a boolean column, got {col_type}")
        return
    if f.op in ("match", "imatch"):
        try:
            await _one(conn, "select '' ~ %s", [f.value])
        except psycopg.Error as exc:
            raise _Raise(
                f"invalid regular expression for {f.op} filter: {exc.diag.message_primary}"
            ) from None
    elif f.op not in ("like", "ilike"):
        # value must be castable to the column type; the cast error itself is the message
        q = sql.SQL("select to_jsonb(%s::{t})").format(t=t)
        await _one(conn, q.as_string(conn), [f.value])
    # the operator has to apply to the column type: evaluate it once on the value itself
    from .pg_filters import filter_sql

    expr = filter_sql(f.op, f.negate, col_type, f.value, "(%(v)s)", "(%(v)s)")
    try:
        await _one(conn, f"select {expr}", {"v": f.value})  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise _Raise(
            f"operator {f.op} is not supported on column {f.column} of type {col_type}: "
            f"{exc.diag.message_primary}"
        ) from None


async def validate(
    conn: psycopg.AsyncConnection[Any], p: SubscriptionParams, role: str | None
) -> list[int]:
    """Resolve and check one binding like the real server's subscription insert (§5.1).

    Returns the matching published table OIDs. Raises :class:`ParamsError` with the exact
    system-error text when nothing matches or a check fails.
    """
    relids = await published_tables(conn, p.schema, p.table)
    if not relids:
        raise ParamsError(
            "Unable to subscribe to changes with given parameters. Please check Realtime is "
            f"enabled for the given connect parameters: [{p.log_text()}]"
        )
    try:
        for relid in relids:
            await _check_table(conn, relid, p, role)
    except _Raise as exc:
        detail = f"ERROR P0001 (raise_exception) {exc}"
    except psycopg.Error as exc:
        detail = error_text(exc)
    else:
        return relids
    raise ParamsError(
        "Unable to subscribe to changes with given parameters. An exception happened so please "
        f"check your connect parameters: [{p.log_text()}]. Exception: {detail}"
    )
