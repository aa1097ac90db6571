"""Keep tokens, keys and passwords out of logs.

:func:`mask` rewrites a text so no secret survives in it:

* JWTs (``eyJ...``, three base64url parts, or a long header fragment) become ``eyJ***``;
* Supabase API keys (``sb_publishable_...``, ``sb_secret_...``) become ``sb_publishable_***``;
* the value after ``apikey``, ``api_key``, ``x-api-key``, ``access_token``, ``refresh_token``,
  ``token``, ``password``, ``secret`` or ``authorization`` - written as ``key=value`` (query
  strings, keyword arguments), ``key: value`` (headers), ``"key": "value"`` (JSON) or
  ``'key': 'value'`` (Python reprs) - becomes ``***``;
* the password in a URL's user-info (``postgresql://user:pw@host``) becomes ``***``.

:class:`RedactingFilter` is a :class:`logging.Filter` that applies :func:`mask` to a record's
formatted message, its exception text and its stack text; it never drops a record.
:func:`install_redaction` puts one on the loggers that can see secrets (``supasync``,
``realtime``, ``websockets``, ``httpx``, ``httpcore``, ``supabase_auth``).

Why also handlers: Python applies a *logger's* filters only to records logged on that very logger,
not to records propagating up from its children (``realtime._async.client`` logs through its
own logger). So :func:`install_redaction` also filters every existing descendant of those loggers
and, by default, every handler on the root logger, which catches records from loggers created
later as long as they reach a root handler. Installing twice is harmless.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["DEFAULT_LOGGERS", "RedactingFilter", "install_redaction", "mask"]

DEFAULT_LOGGERS: Final = (
    "supasync",
    "realtime",
    "websockets",
    "httpx",
    "httpcore",
    "supabase_auth",
)

MASK: Final = "***"

# A JWT: base64url JSON header ("eyJ" is '{"'), then optionally payload and signature.
_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}")
# New-style Supabase keys: sb_publishable_..., sb_secret_... (and any other sb_<kind>_...).
_SB_KEY: Final = re.compile(r"\b(sb_[a-z]+_)[A-Za-z0-9_-]{6,}")
# key<sep>value pairs. The separator allows quotes around the key and the value, and ":" or "=".
_PAIR: Final = re.compile(
    r"""(?ix)
    (?P<key>\b(?:x-api-key|apikey|api[_-]?key|access[_-]?token|refresh[_-]?token|token
              |password|passwd|secret|jwt[_-]?secret|authorization)\b)
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?P<scheme>(?:bearer|basic)\s+)?
    (?P<value>[^\s"'&,;)}\]]+)
    """
)
# user:password@ in URLs.
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<pw>[^@\s/]+)@", re.IGNORECASE
)


def mask(text: str) -> str:
    """Return *text* with every token, key and password replaced by ``***`` (see module doc).

    Idempotent: ``mask(mask(t)) == mask(t)``.
    """
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _PAIR.sub(_mask_pair, text)
    text = _JWT.sub("eyJ" + MASK, text)
    return _SB_KEY.sub(lambda m: m.group(1) + MASK, text)


def _mask_pair(m: re.Match[str]) -> str:
    value = m.group("value")
    if value == MASK or value.startswith("eyJ" + MASK) or value.endswith("_" + MASK):
        return m.group(0)
    return f"{m.group('key')}{m.group('sep')}{m.group('scheme') or ''}{MASK}"


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in each record it sees (see :func:`mask`).

    It formats the message once (``msg % args``), masks it and stores the result back in
    ``record.msg`` with ``record.args = None``, so later handlers format the safe text. Exception
    and stack texts are formatted and masked too. Always returns True (never drops a record).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for logging to report
            return True
        safe = mask(message)
        if safe != message or record.args:
            record.msg = safe
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


_FILTER: Final = RedactingFilter()


def _add(target: logging.Filterer) -> None:
    if not any(isinstance(f, RedactingFilter) for f in target.filters):
        target.addFilter(_FILTER)


def install_redaction(
    loggers: Iterable[str] = DEFAULT_LOGGERS, *, root_handlers: bool = True
) -> RedactingFilter:
    """Install the redacting filter where secrets can reach the logs.

    Args:
        loggers: logger names; the filter goes on each, on each existing descendant
            (``realtime._async.client`` for ``realtime``) and on their handlers.
        root_handlers: also filter every handler attached to the root logger (recommended: it
            covers loggers created after this call).

    Returns:
        The (shared) filter instance. Calling again adds nothing twice.
    """
    names = tuple(loggers)
    manager = logging.Logger.manager
    existing = [
        name
        for name, obj in list(manager.loggerDict.items())
        if isinstance(obj, logging.Logger) and any(name.startswith(n + ".") for n in names)
    ]
    for name in (*names, *existing):
        logger = logging.getLogger(name)
        _add(logger)
        for handler in logger.handlers:
            _add(handler)
    if root_handlers:
        for handler in logging.getLogger().handlers:
            _add(handler)
    return _FILTER
