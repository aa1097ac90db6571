"""Which foreign key an embedding follows (sans-I/O): PostgREST's rules and errors."""

from __future__ import annotations

import pytest

from supasync.devstack import rest_query as rq
from supasync.devstack.rest_embed import ForeignKey, has_embeds, resolve

FKS = [
    ForeignKey("books_author_id_fkey", "books", ("author_id",), "authors", ("id",)),
    ForeignKey("books_editor_id_fkey", "books", ("editor_id",), "authors", ("id",)),
    ForeignKey("profiles_author_id_fkey", "profiles", ("author_id",), "authors", ("id",),
               unique=True, in_pk=True),
    ForeignKey("reviews_book_id_fkey", "reviews", ("book_id",), "books", ("id",)),
    ForeignKey("book_labels_book_id_fkey", "book_labels", ("book_id",), "books", ("id",),
               in_pk=True),
    ForeignKey("book_labels_label_id_fkey", "book_labels", ("label_id",), "labels", ("id",),
               in_pk=True),
    ForeignKey("staff_boss_fkey", "staff", ("boss_id",), "staff", ("id",)),
]


def joins(table: str, *params: tuple[str, str]) -> tuple[rq.Join, ...]:
    q = rq.parse_read(list(params))
    return resolve("public", table, q, FKS)


def test_many_to_one_by_table_column_or_constraint() -> None:
    for select in ("authors!author_id(*)", "author_id(*)", "books_author_id_fkey(*)",
                   "a:authors!books_author_id_fkey(*)"):
        (j,) = joins("books", ("select", select))
        assert (j.table, j.on, j.to_one) == ("authors", (("author_id", "id"),), True), select
        assert j.alias == "authors_1"


def test_one_to_many_one_to_one_and_many_to_many() -> None:
    (j,) = joins("books", ("select", "reviews(*)"))
    assert (j.table, j.on, j.to_one) == ("reviews", (("id", "book_id"),), False)
    (j,) = joins("authors", ("select", "profiles(*)"))
    assert (j.table, j.to_one) == ("profiles", True)
    (j,) = joins("books", ("select", "labels(*)"))
    assert (j.table, j.to_one, j.on) == ("labels", False, ())
    assert j.via == ("book_labels", (("book_id", "id"),), (("label_id", "id"),))


def test_nested_aliases_are_unique_and_params_follow_labels() -> None:
    (b,) = joins("authors", ("select", "name,bs:books!author_id(title,authors!editor_id(*))"),
                 ("bs.title", "eq.x"))
    assert b.alias == "books_1" and len(b.params.filters) == 1
    (e,) = b.joins
    assert (e.table, e.alias, e.to_one) == ("authors", "authors_1", True)


def test_ambiguous_is_300_pgrst201_and_missing_is_pgrst200() -> None:
    with pytest.raises(rq.ApiError) as exc:
        joins("books", ("select", "*,authors(*)"))
    err = exc.value
    assert (err.status, err.code) == (300, "PGRST201")
    assert [d["cardinality"] for d in err.details] == ["many-to-one", "many-to-one"]
    assert err.hint is not None and "'authors!books_editor_id_fkey'" in err.hint
    with pytest.raises(rq.ApiError) as exc:
        joins("staff", ("select", "staff(*)"))  # self-reference: both directions
    assert exc.value.code == "PGRST201"
    (boss,) = joins("staff", ("select", "boss_id(*)"))
    assert boss.to_one
    with pytest.raises(rq.ApiError) as exc:
        joins("books", ("select", "*,nope(*)"))
    assert (exc.value.status, exc.value.code) == (400, "PGRST200")
    with pytest.raises(rq.ApiError) as exc:
        joins("books", ("select", "*,reviews!nope(*)"))
    assert "using the hint 'nope'" in str(exc.value.details)


def test_a_filter_on_a_resource_not_embedded_is_pgrst108() -> None:
    with pytest.raises(rq.ApiError) as exc:
        joins("books", ("select", "*,reviews(*)"), ("authors.name", "eq.x"))
    assert (exc.value.status, exc.value.code) == (400, "PGRST108")
    assert exc.value.message == "'authors' is not an embedded resource in this request"


def test_has_embeds() -> None:
    assert not has_embeds(rq.parse_read([("select", "id"), ("id", "eq.1")]))
    assert has_embeds(rq.parse_read([("select", "id,r(*)")]))
    assert has_embeds(rq.parse_read([("r.id", "eq.1")]))
