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


@pytest.mark.parametrize("select", ["...spread(a)", "n::text;drop", "id.sum()",
                                    "n::text FROM pg_authid", "n::int--", "author(name",
                                    "author!a!b(*)"])
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
                                 ("author.order", "id.sideways"), ("author.limit", "x"),
                                 ("author.select", "id")])
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


# -- issue #17: NUL bytes, logic trees with braces and quotes, embedding, CSV ----------------


@pytest.mark.parametrize("param", [("select", "body\x00junk"), ("select", "id,a:b\x00c"),
                                   ("select", "author(na\x00me)"), ("bo\x00dy", "eq.1"),
                                   ("order", "id\x00x"), ("columns", "a\x00b"),
                                   ("or", "(id\x00x.eq.1,id.eq.2)"), ("a.b\x00c", "eq.1")])
def test_an_identifier_with_a_nul_byte_is_a_parse_error(param: tuple[str, str]) -> None:
    """Quoting ``body\\x00junk`` for SQL cuts it at the NUL: it would read ``body``."""
    with pytest.raises(rq.ApiError) as exc:
        rq.parse_read([param])
    body = exc.value.body()
    assert (exc.value.status, body["code"], body["hint"]) == (400, "PGRST100", None)
    assert body["message"].startswith('"failed to parse ')
    assert "\\NUL" in body["message"] and "(line 1, column " in body["message"]
    assert "\x00" not in body["message"]


def test_nul_in_a_filter_value_is_left_to_the_database() -> None:
    q = rq.parse_read([("name", "eq.a\x00b")])  # PostgreSQL's own 22021, as before
    assert isinstance(q.filters[0], rq.Condition) and q.filters[0].value == "a\x00b"


def test_logic_tree_values_keep_braces_commas_and_quotes() -> None:
    q = rq.parse_read([("or", "(id.in.(1,4),tags.cs.{is:open,priority:high})"),
                       ("and", '(title.eq."a,b (c)",note.eq."say \\"hi\\"",x.ov.{1,2})')])
    assert render(rq.where_sql(q.filters, None)) == (
        """ WHERE ("id" IN ('1', '4') OR "tags" @> '{is:open,priority:high}')"""
        """ AND ("title" = 'a,b (c)' AND "note" = 'say "hi"' AND "x" && '{1,2}')""")


def test_unbalanced_braces_are_plain_characters() -> None:
    assert rq.split_top("a.eq.x{y,b.eq.2") == ["a.eq.x{y", "b.eq.2"]
    assert rq.split_top("a.cs.{1,2},b.eq.}") == ["a.cs.{1,2}", "b.eq.}"]
    q = rq.parse_read([("or", "(name.eq.a{b,id.eq.2)")])
    assert render(rq.where_sql(q.filters, None)) == (
        """ WHERE ("name" = 'a{b' OR "id" = '2')""")


def test_select_embeddings() -> None:
    items = rq.parse_select('*,author:users!author_id!inner(*,x:y(a)),"odd name"(id),b()')
    assert items[0] == rq.Field(None)
    author = items[1]
    assert isinstance(author, rq.Embed)
    assert (author.name, author.alias, author.hint, author.inner, author.label) == (
        "users", "author", "author_id", True, "author")
    assert author.select[0] == rq.Field(None)
    assert author.select[1] == rq.Embed("y", (rq.Field(rq.Path("a")),), alias="x")
    assert items[2] == rq.Embed("odd name", (rq.Field(rq.Path("id")),))
    assert items[3] == rq.Embed("b", ())
    assert rq.parse_select("users!left(id)")[0] == rq.Embed(
        "users", (rq.Field(rq.Path("id")),), inner=False)


