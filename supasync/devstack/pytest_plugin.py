"""pytest fixtures for testing against a local Supabase-compatible stack.

Registered under the ``pytest11`` entry point, so installing supasync makes them available:

* ``supabase_stack`` (session scope): a running stack in a child process, a
  :class:`~supasync.devstack.testing.StackProcess`. Use ``.url``, ``.anon_key``,
  ``.service_role_key``, ``.jwt_secret``, ``.db_url``, ``.sql(query, params)``,
  ``.mint(claims)``, ``.create_user(email, password)``, ``.sign_in(email, password)`` and
  the fault controls ``.drop_connections()``, ``.close_connections()``,
  ``.pause_changes()``, ``.resume_changes()``, ``.expire_tokens()``, ``.set_latency(ms)``.
* ``supabase_stack_factory`` (function scope): ``factory(**kwargs)`` starts an extra stack
  (e.g. ``jwt_expiry=5`` or a shared ``data_dir``) that is stopped after the test.

Options: ``--supasync-stack-url`` is not needed; everything runs on loopback.

pytest loads this module in every environment where supasync is installed, including a lean
``pip install supasync`` without the stack's dependencies, so it imports nothing heavy: the stack
(:mod:`supasync.devstack.testing`, which needs aiohttp and psycopg) is imported when a test first
asks for a fixture. Without the ``stack`` extra, such a test is *skipped* with a reason that
names the line to run, ``pip install 'supasync[stack]'``; other tests are not affected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ..core.errors import MissingExtra
from ..core.extras import EXTRAS, require

if TYPE_CHECKING:
    from .testing import StackProcess


def stack_process_class(fixture: str) -> type[StackProcess]:
    """The :class:`~supasync.devstack.testing.StackProcess` class for *fixture*, importing the
    local stack on first use.

    Raises:
        pytest.skip.Exception: a dependency of the ``stack`` extra is not installed; the reason
            ends with ``pip install 'supasync[stack]'``.
    """
    try:
        for module in EXTRAS["stack"]:
            require(module, "stack", f"the {fixture} fixture needs the local stack")
    except MissingExtra as exc:
        pytest.skip(str(exc))
    from .testing import StackProcess

    return StackProcess


@pytest.fixture(scope="session")
def supabase_stack() -> Iterator[StackProcess]:
    """A local stack shared by the whole test session."""
    stack = stack_process_class("supabase_stack")()
    stack.start()
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def supabase_stack_factory() -> Iterator[Callable[..., StackProcess]]:
    """Start extra stacks for one test: ``supabase_stack_factory(jwt_expiry=5)``."""
    stack_class = stack_process_class("supabase_stack_factory")
    started: list[StackProcess] = []

    def factory(**kwargs: Any) -> StackProcess:
        stack = stack_class(**kwargs)
        started.append(stack)
        return stack.start()

    try:
        yield factory
    finally:
        for stack in started:
            stack.close()
