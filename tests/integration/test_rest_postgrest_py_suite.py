"""postgrest-py's own integration tests, written for a bare PostgREST, run against the stack.

They are not vendored here. Point ``SUPASYNC_POSTGREST_PY_SRC`` at a checkout of them: the
``src/postgrest`` folder of ``supabase/supabase-py`` (or the root of the older
``supabase/postgrest-py``), which holds ``infra/init.sql`` and ``tests/``. The test starts a
stack, loads ``init.sql``, and runs every ``*_integration.py`` test file in a child pytest whose
HTTP requests to ``http://127.0.0.1:3000`` (the address the suite hard-codes) go to the stack's
``/rest/v1`` with the service-role key (a bare PostgREST needs no key; Supabase's gateway does).
Skipped when the variable is unset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from supasync.devstack.testing import StackProcess

from .test_rest import start_stack

pytestmark = pytest.mark.integration

SRC = os.environ.get("SUPASYNC_POSTGREST_PY_SRC", "")

REDIRECT_PLUGIN = textwrap.dedent('''
    """Send the suite's requests for http://127.0.0.1:3000 to the stack, with its key."""
    import os

    import httpx

    TARGET = httpx.URL(os.environ["SUPASYNC_STACK_REST_URL"])
    KEY = os.environ["SUPASYNC_STACK_KEY"]


    def _redirect(request):
        if (request.url.host, request.url.port) == ("127.0.0.1", 3000):
            request.url = request.url.copy_with(
                host=TARGET.host, port=TARGET.port,
                path=TARGET.path.rstrip("/") + request.url.path)
            request.headers.setdefault("apikey", KEY)
            request.headers.setdefault("Authorization", "Bearer " + KEY)


    _sync_send = httpx.Client.send
    _async_send = httpx.AsyncClient.send


    def send(self, request, **kw):
        _redirect(request)
        return _sync_send(self, request, **kw)


    async def asend(self, request, **kw):
        _redirect(request)
        return await _async_send(self, request, **kw)


    httpx.Client.send = send
    httpx.AsyncClient.send = asend
''')


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    s = start_stack()
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(s.data_dir, ignore_errors=True)


@pytest.mark.skipif(not SRC, reason="SUPASYNC_POSTGREST_PY_SRC is not set")
def test_postgrest_py_integration_suite_passes_against_the_stack(stack: StackProcess) -> None:
    src = Path(SRC)
    init_sql = src / "infra" / "init.sql"
    files = sorted(str(p) for p in (src / "tests").rglob("*_integration.py"))
    assert init_sql.is_file() and files, f"no infra/init.sql or *_integration.py under {src}"
    stack.sql(init_sql.read_text())
    plugin_dir = Path(tempfile.mkdtemp(prefix="supasync-pgpy-"))
    try:
        (plugin_dir / "supasync_pgpy_redirect.py").write_text(REDIRECT_PLUGIN)
        env = {**os.environ, "SUPASYNC_STACK_REST_URL": f"{stack.url}/rest/v1",
               "SUPASYNC_STACK_KEY": stack.service_role_key,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir), str(src),
                                                           os.environ.get("PYTHONPATH")]))}
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-p", "supasync_pgpy_redirect", "-c", os.devnull, "--rootdir", str(src),
             "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
             *files],
            env=env, cwd=src, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
