"""Make installed packages look uninstalled, for tests of a lean install in this environment.

:func:`block` puts ``None`` into ``sys.modules`` for a package and every submodule of it that is
already imported: the import system then raises ``ModuleNotFoundError`` (with ``.name`` set),
exactly as for a package that is not installed. ``monkeypatch`` undoes it after the test.
"""

from __future__ import annotations

import sys

import pytest


def block(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Every later ``import <package>`` (or of a submodule) fails as if it were not installed."""
    for package in packages:
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, package, None)
