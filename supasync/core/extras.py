"""Optional dependency groups (extras), and one way to say which one a feature needs.

``pip install supasync`` brings the client, ``tail``, ``sql`` (printing), ``verify`` and
``mirror``. Heavier parts are extras (``pyproject.toml``):

=========  ====================================  ==========================================
extra      brings                                needed by
=========  ====================================  ==========================================
``db``     psycopg                               ``supasync sql --apply``/``--uninstall``,
                                                 ``verify``'s catalog checks and probe
``stack``  aiohttp, psycopg                      ``supasync dev``, the pytest plugin
=========  ====================================  ==========================================

:func:`require` imports a module of an extra, or raises
:class:`~supasync.core.errors.MissingExtra` naming the feature and the exact ``pip install`` line.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtra

__all__ = ["EXTRAS", "require"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "db": ("psycopg",),
    "stack": ("aiohttp", "psycopg"),
}


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import *module* (part of the optional group *extra*) for *feature*.

    Raises:
        MissingExtra: the module is not installed; the message says ``pip install
            'supasync[<extra>]'``.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Only the module itself missing counts: a broken install of it must show its own error.
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise
        raise MissingExtra(feature, module.split(".")[0], extra) from exc
