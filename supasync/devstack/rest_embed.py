"""Resource embedding for the PostgREST subset: which foreign key an embedding follows.

Sans-I/O: the catalog's foreign keys (:class:`ForeignKey`, read by
:func:`.rest_catalog.foreign_keys`) and a parsed ``select`` in, :class:`~.rest_query.Join`
trees out. The rules follow PostgREST's documentation of resource embedding:

* From a table holding a foreign key, the referenced table is **to-one** (many-to-one): an
  object, or null. It can be named by the referenced table, the foreign-key column (single
  column keys) or the constraint.
* From the referenced table, the referencing table is **to-many** (one-to-many): an array.
  When the referencing columns are unique (a primary key or a unique index) it is one-to-one:
  an object, or null.
* Through a junction table holding foreign keys to both, each part of its primary key, two
  tables are **many-to-many**.
* ``name!hint`` picks one of several relationships: the hint is a constraint name, a column of
  the foreign key, or (many-to-many) the junction table. Several relationships left: 300
  ``PGRST201``, listing them; none: 400 ``PGRST200``.
* ``author.name=eq.x`` and the like filter the embedding named ``author`` (its alias if it has
  one); naming a resource the select does not embed is 400 ``PGRST108``.

Only tables of the request's schema are related; views are not (PostgREST can follow a view's
base tables, this subset cannot).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .rest_query import ApiError, Embed, EmbedParams, Join, ReadQuery, SelectItem


@dataclass(frozen=True)
class ForeignKey:
    """``table(columns)`` references ``ref_table(ref_columns)`` (one schema)."""

    name: str
    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    unique: bool = False  # the referencing columns are unique: one-to-one
    in_pk: bool = False  # the referencing columns are part of the table's primary key


@dataclass(frozen=True)
class _Candidate:
    target: str
    on: tuple[tuple[str, str], ...]  # (outer column, target column)
    to_one: bool
    cardinality: str
    fk: ForeignKey
    via: tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] | None = None
    fk2: ForeignKey | None = None

    def matches_hint(self, hint: str) -> bool:
        keys = [self.fk] + ([self.fk2] if self.fk2 else [])
        if self.via is not None and hint == self.via[0]:
            return True
        return any(hint == k.name or hint in k.columns for k in keys)

    def describe(self, outer: str) -> dict[str, str]:
        if self.via is not None:
            assert self.fk2 is not None
            rel = (f"{self.via[0]} using {self.fk.name}({', '.join(self.fk.columns)}) and "
                   f"{self.fk2.name}({', '.join(self.fk2.columns)})")
        else:
            rel = (f"{self.fk.name} using {self.fk.table}({', '.join(self.fk.columns)}) and "
                   f"{self.fk.ref_table}({', '.join(self.fk.ref_columns)})")
        return {"cardinality": self.cardinality, "embedding": f"{outer} with {self.target}",
                "relationship": rel}

    def spelled(self) -> str:
        return f"{self.target}!{self.via[0] if self.via else self.fk.name}"


def _candidates(outer: str, name: str, fks: list[ForeignKey]) -> Iterator[_Candidate]:
    for fk in fks:
        # A single-column key can also be named by its column (``author_id(*)``).
        by_column = fk.columns if len(fk.columns) == 1 else ()
        if fk.table == outer and name in (fk.ref_table, fk.name, *by_column):
            yield _Candidate(fk.ref_table, tuple(zip(fk.columns, fk.ref_columns, strict=True)),
                             True, "one-to-one" if fk.unique else "many-to-one", fk)
        if fk.ref_table == outer and name in (fk.table, fk.name):
            yield _Candidate(fk.table, tuple(zip(fk.ref_columns, fk.columns, strict=True)),
                             fk.unique, "one-to-one" if fk.unique else "one-to-many", fk)
    # Many-to-many: a junction table with a foreign key to each side, both part of its
    # primary key (PostgREST's rule: ``roles(film_id, actor_id)`` joins films and actors).
    for to_outer in fks:
        if to_outer.ref_table != outer or not to_outer.in_pk:
            continue
        for to_target in fks:
            if (to_target is to_outer or not to_target.in_pk
                    or to_target.table != to_outer.table
                    or to_target.ref_table != name or to_outer.table in (outer, name)):
                continue
            via = (to_outer.table,
                   tuple(zip(to_outer.columns, to_outer.ref_columns, strict=True)),
                   tuple(zip(to_target.columns, to_target.ref_columns, strict=True)))
            yield _Candidate(name, (), False, "many-to-many", to_outer, via, to_target)


def _pick(schema: str, outer: str, embed: Embed, fks: list[ForeignKey]) -> _Candidate:
    found = list(_candidates(outer, embed.name, fks))
    if embed.hint is not None:
        hint = embed.hint
        found = [c for c in found if c.matches_hint(hint)]
    if len(found) == 1:
        return found[0]
    if not found:
        using = f" using the hint '{embed.hint}'" if embed.hint else ""
        raise ApiError(
            400, "PGRST200",
            f"Could not find a relationship between '{outer}' and '{embed.name}' in the "
            "schema cache",
            f"Searched for a foreign key relationship between '{outer}' and '{embed.name}'"
            f"{using} in the schema '{schema}', but no matches were found.")
    raise ApiError(
        300, "PGRST201",
        f"Could not embed because more than one relationship was found for '{outer}' and "
        f"'{embed.name}'",
        [c.describe(outer) for c in found],
        f"Try changing '{embed.name}' to one of the following: "
        + ", ".join(f"'{c.spelled()}'" for c in found)
        + ". Find the desired relationship in the 'details' key.")


def has_embeds(q: ReadQuery) -> bool:
    """True if the request embeds anything or names an embedded resource."""
    return bool(q.embedded) or any(isinstance(i, Embed) for i in q.select)


def resolve(schema: str, table: str, q: ReadQuery, fks: list[ForeignKey]) -> tuple[Join, ...]:
    """The :class:`Join` of every embedding in ``q.select`` (nested ones inside), in order.

    Raises:
        ApiError: ``PGRST200`` (no relationship), ``PGRST201`` (several; status 300),
            ``PGRST108`` (a filter names a resource the select does not embed).
    """
    used = {table}
    seen: set[tuple[str, ...]] = set()

    def alias_for(target: str) -> str:
        n = 1
        while f"{target}_{n}" in used:
            n += 1
        used.add(f"{target}_{n}")
        return f"{target}_{n}"

    def walk(outer: str, select: tuple[SelectItem, ...], path: tuple[str, ...]
             ) -> tuple[Join, ...]:
        out: list[Join] = []
        for item in select:
            if not isinstance(item, Embed):
                continue
            c = _pick(schema, outer, item, fks)
            here = (*path, item.label)
            seen.add(here)
            params = q.embedded.get(here, EmbedParams())
            out.append(Join(item, schema, c.target, alias_for(c.target), c.on, c.to_one,
                            params, walk(c.target, item.select, here), c.via))
        return tuple(out)

    joins = walk(table, q.select, ())
    for path in q.embedded:
        if path not in seen:
            name = ".".join(path)
            raise ApiError(400, "PGRST108",
                           f"'{name}' is not an embedded resource in this request", None,
                           f"Verify that '{name}' is included in the 'select' query "
                           "parameter.")
    return joins
