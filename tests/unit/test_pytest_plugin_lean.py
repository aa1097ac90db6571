"""supasync's pytest plugin in a lean install (no ``stack`` extra): pytest still starts and runs
every test; a test that asks for a stack fixture is skipped with a reason naming the pip line.

The inner pytest runs in a fresh interpreter where psycopg and aiohttp cannot be imported from
the start, so the plugin is loaded (through its entry point) exactly as in such an install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_RUN = """
import sys
for name in ("psycopg", "aiohttp"):
    sys.modules[name] = None
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""

_TESTS = '''
def test_plain():
    assert True

def test_stack(supabase_stack):
    raise AssertionError("ran without the stack's dependencies")

def test_factory(supabase_stack_factory):
    raise AssertionError("ran without the stack's dependencies")
'''


def test_stack_fixtures_skip_naming_the_extra_without_it(tmp_path: Path) -> None:
    (tmp_path / "test_lean.py").write_text(_TESTS)
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, "-rs", "-p", "no:cacheprovider", "-W",
         "ignore::DeprecationWarning", "test_lean.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed, 2 skipped" in out, out
    for fixture in ("supabase_stack", "supabase_stack_factory"):
        assert (f"the {fixture} fixture needs the local stack (aiohttp is not installed): "
                "pip install 'supasync[stack]'") in out, out
