"""The PostgREST subset's sans-I/O core: query strings and headers in, models and SQL out."""

from __future__ import annotations

import pytest
from psycopg import sql

from supasync.devstack import rest_query as rq


def render(c: sql.Composable) -> str:
    return c.as_string(None)


def test_select_items() -> None:
    fields = rq.parse_select("id,alias:name,n::text,data->a->>b,*")
    assert fields[0] == rq.Field(rq.Path("id"))
    assert fields[1] == rq.Field(rq.Path("name"), alias="alias")
    assert fields[2] == rq.Field(rq.Path("n"), cast="text")
    assert fields[3].path == rq.Path("data", (("->", "a"), ("->>", "b")))
    assert fields[3].path.default_name == "b"
    assert fields[4] == rq.Field(None)
    assert render(rq.fields_sql(fields, "t")) == (
        '"t"."id" AS "id", "t"."name" AS "alias", "t"."n"::text AS "n", '
        """(("t"."data" -> 'a') ->> 'b') AS "b", "t".*""")


@pytest.mark.parametrize("select", ["author(name)", "...spread", "n::text;drop",
                                    "n::text FROM pg_authid", "n::int--"])
def test_select_rejects_what_is_not_supported(select: str) -> None:
    with pytest.raises(rq.ApiError) as exc:
        rq.parse_select(select)
    assert exc.value.code == "PGRST100" and exc.value.status == 400


def test_casts_are_single_type_names() -> None:
    assert rq.valid_cast("int8") and rq.valid_cast("text[]")
    assert rq.valid_cast("double precision") and rq.valid_cast("timestamp with time zone[]")
    assert not rq.valid_cast("text from t") and not rq.valid_cast("int)")


def test_filters_render_with_literals_only() -> None:
    q = rq.parse_read([("id", "gt.5"), ("name", "like.*o'k*"), ("tag", "in.(a,\"b,c\")"),
                       ("deleted", "is.null"), ("n", "not.eq.3"), ("x", "eq.1; drop table t")])
    where = render(rq.where_sql(q.filters, "t"))
    assert where == (
        ''' WHERE "t"."id" > '5' AND "t"."name" LIKE '%o''k%' AND "t"."tag" IN ('a', 'b,c')'''
        ''' AND "t"."deleted" IS NULL AND NOT ("t"."n" = '3')'''
        ''' AND "t"."x" = '1; drop table t\'''')


def test_identifiers_are_quoted() -> None:
    q = rq.parse_read([('"we.ird""col"', "eq.1")])
    cond = q.filters[0]
    assert isinstance(cond, rq.Condition)
    # The column keeps its text; quoting happens in SQL rendering.
    assert '"' in render(rq.where_sql(q.filters, None))


def test_logic_trees_nest() -> None:
    q = rq.parse_read([("or", "(id.eq.1,and(n.gte.2,n.lte.4),name.in.(x,y))"),
                       ("not.and", "(a.is.true,b.neq.\"c,d\")")])
    assert render(rq.where_sql(q.filters, None)) == (
        """ WHERE ("id" = '1' OR ("n" >= '2' AND "n" <= '4') OR "name" IN ('x', 'y'))"""
        """ AND NOT ("a" IS TRUE AND "b" <> 'c,d')""")


@pytest.mark.parametrize("bad", [("id", "eqq.1"), ("id", "1"), ("id", "in.1,2"),
                                 ("id", "is.maybe"), ("or", "id.eq.1"), ("or", "(id.eq.1"),
                                 ("limit", "ten"), ("offset", "-1"), ("order", "id.sideways"),
                                 ("author.order", "id")])
def test_parse_errors_are_pgrst100(bad: tuple[str, str]) -> None:
    with pytest.raises(rq.ApiError) as exc:
        rq.parse_read([bad])
    assert (exc.value.status, exc.value.code) == (400, "PGRST100")
    assert set(exc.value.body()) == {"code", "message", "details", "hint"}


