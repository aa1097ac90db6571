"""PostgREST fidelity of the local stack (issue #17): resource embedding, CSV output, logic trees
whose values hold braces, commas and quotes, identifiers with a NUL byte, the range operators
``nxl``/``nxr`` and ``EXPLAIN`` plans.

Driven through raw HTTP (httpx) and the unmodified official ``postgrest`` client. The expected
shapes are PostgREST's, from its documentation of resource embedding, CSV and logic trees.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError

from supasync.devstack.testing import StackProcess

from .test_rest import get, headers, start_stack

pytestmark = pytest.mark.integration

SCHEMA_SQL = """
create table emb_authors (id bigint primary key, name text not null);
create table emb_profiles (author_id bigint primary key references emb_authors(id), bio text);
create table emb_books (
  id bigint primary key,
  title text not null,
  author_id bigint references emb_authors(id),
  editor_id bigint references emb_authors(id)
);
create table emb_reviews (id bigint primary key, book_id bigint not null references emb_books(id),
  stars int);
create table emb_labels (id bigint primary key, name text);
create table emb_book_labels (
  book_id bigint references emb_books(id),
  label_id bigint references emb_labels(id),
  primary key (book_id, label_id)
);
create table emb_editions (id bigint primary key, book_id bigint references emb_books(id),
  year int);
alter table emb_editions add constraint emb_editions_book_fk2 foreign key (book_id)
  references emb_books(id);
insert into emb_authors values (1, 'Ann'), (2, 'Bob'), (3, 'Cy');
insert into emb_profiles values (1, 'writes');
insert into emb_books values (1, 'A1', 1, 2), (2, 'A2', 1, null), (3, 'B1', 2, 1),
  (4, 'Orphan', null, null);
insert into emb_reviews values (1, 1, 5), (2, 1, 3), (3, 3, 4);
insert into emb_labels values (1, 'fiction'), (2, 'classic');
insert into emb_book_labels values (1, 1), (1, 2), (3, 1);

create table emb_issues (id int primary key, title text, tags text[]);
create table emb_rooms (id int primary key, name text, during tsrange);
insert into emb_rooms values (1, 'Emerald', '[2000-01-01 13:00, 2000-01-01 15:00)'),
  (2, 'Topaz', '[2000-01-02 09:00, 2000-01-02 10:00)');
insert into emb_issues values
  (1, 'one', '{is:open,priority:low}'), (2, 'a,b (c)', '{is:closed}'),
  (3, 'three', '{is:open,priority:high}'), (4, 'four', '{}'), (5, 'say "hi"', null);
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    s = start_stack()
    try:
        s.sql(SCHEMA_SQL)
        yield s
    finally:
        s.close()
        shutil.rmtree(s.data_dir, ignore_errors=True)


def rows(stack: StackProcess, path: str, **kw: Any) -> Any:
    r = get(stack, path, **kw)
    assert r.status_code in (200, 206), r.text
    return r.json()


def error(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body) == {"code", "details", "hint", "message"}, body
    return r.status_code, body["code"]


# -- resource embedding -----------------------------------------------------------------


def test_many_to_one_is_an_object_or_null(stack: StackProcess) -> None:
    got = rows(stack, "emb_books?select=title,emb_authors!author_id(name)&order=id")
    assert got == [{"title": "A1", "emb_authors": {"name": "Ann"}},
                   {"title": "A2", "emb_authors": {"name": "Ann"}},
                   {"title": "B1", "emb_authors": {"name": "Bob"}},
                   {"title": "Orphan", "emb_authors": None}]
    # an alias, and the foreign-key column as the target
    got = rows(stack, "emb_books?select=id,author:author_id(*)&id=eq.3")
    assert got == [{"id": 3, "author": {"id": 2, "name": "Bob"}}]
    got = rows(stack, "emb_books?select=*,author:emb_authors!author_id(*)&id=eq.1")
    assert got == [{"id": 1, "title": "A1", "author_id": 1, "editor_id": 2,
                    "author": {"id": 1, "name": "Ann"}}]


