"""Shared test configuration. The ``supabase_stack`` fixture comes from supasync's own pytest
plugin (supasync.devstack.pytest_plugin), loaded through its entry point."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from supasync.devstack.testing import StackProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="run long randomised tests too")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    """A local stack of this test module's own, so its faults, restarts, latency and schema
    changes stay local (the plugin's ``supabase_stack`` is shared by the whole session)."""
    with StackProcess() as s:
        yield s