def test_order_and_window() -> None:
    q = rq.parse_read([("order", "a.desc.nullslast,b"), ("order", "c.asc.nullsfirst"),
                       ("limit", "10"), ("offset", "20")])
    assert render(rq.order_sql(q.order, None)) == (
        ' ORDER BY "a" DESC NULLS LAST, "b" ASC, "c" ASC NULLS FIRST')
    assert rq.effective_window(q, None) == (20, 10)
    assert render(rq.window_sql(20, 10)) == " LIMIT 10 OFFSET 20"


def test_range_header_intersects_limit_offset() -> None:
    assert rq.parse_range("0-9") == (0, 9)
    assert rq.parse_range("5-") == (5, None)
    assert rq.parse_range("9-0") is None
    assert rq.parse_range("bytes") is None
    assert rq.effective_window(rq.ReadQuery(), (10, 19)) == (10, 10)
    q = rq.ReadQuery(limit=5, offset=12)
    assert rq.effective_window(q, (10, 19)) == (12, 5)
    assert rq.effective_window(rq.ReadQuery(limit=50), (10, 19)) == (10, 10)


def test_prefer_header() -> None:
    p = rq.parse_prefer(["return=representation,count=exact",
                         "resolution=ignore-duplicates, missing=default, tx=rollback"])
    assert p.return_ == "representation" and p.count == "exact"
    assert p.resolution == "ignore-duplicates" and p.missing_default
    assert "tx=rollback" not in p.applied and "count=exact" in p.applied


def test_special_operators() -> None:
    q = rq.parse_read([("tags", "cs.{a,b}"), ("body", "fts(english).cat"), ("n", "isdistinct.2"),
                       ("name", "ilike(any).{a*,b*}"), ("x", "in.()")])
    assert render(rq.where_sql(q.filters, None)) == (
        """ WHERE "tags" @> '{a,b}' AND "body" @@ to_tsquery('english'::regconfig, 'cat')"""
        """ AND "n" IS DISTINCT FROM '2' AND "name" ILIKE ANY('{a%,b%}') AND false""")


def test_write_sql_shapes() -> None:
    rel = rq.relation_sql("public", "items")
    rows = '[{"id": 1, "name": "50% off"}]'
    ins = rq.insert_sql(rel, ["id", "name"], rows, ("id",), "merge-duplicates", "items")
    assert render(ins) == (
        'INSERT INTO "public"."items" AS "items" ("id", "name") SELECT "id", "name" FROM '
        """json_populate_recordset(NULL::"public"."items", '[{"id": 1, "name": "50% off"}]'"""
        '::json) ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"')
    ign = rq.insert_sql(rel, ["id"], "[]", ("id",), "ignore-duplicates", "items")
    assert render(ign).endswith('ON CONFLICT ("id") DO NOTHING')
    q = rq.parse_read([("id", "eq.1"), ("select", "id")])
    upd = rq.update_sql(rel, ["name"], '{"name": "x"}', q.filters, "items")
    assert render(rq.returning_sql(upd, q, alias="items")) == (
        'WITH _w AS (UPDATE "public"."items" AS "items" SET "name" = _b."name" FROM '
        """(SELECT * FROM json_populate_record(NULL::"public"."items", '{"name": "x"}'::json)) """
        'AS _b '
        """WHERE "items"."id" = '1' RETURNING "items".*) SELECT row_to_json(_r)::text FROM """
        '(SELECT "items"."id" AS "id" FROM _w AS "items") AS _r')


def test_read_and_count_sql() -> None:
    rel = rq.relation_sql("public", "items")
    q = rq.parse_read([("select", "id"), ("id", "gt.1"), ("order", "id")])
    assert render(rq.read_sql(rel, q, 0, 2, alias="items")) == (
        'SELECT row_to_json(_r)::text FROM (SELECT "items"."id" AS "id" FROM "public"."items" '
        """AS "items" WHERE "items"."id" > '1' ORDER BY "items"."id" ASC LIMIT 2) AS _r""")
    assert render(rq.count_sql(rel, q, "items")) == (
        """SELECT count(*) FROM "public"."items" AS "items" WHERE "items"."id" > '1'""")