def test_one_to_many_is_an_array_and_one_to_one_an_object(stack: StackProcess) -> None:
    got = rows(stack, "emb_books?select=title,emb_reviews(stars)&order=id"
                      "&emb_reviews.order=stars.desc")
    assert got == [{"title": "A1", "emb_reviews": [{"stars": 5}, {"stars": 3}]},
                   {"title": "A2", "emb_reviews": []},
                   {"title": "B1", "emb_reviews": [{"stars": 4}]},
                   {"title": "Orphan", "emb_reviews": []}]
    got = rows(stack, "emb_authors?select=name,emb_profiles(bio)&order=id")
    assert got == [{"name": "Ann", "emb_profiles": {"bio": "writes"}},
                   {"name": "Bob", "emb_profiles": None},
                   {"name": "Cy", "emb_profiles": None}]
    # nested, with an embedded limit
    got = rows(stack, "emb_authors?select=name,books:emb_books!author_id(title,"
                      "emb_reviews(stars))&id=eq.1&books.order=title&books.limit=1")
    assert got == [{"name": "Ann", "books": [
        {"title": "A1", "emb_reviews": [{"stars": 5}, {"stars": 3}]}]}]


def test_many_to_many_through_a_junction_table(stack: StackProcess) -> None:
    got = rows(stack, "emb_books?select=title,emb_labels(name)&order=id"
                      "&emb_labels.order=name")
    assert got == [{"title": "A1", "emb_labels": [{"name": "classic"}, {"name": "fiction"}]},
                   {"title": "A2", "emb_labels": []},
                   {"title": "B1", "emb_labels": [{"name": "fiction"}]},
                   {"title": "Orphan", "emb_labels": []}]


def test_inner_and_filters_on_embedded_resources(stack: StackProcess) -> None:
    # Without !inner a filter on the embedding nulls it; with !inner it drops the row.
    got = rows(stack, "emb_books?select=title,emb_authors!author_id(name)"
                      "&emb_authors.name=eq.Ann&order=id")
    assert [r["emb_authors"] for r in got] == [{"name": "Ann"}, {"name": "Ann"}, None, None]
    r = get(stack, "emb_books?select=title,author:emb_authors!author_id!inner(name)"
                   "&author.name=eq.Ann&order=id", headers={"Prefer": "count=exact"})
    assert r.json() == [{"title": "A1", "author": {"name": "Ann"}},
                        {"title": "A2", "author": {"name": "Ann"}}]
    assert r.headers["Content-Range"] == "0-1/2"
    got = rows(stack, "emb_books?select=title,emb_reviews!inner(stars)"
                      "&emb_reviews.stars=gte.4&order=id")
    assert got == [{"title": "A1", "emb_reviews": [{"stars": 5}]},
                   {"title": "B1", "emb_reviews": [{"stars": 4}]}]
    # an empty embedding filters without adding a key
    got = rows(stack, "emb_books?select=title,emb_authors!author_id!inner()"
                      "&emb_authors.name=eq.Bob")
    assert got == [{"title": "B1"}]
    got = rows(stack, "emb_books?select=title,emb_reviews(stars)&id=eq.1"
                      "&emb_reviews.or=(stars.eq.3,stars.gt.9)")
    assert got == [{"title": "A1", "emb_reviews": [{"stars": 3}]}]


def test_embedding_errors_are_postgrests(stack: StackProcess) -> None:
    r = get(stack, "emb_books?select=*,emb_authors(*)")  # author_id and editor_id
    assert error(r) == (300, "PGRST201")
    details = r.json()["details"]
    assert {d["cardinality"] for d in details} == {"many-to-one"}
    assert "emb_authors!emb_books_author_id_fkey" in r.json()["hint"]
    r = get(stack, "emb_books?select=*,emb_editions(*)")  # two keys on the same column
    assert error(r) == (300, "PGRST201")
    assert get(stack, "emb_books?select=*,emb_editions!emb_editions_book_fk2(*)"
               ).status_code == 200
    r = get(stack, "emb_books?select=*,nope(*)")
    assert error(r) == (400, "PGRST200")
    assert r.json()["message"] == ("Could not find a relationship between 'emb_books' and "
                                   "'nope' in the schema cache")
    r = get(stack, "emb_books?select=title&emb_authors.name=eq.Ann")
    assert error(r) == (400, "PGRST108")


