"""The PostgREST subset's view of the database catalog: tables, functions, OpenAPI.

Contract:

* :func:`find_table` returns a :class:`Table` (columns with their ``format_type`` names, the
  primary key) or raises 404 ``PGRST205`` with PostgREST's did-you-mean hint.
* :func:`find_function` picks the overload of an RPC that accepts the given argument names
  (or a single unnamed json/jsonb argument) or raises 404 ``PGRST202``.
* :func:`describe_schema` builds the Swagger 2.0 document of ``GET /rest/v1/``: for every
  table or view the requesting role has a privilege on, ``definitions.<table>.properties.
  <column>`` with ``format`` = the PostgreSQL type and ``description`` containing ``<pk/>`` for
  primary-key columns (and ``<fk table='..' column='..'/>`` for single-column foreign keys),
  as PostgREST renders them; plus ``paths`` for tables and ``/rpc/<fn>``.
* :func:`foreign_keys` lists the foreign keys between the tables of a schema, for resource
  embedding (:mod:`.rest_embed`).

There is no schema cache: the catalog is read inside each request's transaction, so tables
created a moment ago are visible at once (Supabase reloads PostgREST's cache on DDL too).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from . import rest_query as rq
from .rest_embed import ForeignKey
from .rest_query import ApiError

Conn = psycopg.AsyncConnection[Any]

POSTGREST_VERSION = "12.2.3 (supasync devstack)"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    notnull: bool
    default: str | None
    comment: str | None


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    kind: str
    columns: tuple[Column, ...]
    pk: tuple[str, ...]

    @property
    def rel(self) -> sql.Composable:
        return rq.relation_sql(self.schema, self.name)

    def column_names(self) -> set[str]:
        return {c.name for c in self.columns}


_TABLE_SQL = """
select c.relname, c.relkind::text,
  coalesce((select json_agg(json_build_object(
      'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
      'notnull', a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid),
      'comment', col_description(c.oid, a.attnum)) order by a.attnum)
    from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), '[]'::json),
  coalesce((select json_agg(a.attname order by array_position(i.indkey::int2[], a.attnum))
    from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
    where i.indrelid = c.oid and i.indisprimary), '[]'::json),
  obj_description(c.oid, 'pg_class')
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relkind in ('r','v','m','f','p')
"""


def _table_from_row(schema: str, row: tuple[Any, ...]) -> Table:
    cols = tuple(Column(c["name"], c["type"], c["notnull"], c["default"], c["comment"])
                 for c in row[2])
    return Table(schema, row[0], row[1], cols, tuple(row[3]))


async def find_table(conn: Conn, schema: str, name: str) -> Table:
    """The table or view ``schema.name``, or 404 ``PGRST205`` with a did-you-mean hint."""
    cur = await conn.execute(sql.SQL(_TABLE_SQL + " and c.relname = %s"), (schema, name))
    row = await cur.fetchone()
    if row is not None:
        return _table_from_row(schema, row)
    cur = await conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relkind in ('r','v','m','f','p')", (schema,))
    names = [r[0] for r in await cur.fetchall()]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"Perhaps you meant the table '{schema}.{close[0]}'" if close else None
    raise ApiError(404, "PGRST205",
                   f"Could not find the table '{schema}.{name}' in the schema cache", None, hint)


@dataclass(frozen=True)
class Function:
    schema: str
    name: str
    arg_names: tuple[str, ...]  # input arguments, in order
    arg_types: tuple[str, ...]
    n_defaults: int
    returns_set: bool
    returns: str  # "void", "rows" or "scalar"
    volatile: bool

    @property
    def required(self) -> set[str]:
        return set(self.arg_names[: len(self.arg_names) - self.n_defaults])


_FUNC_SQL = """
select p.proname, coalesce(p.proargnames, '{}'::text[]), coalesce(p.proargmodes::text[], '{}'),
  array(select format_type(t, null) from unnest(p.proargtypes::oid[]) with ordinality u(t, i)
        order by i),
  p.pronargdefaults, p.proretset, format_type(p.prorettype, null), rt.typtype::text,
  p.provolatile::text, coalesce(p.proallargtypes is not null, false)
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  join pg_type rt on rt.oid = p.prorettype
where n.nspname = %s and p.prokind = 'f'
"""


def _function_from_row(schema: str, row: tuple[Any, ...]) -> Function:
    name, names, modes, in_types, n_defaults, retset, rettype, typtype, volat, has_out = row
    if modes:
        in_names = [names[i] if i < len(names) else "" for i, m in enumerate(modes)
                    if m in ("i", "b", "v")]
    else:
        in_names = list(names[: len(in_types)]) + [""] * (len(in_types) - len(names))
    if rettype == "void":
        returns = "void"
    elif typtype == "c" or (rettype == "record" and has_out):
        returns = "rows"
    else:
        returns = "scalar"
    return Function(schema, name, tuple(in_names), tuple(in_types), n_defaults, retset, returns,
                    volat == "v")


async def find_function(conn: Conn, schema: str, name: str, keys: set[str],
                        *, partial: bool) -> Function:
    """Pick the overload of ``schema.name`` that accepts ``keys`` (404 ``PGRST202`` if none).

    With ``partial`` (GET arguments), keys that are not argument names are allowed: they are
    filters on the result.
    """
    cur = await conn.execute(sql.SQL(_FUNC_SQL + " and p.proname = %s"), (schema, name))
    candidates = [_function_from_row(schema, r) for r in await cur.fetchall()]
    best: Function | None = None
    for f in candidates:
        single_json = (len(f.arg_names) == 1 and not f.arg_names[0]
                       and f.arg_types[0] in ("json", "jsonb"))
        names = set(f.arg_names)
        given = keys & names if partial else keys
        if single_json or (given <= names and f.required <= given):
            if best is None or len(f.arg_names) < len(best.arg_names):
                best = f
    if best is not None:
        return best
    cur = await conn.execute(
        "select distinct p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = %s", (schema,))
    names_all = [r[0] for r in await cur.fetchall()]
    close = difflib.get_close_matches(name, names_all, n=1, cutoff=0.6)
    args = ", ".join(sorted(keys))
    hint = f"Perhaps you meant to call the function {schema}.{close[0]}" if close else None
    raise ApiError(
        404, "PGRST202", f"Could not find the function {schema}.{name}({args}) in the schema cache",
        f"Searched for the function {schema}.{name}"
        + (f" with parameters {args}" if args else " without parameters")
        + " or with a single unnamed json/jsonb parameter, but no matches were found in the "
        "schema cache.", hint)


async def describe_schema(conn: Conn, schema: str, host: str) -> dict[str, Any]:
    """The OpenAPI document for ``schema`` as the connection's current role sees it."""
    cur = await conn.execute(sql.SQL(_TABLE_SQL), (schema,))
    tables = [_table_from_row(schema, r) for r in await cur.fetchall()]
    cur = await conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')",
        (schema,))
    allowed = {r[0] for r in await cur.fetchall()}
    cur = await conn.execute(
        "select c.relname, a.attname, fc.relname, fa.attname from pg_constraint k "
        "join pg_class c on c.oid = k.conrelid join pg_class fc on fc.oid = k.confrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "join pg_attribute a on a.attrelid = k.conrelid and a.attnum = k.conkey[1] "
        "join pg_attribute fa on fa.attrelid = k.confrelid and fa.attnum = k.confkey[1] "
        "where k.contype = 'f' and n.nspname = %s and cardinality(k.conkey) = 1", (schema,))
    fks = {(r[0], r[1]): (r[2], r[3]) for r in await cur.fetchall()}
    cur = await conn.execute(sql.SQL(_FUNC_SQL), (schema,))
    functions = [_function_from_row(schema, r) for r in await cur.fetchall()]
    return openapi_document(schema, [t for t in tables if t.name in allowed], fks, functions,
                            host)