def test_embedded_parameters() -> None:
    q = rq.parse_read([("select", "*,books(*)"), ("books.title", "eq.x"),
                       ("books.order", "title.desc"), ("books.limit", "2"),
                       ("books.offset", "1"), ("books.not.or", "(a.eq.1,b.eq.2)"),
                       ("books.reviews.stars", "gt.3"), ('"a.b"', "eq.1")])
    books = q.embedded[("books",)]
    assert books.limit == 2 and books.offset == 1
    assert books.order == (rq.OrderTerm(rq.Path("title"), desc=True),)
    assert render(rq.where_sql(books.filters, "b")) == (
        """ WHERE "b"."title" = 'x' AND NOT ("b"."a" = '1' OR "b"."b" = '2')""")
    assert [type(f) for f in q.embedded[("books", "reviews")].filters] == [rq.Condition]
    assert q.filters == [rq.Condition(rq.Path("a.b"), "eq", "1")]


def _join(embed: rq.Embed, table: str, alias: str, on: tuple[tuple[str, str], ...],
          to_one: bool, **kw: object) -> rq.Join:
    return rq.Join(embed, "public", table, alias, on, to_one,
                   kw.pop("params", rq.EmbedParams()), **kw)  # type: ignore[arg-type]


def test_embedding_sql_to_one_and_to_many() -> None:
    q = rq.parse_read([("select", "id,a:users!inner(name),posts(id)"),
                       ("a.name", "eq.x"), ("posts.order", "id"), ("posts.limit", "2")])
    a, posts = q.select[1], q.select[2]
    assert isinstance(a, rq.Embed) and isinstance(posts, rq.Embed)
    joins = (_join(a, "users", "users_1", (("author_id", "id"),), True,
                   params=q.embedded[("a",)]),
             _join(posts, "posts", "posts_1", (("id", "parent_id"),), False,
                   params=q.embedded[("posts",)]))
    rel = rq.relation_sql("public", "posts")
    assert render(rq.rows_sql(rel, q, 0, None, "posts", joins)) == (
        'SELECT "posts"."id" AS "id", "users_1_j".j AS "a", '
        """coalesce("posts_1_j".j, '[]'::json) AS "posts" FROM "public"."posts" AS "posts" """
        'INNER JOIN LATERAL (SELECT row_to_json(_x) AS j FROM (SELECT "users_1"."name" AS '
        '"name" FROM "public"."users" AS "users_1" WHERE "users_1"."id" = "posts"."author_id" '
        """AND "users_1"."name" = 'x') AS _x) AS "users_1_j" ON "users_1_j".j IS NOT NULL """
        'LEFT JOIN LATERAL (SELECT json_agg(_x) AS j FROM (SELECT "posts_1"."id" AS "id" FROM '
        '"public"."posts" AS "posts_1" WHERE "posts_1"."parent_id" = "posts"."id" ORDER BY '
        '"posts_1"."id" ASC LIMIT 2) AS _x) AS "posts_1_j" ON TRUE')
    # count: only the !inner embedding can change it
    count = render(rq.count_sql(rel, q, "posts", joins))
    assert "users_1_j" in count and "posts_1_j" not in count


def test_embedding_is_refused_where_it_is_not_resolved() -> None:
    q = rq.parse_read([("select", "id,users(name)")])
    with pytest.raises(rq.ApiError) as exc:
        rq.fields_sql(q.select, "t")  # e.g. an RPC's result
    assert exc.value.code == "PGRST100"


def test_csv_sql_shape() -> None:
    assert render(rq.csv_sql(sql.SQL("SELECT 1 AS a"))) == (
        "WITH _c AS MATERIALIZED (SELECT 1 AS a) SELECT count(*), "
        "(SELECT coalesce(string_agg(_k, ','), '') FROM json_object_keys("
        "(SELECT row_to_json(_h) FROM _c AS _h LIMIT 1)) AS _k) || chr(10) || "
        "coalesce(string_agg(substr(_c::text, 2, length(_c::text) - 2), chr(10)), '') FROM _c")


def test_range_adjacency_operators_and_explain() -> None:
    q = rq.parse_read([("during", "nxl.[1,2)"), ("span", "nxr.[3,4)")])
    assert render(rq.where_sql(q.filters, None)) == (
        """ WHERE "during" &> '[1,2)' AND "span" &< '[3,4)'""")
    assert render(rq.explain_sql(sql.SQL("SELECT 1"), "json", ("wal", "analyze", "drop"))) == (
        "EXPLAIN (FORMAT JSON, ANALYZE, WAL) SELECT 1")
