"""Undecoded pages: the last row found without decoding the page, and the row count read from
PostgREST's ``Content-Range``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from supasync.repair.rest import _content_range_count, last_element

# Strings full of what could fool a backwards scan: quotes, backslashes, brackets, commas.
tricky = st.text(alphabet=st.sampled_from(list('"\\{}[],: abé\n\U0001F600')), max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(tricky, inner, max_size=3), max_leaves=12)
rows = st.dictionaries(tricky, values, min_size=1, max_size=5)


@settings(max_examples=400)
@given(st.lists(rows, min_size=1, max_size=4), st.sampled_from([None, (",", ":"), (", ", ": ")]),
       st.booleans())
def test_last_element_is_the_last_row(page: list[dict[str, Any]],
                                      separators: tuple[str, str] | None, ascii_: bool) -> None:
    body = json.dumps(page, separators=separators, ensure_ascii=ascii_).encode()
    assert last_element(body) == page[-1]
    assert last_element(body + b" \n") == page[-1]


def test_last_element_edge_cases() -> None:
    assert last_element(b"[]") is None
    assert last_element(b"[1, 2]") is None  # not a row
    assert last_element(b'["a", "b]"]') is None
    assert last_element(b'{"a": 1}') is None
    assert last_element(b"") is None
    assert last_element(b'[{"a": "x\\\\"}]') == {"a": "x\\"}  # an escaped backslash ends it
    assert last_element(b'[{"a": "\\"}, {\\""}]') == {"a": '"}, {"'}
    assert last_element(b'[{"a":1},[2]]') == [2]


def test_content_range_count() -> None:
    assert _content_range_count("0-4999/*") == 5000
    assert _content_range_count("10-19/1000") == 10
    assert _content_range_count("*/*") == 0
    assert _content_range_count("*/0") == 0
    assert _content_range_count(None) is None
    assert _content_range_count("bytes 0-10") is None