_INT_TYPES = {"smallint", "integer", "bigint"}
_NUM_TYPES = {"numeric", "real", "double precision"}


def _swagger_type(pg_type: str) -> dict[str, Any]:
    if pg_type.endswith("[]"):
        return {"type": "array", "items": _swagger_type(pg_type[:-2])}
    base = pg_type.split("(")[0]
    if base in _INT_TYPES:
        return {"type": "integer"}
    if base in _NUM_TYPES:
        return {"type": "number"}
    if base == "boolean":
        return {"type": "boolean"}
    if base in ("json", "jsonb"):
        return {}
    return {"type": "string"}


def openapi_document(schema: str, tables: list[Table], fks: dict[tuple[str, str], tuple[str, str]],
                     functions: list[Function], host: str) -> dict[str, Any]:
    """A Swagger 2.0 document in PostgREST's shape (definitions, paths; ``<pk/>`` markers)."""
    definitions: dict[str, Any] = {}
    paths: dict[str, Any] = {"/": {"get": {"produces": ["application/openapi+json",
                                                        "application/json"],
                                           "responses": {"200": {"description": "OK"}},
                                           "summary": "OpenAPI description (this document)",
                                           "tags": ["Introspection"]}}}
    for t in tables:
        props: dict[str, Any] = {}
        for c in t.columns:
            notes = []
            if c.name in t.pk:
                notes.append("This is a Primary Key.<pk/>")
            if (t.name, c.name) in fks:
                ft, fc = fks[(t.name, c.name)]
                notes.append(f"This is a Foreign Key to `{ft}.{fc}`.<fk table='{ft}' "
                             f"column='{fc}'/>")
            prop: dict[str, Any] = {"format": c.type, **_swagger_type(c.type)}
            desc = c.comment or ""
            if notes:
                desc = (desc + "\n\n" if desc else "") + "Note:\n" + "\n".join(notes)
            if desc:
                prop["description"] = desc
            if c.default is not None:
                prop["default"] = c.default
            props[c.name] = prop
        required = [c.name for c in t.columns if c.notnull and c.default is None]
        definition: dict[str, Any] = {"properties": props, "type": "object"}
        if required:
            definition["required"] = required
        definitions[t.name] = definition
        ops = {"get": {"tags": [t.name], "responses": {"200": {"description": "OK"}}}}
        if t.kind in ("r", "p", "v", "f"):
            for verb, code in (("post", "201"), ("patch", "204"), ("delete", "204")):
                ops[verb] = {"tags": [t.name], "responses": {code: {"description": "OK"}}}
        paths[f"/{t.name}"] = ops
    for f in functions:
        paths[f"/rpc/{f.name}"] = {
            "post": {"tags": ["(rpc) " + f.name],
                     "parameters": [{"in": "body", "name": "args", "required": True,
                                     "schema": {"type": "object", "properties": {
                                         n: {"format": ty, **_swagger_type(ty)}
                                         for n, ty in zip(f.arg_names, f.arg_types,
                                                          strict=False) if n}}}],
                     "responses": {"200": {"description": "OK"}}}}
    return {
        "swagger": "2.0",
        "info": {"title": "standard public schema" if schema == "public" else schema,
                 "description": "supasync devstack: a PostgREST subset",
                 "version": POSTGREST_VERSION},
        "host": host,
        "basePath": "/rest/v1",
        "schemes": ["http"],
        "consumes": ["application/json", "application/vnd.pgrst.object+json"],
        "produces": ["application/json", "application/vnd.pgrst.object+json"],
        "paths": paths,
        "definitions": definitions,
    }


