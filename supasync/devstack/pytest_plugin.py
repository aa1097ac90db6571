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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .testing import StackProcess


@pytest.fixture(scope="session")
def supabase_stack() -> Iterator[StackProcess]:
    """A local stack shared by the whole test session."""
    stack = StackProcess()
    stack.start()
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def supabase_stack_factory() -> Iterator[Callable[..., StackProcess]]:
    """Start extra stacks for one test: ``supabase_stack_factory(jwt_expiry=5)``."""
    started: list[StackProcess] = []

    def factory(**kwargs: Any) -> StackProcess:
        stack = StackProcess(**kwargs)
        started.append(stack)
        return stack.start()

    try:
        yield factory
    finally:
        for stack in started:
            stack.close()