def test_writes_return_embeddings(stack: StackProcess) -> None:
    url = f"{stack.url}/rest/v1/emb_books?select=title,emb_authors!author_id(name)"
    r = httpx.post(url, json={"id": 10, "title": "New", "author_id": 3},
                   headers={**headers(stack.service_role_key),
                            "Prefer": "return=representation"})
    assert r.status_code == 201, r.text
    assert r.json() == [{"title": "New", "emb_authors": {"name": "Cy"}}]
    r = httpx.patch(url + "&id=eq.10", json={"author_id": 2},
                    headers={**headers(stack.service_role_key),
                             "Prefer": "return=representation"})
    assert r.json() == [{"title": "New", "emb_authors": {"name": "Bob"}}]
    httpx.delete(f"{stack.url}/rest/v1/emb_books?id=eq.10",
                 headers=headers(stack.service_role_key)).raise_for_status()


async def test_embedding_through_the_official_client(stack: StackProcess) -> None:
    async with AsyncPostgrestClient(f"{stack.url}/rest/v1",
                                    headers=headers(stack.service_role_key)) as client:
        res = await (client.from_("emb_authors")
                     .select("name, books:emb_books!author_id(title)")
                     .order("id").order("title", desc=True, foreign_table="books")
                     .limit(1, foreign_table="books").execute())
        assert res.data == [{"name": "Ann", "books": [{"title": "A2"}]},
                            {"name": "Bob", "books": [{"title": "B1"}]},
                            {"name": "Cy", "books": []}]
        res = await (client.from_("emb_books")
                     .select("title, author:emb_authors!author_id!inner(name)")
                     .eq("author.name", "Bob").execute())
        assert res.data == [{"title": "B1", "author": {"name": "Bob"}}]
        one = await (client.from_("emb_books").select("title, emb_labels(name)")
                     .eq("id", 3).single().execute())
        assert one.data == {"title": "B1", "emb_labels": [{"name": "fiction"}]}
        with pytest.raises(APIError) as exc:
            await client.from_("emb_books").select("*, emb_authors(*)").execute()
        assert exc.value.code == "PGRST201"


# -- CSV ----------------------------------------------------------------------------------


def test_csv_is_a_header_then_postgres_rows(stack: StackProcess) -> None:
    r = get(stack, "emb_issues?select=id,title,tags&order=id", headers={"Accept": "text/csv"})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.text == ('id,title,tags\n'
                      '1,one,"{is:open,priority:low}"\n'
                      '2,"a,b (c)",{is:closed}\n'
                      '3,three,"{is:open,priority:high}"\n'
                      '4,four,{}\n'
                      '5,"say ""hi""",')
    r = get(stack, "emb_issues?id=eq.-1", headers={"Accept": "text/csv"})
    assert (r.status_code, r.text) == (200, "\n")
    r = get(stack, "emb_issues?select=id&order=id&limit=2",
            headers={"Accept": "text/csv", "Prefer": "count=exact"})
    assert (r.status_code, r.text, r.headers["Content-Range"]) == (206, "id\n1\n2", "0-1/5")
    r = get(stack, "emb_books?select=title,emb_authors!author_id(name)&id=eq.1",
            headers={"Accept": "text/csv"})
    assert r.text == 'title,emb_authors\nA1,"{""name"":""Ann""}"'


async def test_csv_through_the_official_client(stack: StackProcess) -> None:
    async with AsyncPostgrestClient(f"{stack.url}/rest/v1",
                                    headers=headers(stack.service_role_key)) as client:
        res = await client.from_("emb_issues").select("id,title").lte("id", 2).order("id").csv(
            ).execute()
        assert res.data == 'id,title\n1,one\n2,"a,b (c)"'