_FK_SQL = """
select k.conname, c.relname,
  array(select a.attname from unnest(k.conkey) with ordinality u(n, i)
        join pg_attribute a on a.attrelid = k.conrelid and a.attnum = u.n order by u.i),
  fc.relname,
  array(select a.attname from unnest(k.confkey) with ordinality u(n, i)
        join pg_attribute a on a.attrelid = k.confrelid and a.attnum = u.n order by u.i),
  exists(select 1 from pg_index x where x.indrelid = k.conrelid and x.indisunique
         and x.indpred is null and x.indkey::int2[] @> k.conkey
         and k.conkey @> x.indkey::int2[]),
  exists(select 1 from pg_constraint p where p.conrelid = k.conrelid and p.contype = 'p'
         and p.conkey @> k.conkey)
from pg_constraint k
  join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
  join pg_class fc on fc.oid = k.confrelid join pg_namespace fn on fn.oid = fc.relnamespace
where k.contype = 'f' and n.nspname = %s and fn.nspname = %s
order by k.conname, c.relname
"""


async def foreign_keys(conn: Conn, schema: str) -> list[ForeignKey]:
    """Every foreign key between two tables of ``schema`` (for resource embedding)."""
    cur = await conn.execute(_FK_SQL, (schema, schema))
    return [ForeignKey(r[0], r[1], tuple(r[2]), r[3], tuple(r[4]), bool(r[5]), bool(r[6]))
            for r in await cur.fetchall()]
