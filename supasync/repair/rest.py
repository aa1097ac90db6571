"""PostgREST access for gap repair, always with the subscriber's own token.

Everything repair reads goes through here, so RLS decides what a subscriber gets back exactly
as it decides what Realtime sends live (``design.md`` §2). Reads use keyset pagination, never
offsets: ``order=<cols>`` plus "after the last row's values" as PostgREST filters, so rows
inserted or deleted meanwhile neither shift pages nor get read twice (``anchors.md`` §3.3:
a non-unique cursor must always be paired with the primary key).

* :class:`Rest` - ``pages()`` (keyset pages on any column list ending in the primary key),
  ``raw_pages()`` (the same pages left undecoded, for the mirror's snapshot), ``by_keys()``
  (re-read given keys), ``select_counted()`` (rows and their total), ``rpc()``,
  ``table_info()`` (primary key and columns from the OpenAPI root, where PostgREST marks key
  columns with ``<pk/>``).
* Every read goes past a server's cap on answers (PostgREST's ``db-max-rows``): keyset reads
  end only at an empty page or one shorter than an earlier one (:func:`read_ended`), key reads
  compare their rows with the count.
* :func:`keyset_after` and :func:`quote` - the pure query-building helpers; :func:`last_element`
  finds the last row of an undecoded page.

Errors: any non-2xx answer is a :class:`~supasync.core.errors.RestError` carrying PostgREST's
``code``/``message``/``details``/``hint``; network failures are a RestError without status.
Tokens go in headers only and never into messages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..core.errors import RestError

__all__ = [
    "RawPage",
    "Rest",
    "TableInfo",
    "keyset_after",
    "last_element",
    "quote",
    "read_ended",
    "render_value",
]

Params = list[tuple[str, str]]

# Characters PostgREST reserves inside in-lists and and/or trees; values holding them are
# double-quoted (PostgREST docs, "Reserved characters").
_RESERVED = set(',.:()" \\')


def render_value(value: Any) -> str:
    """A row value as PostgREST filter text (JSON scalars; others as JSON text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


def quote(value: Any) -> str:
    """*value* for use inside ``in.(...)`` or an ``and``/``or`` tree."""
    text = render_value(value)
    if text == "" or any(ch in _RESERVED for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def read_ended(count: int, limit: int, most: int) -> bool:
    """Whether a keyset read ends after a page of *count* rows asked with *limit*, when the
    largest page before it had *most* rows (0 for the first page).

    An empty page ends it. A short page ends it only when it is also shorter than an earlier
    page: a server that caps answers below the limit (PostgREST's ``db-max-rows``) gives every
    page but the last exactly the cap, so the read goes on until a page falls short of that,
    or comes back empty - one more request when the whole read fits in its first page.
    """
    return count == 0 or count < min(limit, most)


def _page_params(
    select: str,
    filters: Sequence[tuple[str, str]],
    order: Sequence[str],
    last: Sequence[Any] | None,
    limit: int,
) -> Params:
    """The query of one keyset page: columns, filters, after *last*, ordered, limited."""
    params: Params = [("select", select), *filters]
    if last is not None:
        params += keyset_after(order, last)
    params += [("order", ",".join(f"{c}.asc" for c in order)), ("limit", str(limit))]
    return params


def _keyset_of(
    tail: Mapping[str, Any] | None, order: Sequence[str], schema: str, table: str
) -> list[Any]:
    """The next page's keyset position: *tail*'s values of the order columns.

    Raises:
        RestError: the row lacks an order column (the subscription's columns left it out).
    """
    missing = [c for c in order if tail is None or c not in tail]
    if tail is None or missing:
        raise RestError(
            f"rows of {schema}.{table} lack the order column(s) {missing}; include "
            "them in the subscription's columns"
        )
    return [tail[c] for c in order]


def keyset_after(columns: Sequence[str], values: Sequence[Any]) -> Params:
    """The filter for rows strictly after *values* in ``order=columns`` (all ascending).

    ``(a, b) > (x, y)`` is written ``or=(a.gt.x,and(a.eq.x,b.gt.y))``, wrapped in ``and=(...)``
    so it combines with a subscription filter that has its own ``or``. One column is simply
    ``a=gt.x``.
    """
    if len(columns) != len(values) or not columns:
        raise ValueError("keyset_after needs one value per order column")
    if len(columns) == 1:
        return [(columns[0], f"gt.{render_value(values[0])}")]
    branches: list[str] = []
    for i, col in enumerate(columns):
        eqs = [f"{c}.eq.{quote(v)}" for c, v in zip(columns[:i], values[:i], strict=True)]
        cond = f"{col}.gt.{quote(values[i])}"
        branches.append(f"and({','.join([*eqs, cond])})" if eqs else cond)
    return [("and", f"(or({','.join(branches)}))")]


def last_element(body: bytes) -> Any:
    """The last element of a JSON array, decoded alone, without decoding the rest (the next
    keyset page needs only the last row). None if *body* is not a non-empty JSON array whose
    last element is an object or an array.

    Scans back from the closing bracket counting brackets. Strings are skipped whole: in JSON
    every ``"`` inside a string is escaped, and nothing outside strings is, so going backwards
    the unescaped quote before a closing quote is always the opening one. *body* is assumed
    to be valid JSON; if it is not, the decoding of the found element may still succeed, and
    the caller's full decoding of the page will fail.
    """
    end = len(body.rstrip())
    if end < 2 or body[end - 1] != 0x5D:  # ]
        return None
    pos = end - 2
    depth = 0
    while pos >= 0:
        c = body[pos]
        if c == 0x22:  # "
            while True:
                pos = body.rfind(b'"', 0, pos)
                if pos < 0:
                    return None
                slashes = 0
                while pos > slashes and body[pos - 1 - slashes] == 0x5C:  # \
                    slashes += 1
                if slashes % 2 == 0:
                    break
        elif c in (0x7D, 0x5D):  # } ]
            depth += 1
        elif c in (0x7B, 0x5B):  # { [
            depth -= 1
            if depth == 0:
                try:
                    return json.loads(body[pos : end - 1])
                except ValueError:
                    return None
            if depth < 0:
                return None  # the array's own "[": its last element is a scalar, or none
        pos -= 1
    return None


def _content_range_count(header: str | None) -> int | None:
    """Rows in a ``Content-Range: 0-4999/*`` answer (``*/*``, ``*/0``: 0); None if absent."""
    if not header:
        return None
    span = header.split("/", 1)[0].strip()
    if span == "*":
        return 0
    first, sep, last = span.partition("-")
    if not sep or not first.isdigit() or not last.isdigit():
        return None
    return int(last) - int(first) + 1


def content_range_total(header: str | None) -> int | None:
    """The total of a ``Content-Range: 0-24/1234`` answer (asked with ``Prefer:
    count=exact``); None if absent or ``*``."""
    total = (header or "").rsplit("/", 1)[-1].strip()
    return int(total) if total.isdigit() else None


def _json_of(resp: httpx.Response, path: str) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError as exc:
        raise RestError(
            f"PostgREST answered {path} with something that is not JSON",
            status=resp.status_code,
        ) from exc


def _rows_of(data: Any, schema: str, table: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise RestError(f"PostgREST answered a read of {schema}.{table} with a non-list")
    return data


@dataclass(frozen=True)
class RawPage:
    """A page of rows as PostgREST sent it: the JSON array's bytes, its row count, and the
    last row (decoded alone: the next page starts after it)."""

    body: bytes
    count: int
    last: dict[str, Any] | None


@dataclass(frozen=True)
class TableInfo:
    """A table as the OpenAPI root describes it: primary key and column name -> type."""

    primary_key: tuple[str, ...]
    columns: dict[str, str]


class Rest:
    """PostgREST at *url* (``https://<project>.supabase.co/rest/v1``) for one subscriber.

    Args:
        url: the PostgREST base URL.
        api_key: the project's anon (or service) key, sent as ``apikey``.
        token: returns the subscriber's current access token (Authorization: Bearer).
        client: an httpx client to use (not closed here); a private one otherwise.
        timeout: seconds per request for the private client.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        token: Callable[[], Awaitable[str]],
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._api_key = api_key
        self._token = token
        self._own = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()

    async def _headers(self, schema: str, *, body: bool = False) -> dict[str, str]:
        headers = {
            "apikey": self._api_key,
            "Authorization": f"Bearer {await self._token()}",
            "Accept": "application/json",
        }
        if schema != "public":
            headers["Content-Profile" if body else "Accept-Profile"] = schema
        return headers

    async def _send(
        self,
        method: str,
        path: str,
        *,
        schema: str = "public",
        params: Params | None = None,
        body: Any = None,
        prefer: str | None = None,
    ) -> httpx.Response:
        headers = await self._headers(schema, body=body is not None)
        if prefer:
            headers["Prefer"] = prefer
        try:
            resp = await self._client.request(
                method,
                f"{self.url}/{path}",
                params=tuple(params) if params else None,
                json=body,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise _error(resp, path)
        return resp

    def _unreachable(self, exc: httpx.HTTPError) -> RestError:
        return RestError(
            f"cannot reach PostgREST at {self.url}: {type(exc).__name__}: {exc}; check "
            "SUPABASE_URL and that the server is up (repair retries)"
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        schema: str = "public",
        params: Params | None = None,
        body: Any = None,
    ) -> Any:
        resp = await self._send(method, path, schema=schema, params=params, body=body)
        return _json_of(resp, path)

    async def select(self, schema: str, table: str, params: Params) -> list[dict[str, Any]]:
        """``GET /<table>?<params>``: the rows, as JSON objects."""
        data = await self._request("GET", table, schema=schema, params=params)
        return _rows_of(data, schema, table)

    async def select_counted(
        self, schema: str, table: str, params: Params
    ) -> tuple[list[dict[str, Any]], int | None]:
        """:meth:`select` with ``Prefer: count=exact``: the rows, and how many rows match the
        query in all (None if the server does not say), which is more than the rows when the
        server caps its answers (PostgREST's ``db-max-rows``)."""
        resp = await self._send("GET", table, schema=schema, params=params,
                                prefer="count=exact")
        rows = _rows_of(_json_of(resp, table), schema, table)
        return rows, content_range_total(resp.headers.get("Content-Range"))

    async def pages(
        self,
        schema: str,
        table: str,
        *,
        order: Sequence[str],
        filters: Sequence[tuple[str, str]] = (),
        select: str = "*",
        page_size: int = 1000,
        after: Sequence[Any] | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Keyset pages ordered by *order* (which must end with the primary key, so it is
        unique), each after the last row of the previous page; starts after *after* if given.
        Every page is one request (one snapshot); pages together are not a snapshot.

        A page shorter than *page_size* is not taken for the end (see :func:`read_ended`): a
        server may cap its answers below the limit asked (PostgREST's ``db-max-rows``, 1000 on
        Supabase by default), and a read cut short there made a repair's key scan take every
        row past the cap for deleted."""
        last = list(after) if after is not None else None
        most = 0
        while True:
            params = _page_params(select, filters, order, last, page_size)
            rows = await self.select(schema, table, params)
            if rows:
                yield rows
            if read_ended(len(rows), page_size, most):
                return
            most = max(most, len(rows))
            last = _keyset_of(rows[-1], order, schema, table)

    async def raw_pages(
        self,
        schema: str,
        table: str,
        *,
        order: Sequence[str],
        filters: Sequence[tuple[str, str]] = (),
        select: str = "*",
        page_size: int = 1000,
        after: Sequence[Any] | None = None,
        max_bytes: int | None = None,
    ) -> AsyncIterator[RawPage]:
        """Keyset pages like :meth:`pages`, each left undecoded (:class:`RawPage`), for a caller
        that decodes rows faster than a dict per row. The row count is PostgREST's
        ``Content-Range``; the keyset cursor comes from the last row alone
        (:func:`last_element`). A server that sends no ``Content-Range``, or a page whose last
        row cannot be found that way, has the page decoded here instead (same answer, slower).

        The read ends as :meth:`pages`' does (:func:`read_ended`: not at the first short page,
        which may be a server's cap).

        *max_bytes* bounds the memory of a page: the first page asks for at most
        ``page_size // 8`` rows, each next one for as many rows as fit in *max_bytes* at the
        average row size seen so far, never more than *page_size*.

        Raises:
            RestError: as :meth:`pages`; also when the answer is not a JSON array.
        """
        last = list(after) if after is not None else None
        limit = page_size if max_bytes is None else max(1, page_size // 8)
        seen_rows = seen_bytes = most = 0
        while True:
            params = _page_params(select, filters, order, last, limit)
            page = await self._raw_get(schema, table, params)
            if not page.count:
                return
            yield page
            if read_ended(page.count, limit, most):
                return
            most = max(most, page.count)
            last = _keyset_of(page.last, order, schema, table)
            if max_bytes is not None:
                seen_rows += page.count
                seen_bytes += len(page.body)
                limit = max(1, min(page_size, seen_rows * max_bytes // max(1, seen_bytes)))

    async def _raw_get(self, schema: str, table: str, params: Params) -> RawPage:
        headers = await self._headers(schema)
        try:
            # Streamed and joined here: httpx keeps a read body on the Response, which sits in
            # a reference cycle, so megabyte pages would pile up until the next full collection.
            async with self._client.stream("GET", f"{self.url}/{table}", params=tuple(params),
                                           headers=headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error(resp, table)
                body = b"".join([chunk async for chunk in resp.aiter_bytes()])
                count = _content_range_count(resp.headers.get("Content-Range"))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        tail = last_element(body) if count else None
        if count is None or (count and not isinstance(tail, dict)):
            try:
                rows = json.loads(body)
            except ValueError as exc:
                raise RestError(f"PostgREST answered {table} with something that is not JSON",
                                status=resp.status_code) from exc
            rows = _rows_of(rows, schema, table)
            count = len(rows)
            tail = rows[-1] if rows else None
        return RawPage(body, count, tail if isinstance(tail, dict) else None)

    async def by_keys(
        self,
        schema: str,
        table: str,
        pk_columns: Sequence[str],
        keys: Iterable[Sequence[Any]],
        *,
        filters: Sequence[tuple[str, str]] = (),
        select: str = "*",
        chunk: int = 100,
    ) -> list[dict[str, Any]]:
        """The rows with the given primary keys that the subscriber may see and that match
        *filters*; keys not returned are gone for this subscriber.

        Keys go *chunk* at a time. A server that caps its answers below a chunk (PostgREST's
        ``db-max-rows``; Supabase's "Max rows" can be set below 100) is read past its cap: each
        chunk asks for its count too (``Prefer: count=exact``) and reads on in key order until
        it has them all - else the keys past the cap would look deleted. From a server that
        does not count, a short answer is followed by one more read after its last row.
        """
        out: list[dict[str, Any]] = []
        keys = list(keys)
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            if len(pk_columns) == 1:
                wanted: Params = [
                    (pk_columns[0], f"in.({','.join(quote(k[0]) for k in part)})")]
            else:
                ors = ",".join(
                    "and("
                    + ",".join(
                        f"{c}.eq.{quote(v)}" for c, v in zip(pk_columns, k, strict=True)
                    )
                    + ")"
                    for k in part
                )
                wanted = [("and", f"(or({ors}))")]
            got: list[dict[str, Any]] = []
            total: int | None = None
            most = 0
            while len(got) < len(part):
                limit = len(part) - len(got)
                # The rest comes after the last row read; the total stays the first answer's.
                last = _keyset_of(got[-1], pk_columns, schema, table) if got else None
                params = _page_params(select, [*filters, *wanted], pk_columns, last, limit)
                rows, counted = await self.select_counted(schema, table, params)
                if not got:
                    total = counted
                got += rows
                if not rows or (total is not None and len(got) >= total):
                    break
                if total is None and read_ended(len(rows), limit, most):
                    break
                most = max(most, len(rows))
            out += got
        return out

    async def count(
        self, schema: str, table: str, filters: Sequence[tuple[str, str]] = ()
    ) -> int | None:
        """How many rows the subscriber sees (``HEAD`` with ``Prefer: count=exact``: a scan
        of the table on the server); None if the server does not say or cannot be asked."""
        params = [("select", "*"), *filters, ("limit", "1")]
        try:
            resp = await self._send("HEAD", table, schema=schema, params=params,
                                    prefer="count=exact")
        except RestError:  # unreachable or refused: the read itself will say why
            return None
        return content_range_total(resp.headers.get("Content-Range"))

    async def rpc(self, fn: str, args: Mapping[str, Any], *, schema: str = "public") -> Any:
        """``POST /rpc/<fn>`` with JSON arguments; returns the decoded answer."""
        return await self._request("POST", f"rpc/{fn}", schema=schema, body=dict(args))

    async def table_info(self, schema: str, table: str) -> TableInfo | None:
        """Primary key and columns of *table* from ``GET /`` (OpenAPI), or None if the
        subscriber's role cannot see the table there."""
        doc = await self._request("GET", "", schema=schema)
        definitions = doc.get("definitions", {}) if isinstance(doc, dict) else {}
        found = definitions.get(table)
        if not isinstance(found, dict):
            return None
        props = found.get("properties", {})
        pk: list[str] = []
        columns: dict[str, str] = {}
        for name, prop in props.items():
            if not isinstance(prop, dict):
                continue
            columns[name] = str(prop.get("format", prop.get("type", "")))
            if "<pk/>" in str(prop.get("description", "")):
                pk.append(name)
        return TableInfo(tuple(pk), columns)


def _error(resp: httpx.Response, path: str) -> RestError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return RestError(
            str(body.get("message") or f"HTTP {resp.status_code} on {path or '/'}"),
            status=resp.status_code,
            code=body.get("code"),
            details=body.get("details"),
            hint=body.get("hint"),
        )
    return RestError(
        f"HTTP {resp.status_code} on {path or '/'}: {resp.text[:200]}", status=resp.status_code
    )