# -- logic trees ----------------------------------------------------------------------------


def test_logic_tree_values_with_braces_commas_and_quotes(stack: StackProcess) -> None:
    got = rows(stack, "emb_issues?select=id&order=id"
                      "&or=(id.in.(1,4),tags.cs.{is:open,priority:high})")
    assert [r["id"] for r in got] == [1, 3, 4]
    got = rows(stack, 'emb_issues?select=id&and=(title.eq."a,b (c)",id.gt.0)')
    assert got == [{"id": 2}]
    got = rows(stack, 'emb_issues?select=id&or=(title.eq."say \\"hi\\"",tags.ov.{is:closed})'
                      "&order=id")
    assert [r["id"] for r in got] == [2, 5]
    got = rows(stack, "emb_issues?select=id&not.or=(tags.cs.{is:open},tags.is.null)&order=id")
    assert [r["id"] for r in got] == [2, 4]


async def test_logic_trees_through_the_official_client(stack: StackProcess) -> None:
    async with AsyncPostgrestClient(f"{stack.url}/rest/v1",
                                    headers=headers(stack.service_role_key)) as client:
        res = await (client.from_("emb_issues").select("id")
                     .or_("id.in.(1,4),tags.cs.{is:open,priority:high}").order("id").execute())
        assert [r["id"] for r in res.data] == [1, 3, 4]
        res = await (client.from_("emb_issues").select("id")
                     .or_('title.eq."a,b (c)",id.eq.5').order("id").execute())
        assert [r["id"] for r in res.data] == [2, 5]


# -- NUL bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["select=title%00junk", "title%00junk=eq.x",
                                   "order=id%00x", "or=(id%00x.eq.1,id.eq.2)",
                                   "select=id,t:title%00junk"])
def test_identifiers_with_a_nul_byte_are_refused(stack: StackProcess, query: str) -> None:
    r = get(stack, f"emb_issues?{query}")
    assert error(r) == (400, "PGRST100")
    assert r.json()["hint"] is None
    assert "failed to parse" in r.json()["message"]


# -- range operators and plans -------------------------------------------------------------


def test_range_operators_nxl_and_nxr(stack: StackProcess) -> None:
    # nxl: does not extend to the left of (&>); nxr: does not extend to the right of (&<)
    got = rows(stack, "emb_rooms?select=name&during=nxl.[2000-01-02 08:30,2000-01-02 09:30)")
    assert got == [{"name": "Topaz"}]
    got = rows(stack, "emb_rooms?select=name&during=nxr.[2000-01-01 06:00,2000-01-01 16:00)")
    assert got == [{"name": "Emerald"}]


async def test_range_filters_through_the_official_client(stack: StackProcess) -> None:
    async with AsyncPostgrestClient(f"{stack.url}/rest/v1",
                                    headers=headers(stack.service_role_key)) as client:
        res = await (client.from_("emb_rooms").select("name")
                     .range_gte("during", ["2000-01-02 08:30", "2000-01-02 09:30"]).execute())
        assert res.data == [{"name": "Topaz"}]
        res = await (client.from_("emb_rooms").select("name")
                     .range_lte("during", ["2000-01-01 06:00", "2000-01-01 16:00"]).execute())
        assert res.data == [{"name": "Emerald"}]


def test_explain_plans(stack: StackProcess) -> None:
    r = get(stack, "emb_books?select=title,emb_reviews!inner(stars)",
            headers={"Accept": "application/vnd.pgrst.plan+json; options=analyze|verbose"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/vnd.pgrst.plan+json")
    plan = r.json()
    assert plan[0]["Plan"]["Node Type"] == "Aggregate" and "Actual Rows" in plan[0]["Plan"]
    r = get(stack, "emb_books?select=title&id=eq.1",
            headers={"Accept": "application/vnd.pgrst.plan"})
    assert r.headers["Content-Type"].startswith("application/vnd.pgrst.plan+text")
    assert r.text.startswith("Aggregate") and "emb_books" in r.text
