"""Settings from the environment, ``.env`` and ``supasync.toml``, validated into one frozen object.

Sources, strongest first: the process environment (or the ``env`` mapping given to
:func:`load_settings`), then ``.env`` (read with python-dotenv; it never overrides a variable
that is already set), then ``supasync.toml`` for what does not fit in a variable (subscriptions,
JWT claims, tuning). Empty variables count as unset, so ``.env.example`` can be copied as is.

Environment variables (``docs/design.md`` §4):

=============================  ==============================================================
``SUPABASE_URL``               required; ``https://<ref>.supabase.co`` or ``http://host:port``
``SUPABASE_ANON_KEY``          the anon key (also the ``apikey`` for every identity but
                               service-role)
``SUPABASE_SERVICE_ROLE_KEY``  the service-role key (bypasses RLS)
``SUPABASE_ACCESS_TOKEN``      a user's access token, used as is
``SUPABASE_EMAIL``,            sign in as a user (both or neither); the session is refreshed
``SUPABASE_PASSWORD``
``SUPABASE_JWT_SECRET``        mint tokens from the project's JWT secret, claims from
                               ``[auth] claims`` (``role`` defaults to ``authenticated``)
``SUPABASE_DB_URL``            ``postgresql://...``, for ``supasync sql`` and ``verify``
``SUPASYNC_TOKEN_SOURCE``      force the identity: access_token, password, jwt_secret,
                               service_role or anon (overrides ``[auth] source``)
=============================  ==============================================================

Without a forced source, :meth:`Settings.token_source` takes the first available of
access_token, password, jwt_secret, service_role, anon.

``supasync.toml`` (every table and key optional; unknown keys are errors, with a "did you mean")::

    [auth]
    source = "password"                 # as SUPASYNC_TOKEN_SOURCE
    claims = { sub = "6f1c...", role = "authenticated" }   # for SUPABASE_JWT_SECRET

    [settings]
    heartbeat_interval = 15             # seconds between heartbeats
    reconnect_max_delay = 30            # cap of the reconnect backoff, seconds
    queue_size = 1000                   # events buffered per subscription
    refresh_margin = 60                 # refresh tokens this many seconds before exp

    [mirror]
    db = "mirror.sqlite"                # the mirror worker's SQLite file (relative to the cwd)

    [relay]                             # supasync relay (keys: supasync.relay.relay_settings)
    to = "nats://127.0.0.1:4222"        # or a list of server URLs
    stream = "SUPASYNC"
    cache = "relay.sqlite"

    [[subscription]]
    name = "open-todos"                 # unique; defaults to the table name
    table = "todos"                     # required
    schema = "public"                   # default "public"
    events = ["INSERT", "UPDATE", "DELETE"]   # or "*" (the default)
    filter = "status=eq.open"           # Realtime filter grammar, see supasync.core.filters
    columns = ["id", "status"]          # select list; default: all columns
    primary_key = ["id"]                # default: learned from the server / "id"
    repair = "auto"                     # auto | exact | cursor | diff | off
    cursor_column = "updated_at"        # required for repair = "cursor"

Every problem raises :class:`~supasync.core.errors.ConfigError` naming the key, the value (redacted
for keys, tokens, passwords, secrets and the database URL), where it came from and the fix.
This module reads files and nothing else: no network, no database.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import urlsplit

import jwt
from dotenv import dotenv_values

from ..core.errors import ConfigError, FilterError, redact
from ..core.filters import ALL, Filter, parse_filter

__all__ = [
    "DEFAULT_ENV_FILE",
    "DEFAULT_TOML",
    "EVENTS",
    "REPAIR_MODES",
    "TOKEN_SOURCES",
    "Settings",
    "SubscriptionSpec",
    "TokenSource",
    "load_settings",
    "url_port_problem",
]

TokenSource = Literal["access_token", "password", "jwt_secret", "service_role", "anon"]
#: The automatic order of :meth:`Settings.token_source`.
TOKEN_SOURCES: Final[tuple[str, ...]] = get_args(TokenSource)
RepairMode = Literal["auto", "exact", "cursor", "diff", "off"]
REPAIR_MODES: Final[tuple[str, ...]] = get_args(RepairMode)
EVENTS: Final = frozenset({"INSERT", "UPDATE", "DELETE"})
DEFAULT_ENV_FILE: Final = Path(".env")
DEFAULT_TOML: Final = Path("supasync.toml")

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
_TOP_KEYS: Final = ("auth", "settings", "mirror", "relay", "subscription")
_AUTH_KEYS: Final = ("source", "claims")
_MIRROR_KEYS: Final = ("db",)
_SUB_KEYS: Final = ("name", "table", "schema", "events", "filter", "columns", "primary_key",
                    "repair", "cursor_column")
#: Seconds between heartbeats, for Settings and for ``Realtime()`` alike (they used to differ:
#: 25 s here, 15 s in the client). 15 s finds a dead socket within about 25 s with the 10 s
#: reply timeout, well inside the server's 60 s idle timeout (realtime-protocol.md section 8.1).
DEFAULT_HEARTBEAT_INTERVAL: Final = 15.0

# (key, default, kind, minimum, minimum allowed?) for [settings]
_TUNING: Final[dict[str, tuple[float, type, float, bool]]] = {
    "heartbeat_interval": (DEFAULT_HEARTBEAT_INTERVAL, float, 0.0, False),
    "reconnect_max_delay": (30.0, float, 0.0, False),
    "queue_size": (1000, int, 1, True),
    "refresh_margin": (60.0, float, 0.0, True),
}
_SECRET_FIELDS: Final = frozenset(
    {"anon_key", "service_role_key", "access_token", "password", "jwt_secret", "db_url"}
)


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """One declared subscription (a ``[[subscription]]`` table of ``supasync.toml``).

    ``events`` is a subset of INSERT/UPDATE/DELETE (``"*"`` becomes all three); ``filter`` is
    :data:`~supasync.core.filters.ALL` when none was given; ``columns``/``primary_key`` are None
    when not given; ``repair`` is one of auto, exact, cursor, diff, off.
    """

    name: str
    schema: str
    table: str
    events: frozenset[str] = EVENTS
    filter: Filter = ALL
    columns: tuple[str, ...] | None = None
    primary_key: tuple[str, ...] | None = None
    repair: str = "auto"
    cursor_column: str | None = None


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Validated, immutable settings. Build with :func:`load_settings`.

    Secrets (keys, tokens, password, JWT secret, database URL) are plain attributes for the
    code that needs them, and are redacted in ``repr()``.
    """

    url: str
    realtime_url: str
    anon_key: str | None = None
    service_role_key: str | None = None
    access_token: str | None = None
    email: str | None = None
    password: str | None = None
    jwt_secret: str | None = None
    jwt_claims: Mapping[str, Any] = field(default_factory=lambda: {"role": "authenticated"})
    db_url: str | None = None
    preferred_token_source: TokenSource | None = None
    subscriptions: tuple[SubscriptionSpec, ...] = ()
    mirror_db: str | None = None
    #: the ``[relay]`` table as written (checked by :func:`supasync.relay.relay.relay_settings`)
    relay: Mapping[str, Any] = field(default_factory=dict)
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    reconnect_max_delay: float = 30.0
    queue_size: int = 1000
    refresh_margin: float = 60.0

    @property
    def rest_url(self) -> str:
        """PostgREST base URL: ``<url>/rest/v1``."""
        return self.url + "/rest/v1"

    @property
    def auth_url(self) -> str:
        """Auth base URL: ``<url>/auth/v1``."""
        return self.url + "/auth/v1"

    def subscription(self, name: str) -> SubscriptionSpec:
        """The declared subscription called *name*.

        Raises:
            ConfigError: no such subscription (the message lists the declared names).
        """
        for spec in self.subscriptions:
            if spec.name == name:
                return spec
        names = [s.name for s in self.subscriptions]
        raise ConfigError(
            f"no subscription named {name!r}{_did_you_mean(name, names)}",
            fix=f"use one of {names}" if names else "declare it under [[subscription]] in "
            "supasync.toml",
        )

    def token_source(self) -> TokenSource:
        """Which identity to use: the forced one, else the first available in the order
        access_token, password (email + password), jwt_secret, service_role, anon.

        Raises:
            ConfigError: nothing usable is set, or the forced/first source lacks what it needs
                (every source but service_role also needs ``SUPABASE_ANON_KEY`` as ``apikey``).
        """
        available: dict[str, bool] = {
            "access_token": bool(self.access_token),
            "password": bool(self.email and self.password),
            "jwt_secret": bool(self.jwt_secret),
            "service_role": bool(self.service_role_key),
            "anon": bool(self.anon_key),
        }
        needs: dict[str, str] = {
            "access_token": "SUPABASE_ACCESS_TOKEN",
            "password": "SUPABASE_EMAIL and SUPABASE_PASSWORD",
            "jwt_secret": "SUPABASE_JWT_SECRET",
            "service_role": "SUPABASE_SERVICE_ROLE_KEY",
            "anon": "SUPABASE_ANON_KEY",
        }
        source = self.preferred_token_source
        if source is not None:
            if not available[source]:
                raise ConfigError(
                    f"the token source is forced to {source!r} but {needs[source]} is not set",
                    key="SUPASYNC_TOKEN_SOURCE",
                    value=source,
                    fix=f"set {needs[source]}, or choose another source",
                )
        else:
            chosen = next((s for s in TOKEN_SOURCES if available[s]), None)
            if chosen is None:
                raise ConfigError(
                    "no credentials are set",
                    fix="set one of SUPABASE_ACCESS_TOKEN, SUPABASE_EMAIL + SUPABASE_PASSWORD, "
                    "SUPABASE_JWT_SECRET, SUPABASE_SERVICE_ROLE_KEY or SUPABASE_ANON_KEY "
                    "(`supasync dev --env-file .env` writes them for the local stack)",
                )
            source = cast(TokenSource, chosen)
        if source != "service_role" and not self.anon_key:
            raise ConfigError(
                f"the {source!r} identity needs the anon key as the socket/REST apikey",
                key="SUPABASE_ANON_KEY",
                fix="set SUPABASE_ANON_KEY (Project Settings > API)",
            )
        return source

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = (redact(value) if value is not None else "None") if (
                f.name in _SECRET_FIELDS) else repr(value)
            if f.name == "relay":  # server URLs may carry a user, password or token
                shown = re.sub(r"://[^@/\s'\"]+@", "://***@", shown)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__


# --------------------------------------------------------------------------- helpers


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str,
                    source: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"unknown key{_did_you_mean(key, allowed)}",
                key=f"{where}.{key}" if where else key,
                source=source,
                fix=f"use only {', '.join(allowed)}",
            )


def _str_list(value: Any, key: str, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError("must be a non-empty list of column names", key=key, value=value,
                          source=source, fix='write e.g. ["id", "status"]')
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            raise ConfigError(f"{item!r} is not a column name", key=key, value=value,
                              source=source, fix="use plain column names, without spaces")
        if item in out:
            raise ConfigError(f"{item!r} is listed twice", key=key, value=value, source=source,
                              fix="list each column once")
        out.append(item)
    return tuple(out)


def _plain_str(value: Any, key: str, source: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be a non-empty string ({what})", key=key, value=value,
                          source=source, fix=f"set {key} to {what}")
    return value.strip()


# --------------------------------------------------------------------------- toml


def _events(value: Any, key: str, source: str) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(e, str) for e in items):
        raise ConfigError("must be \"*\" or a non-empty list of INSERT, UPDATE, DELETE", key=key,
                          value=value, source=source, fix='write events = ["INSERT", "UPDATE"]')
    out: set[str] = set()
    for item in items:
        upper = item.strip().upper()
        if upper == "*":
            out |= EVENTS
        elif upper in EVENTS:
            out.add(upper)
        else:
            raise ConfigError(
                f"unknown event {item!r}{_did_you_mean(upper, sorted(EVENTS))}", key=key,
                value=value, source=source, fix='use "*" or INSERT, UPDATE, DELETE')
    return frozenset(out)


def _subscription(index: int, raw: Any, source: str) -> SubscriptionSpec:
    where = f"subscription[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", key=where, source=source,
                          fix="write each subscription as a [[subscription]] table")
    label = raw.get("name") or raw.get("table")
    if isinstance(label, str) and label.strip():
        where = f"subscription {label!r}"
    _reject_unknown(raw, _SUB_KEYS, where, source)
    if "table" not in raw:
        raise ConfigError("has no table", key=f"{where}.table", source=source,
                          fix='add table = "<table name>"')
    table = _plain_str(raw["table"], f"{where}.table", source, "a table name")
    if table == "*" or "%" in table:
        raise ConfigError("wildcards are not supported; one table per subscription",
                          key=f"{where}.table", value=table, source=source,
                          fix="declare one [[subscription]] per table")
    schema = _plain_str(raw.get("schema", "public"), f"{where}.schema", source, "a schema name")
    name = _plain_str(raw.get("name", table), f"{where}.name", source, "a unique name")
    if not _NAME_RE.match(name):
        raise ConfigError("may contain only letters, digits and _ . : -", key=f"{where}.name",
                          value=name, source=source, fix="rename the subscription")
    events = _events(raw.get("events", "*"), f"{where}.events", source)
    flt: Filter = ALL
    if "filter" in raw:
        text = raw["filter"]
        if not isinstance(text, str):
            raise ConfigError("must be a string in the Realtime filter grammar",
                              key=f"{where}.filter", value=text, source=source,
                              fix='write e.g. filter = "status=eq.open"')
        try:
            flt = parse_filter(text)
        except FilterError as exc:
            raise ConfigError(
                f"invalid filter: {exc.message}",
                key=f"{where}.filter",
                source=source,
                fix="see the filter grammar in supasync.core.filters (column=[not.]op.value, "
                "comma-separated)",
                detail="\n".join(str(exc).splitlines()[1:]) or None,
            ) from None
    columns = _str_list(raw["columns"], f"{where}.columns", source) if "columns" in raw else None
    primary_key = (_str_list(raw["primary_key"], f"{where}.primary_key", source)
                   if "primary_key" in raw else None)
    repair = raw.get("repair", "auto")
    if repair not in REPAIR_MODES:
        raise ConfigError(
            f"unknown repair mode{_did_you_mean(str(repair), REPAIR_MODES)}",
            key=f"{where}.repair", value=repair, source=source,
            fix=f"use one of {', '.join(REPAIR_MODES)}")
    cursor_column = None
    if "cursor_column" in raw:
        cursor_column = _plain_str(raw["cursor_column"], f"{where}.cursor_column", source,
                                   "a column every write bumps, e.g. updated_at")
    if repair == "cursor" and cursor_column is None:
        raise ConfigError('repair = "cursor" needs a cursor column', key=f"{where}.cursor_column",
                          source=source,
                          fix='add cursor_column = "updated_at" (a column every write bumps)')
    if columns is not None and primary_key is not None:
        missing = [c for c in primary_key if c not in columns]
        if missing:
            raise ConfigError(f"the primary key column(s) {missing} are not selected",
                              key=f"{where}.columns", value=list(columns), source=source,
                              fix="add the primary-key columns to columns")
    return SubscriptionSpec(name=name, schema=schema, table=table, events=events, filter=flt,
                            columns=columns, primary_key=primary_key, repair=repair,
                            cursor_column=cursor_column)


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    bad = exc.object[exc.start:exc.start + 1]
    return f"{path} is not UTF-8 text: byte 0x{bad.hex()} at offset {exc.start}"


def _read_env_file(path: Path) -> dict[str, str | None]:
    """The variables of a dotenv file (any readable file: /dev/null is an empty one)."""
    if path.is_dir():
        raise ConfigError(f"env file {path} is a directory", source=str(path),
                          fix="give the path of a file of KEY=value lines")
    try:
        with path.open(encoding="utf-8") as fh:
            return dict(dotenv_values(stream=fh))
    except UnicodeDecodeError as exc:
        raise ConfigError(_not_utf8(path, exc), source=str(path),
                          fix="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}", source=str(path),
                          fix="check the path and its permissions") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", source=str(path),
                          fix="correct the syntax at the line and column shown") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(_not_utf8(path, exc), source=str(path),
                          fix="save the file as UTF-8 (TOML files are UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", source=str(path),
                          fix="check the path and its permissions") from None


def _tuning(raw: Any, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", key="settings", source=source,
                          fix="write [settings] followed by key = value lines")
    _reject_unknown(raw, tuple(_TUNING), "settings", source)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        _default, kind, minimum, inclusive = _TUNING[key]
        ok_type = (isinstance(value, int) if kind is int else isinstance(value, int | float))
        if isinstance(value, bool) or not ok_type:
            raise ConfigError(f"must be {'an integer' if kind is int else 'a number'}",
                              key=f"settings.{key}", value=value, source=source,
                              fix=f"write e.g. {key} = {_default:g}")
        if value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise ConfigError(f"must be {bound}", key=f"settings.{key}", value=value,
                              source=source, fix=f"write e.g. {key} = {_default:g}")
        out[key] = kind(value)
    return out


# --------------------------------------------------------------------------- environment


def url_port_problem(url: str) -> str | None:
    """What is wrong with the port of *url* (not a number, not 1-65535), or None. Pure.

    ``urlsplit`` accepts ``http://host:99999`` and fails only later, deep inside a connect
    (``OverflowError: port must be 0-65535``) or in a reconnect loop; this says it up front.
    """
    netloc = urlsplit(url).netloc
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):  # IPv6 literal: the port follows "]"
        _, _, rest = hostport.partition("]")
        text = rest[1:] if rest.startswith(":") else None
    else:
        text = hostport.partition(":")[2] if ":" in hostport else None
    if text is None or text == "":
        return None
    if not text.isdigit():
        return f"has a port that is not a number ({text!r})"
    if not 1 <= int(text) <= 65535:
        return f"has port {int(text)}, out of range (1-65535)"
    return None


def _url(value: str | None, source: str) -> tuple[str, str]:
    key = "SUPABASE_URL"
    if not value:
        raise ConfigError("is not set", key=key,
                          fix="set SUPABASE_URL to the project URL, e.g. "
                          "https://<ref>.supabase.co (or run `supasync dev --env-file .env`)")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("must be an http:// or https:// URL with a host", key=key, value=value,
                          source=source, fix="set it to e.g. https://<ref>.supabase.co")
    if parts.query or parts.fragment:
        raise ConfigError("must not have a query or fragment", key=key, value=value,
                          source=source, fix="remove everything from '?' or '#'")
    port_problem = url_port_problem(value.strip())
    if port_problem is not None:
        raise ConfigError(port_problem, key=key, value=value, source=source,
                          fix="use a port from 1 to 65535 (the one `supasync dev` printed), "
                          "or leave it out for the scheme's default")
    path = parts.path.rstrip("/")
    for suffix in ("/rest/v1", "/realtime/v1", "/auth/v1"):
        if path.endswith(suffix):
            raise ConfigError(f"is a service URL ({suffix}), not the project URL", key=key,
                              value=value, source=source,
                              fix=f"remove {suffix}: supasync derives the service URLs")
    base = f"{parts.scheme}://{parts.netloc}{path}"
    ws = "wss" if parts.scheme == "https" else "ws"
    return base, f"{ws}://{parts.netloc}{path}/realtime/v1"


def _jwt_role(token: str) -> str | None:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


def _key(value: str | None, key: str, source: str, expected_role: str) -> str | None:
    if not value:
        return None
    value = value.strip()
    if any(ch.isspace() or ch in "\"'" for ch in value):
        raise ConfigError("contains spaces or quotes", key=key, value=value, source=source,
                          fix="paste the key alone, without quotes or line breaks")
    wrong = "sb_secret_" if expected_role == "anon" else "sb_publishable_"
    role = _jwt_role(value)
    if value.startswith(wrong) or (role is not None and role != expected_role):
        other = "service-role/secret" if expected_role == "anon" else "anon/publishable"
        raise ConfigError(f"holds the {other} key, not the {expected_role} key", key=key,
                          value=value, source=source,
                          fix="swap SUPABASE_ANON_KEY and SUPABASE_SERVICE_ROLE_KEY")
    return value


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = DEFAULT_ENV_FILE,
    toml_path: Path | None = DEFAULT_TOML,
) -> Settings:
    """Read, merge and validate the settings.

    Args:
        env: the variables to use instead of ``os.environ`` (tests pass a dict); ``env_file``
            is still read unless it is None.
        env_file: a dotenv file whose values fill in unset variables; None to skip. The default
            ``.env`` may be absent; any other path must exist.
        toml_path: the ``supasync.toml`` to read; None to skip. Same rule for absence.

    Returns:
        A frozen :class:`Settings`.

    Raises:
        ConfigError: naming the key, its value (redacted for secrets), its source and the fix.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    if env_file is not None:
        env_file = Path(env_file)
        if env_file.exists():  # a file, or a device such as /dev/null (an empty one)
            for k, v in _read_env_file(env_file).items():
                if v is not None and v != "":
                    values[k], sources[k] = v, str(env_file)
        elif env_file != DEFAULT_ENV_FILE:
            raise ConfigError(f"env file {env_file} does not exist", source=str(env_file),
                              fix="check the path, or create it with `supasync dev --env-file`")
    for k, v in environ.items():
        if v:  # the real environment wins over .env; empty means unset
            values[k], sources[k] = v, "environment"

    def get(key: str) -> str | None:
        return values.get(key) or None

    def src(key: str) -> str:
        return sources.get(key, "environment")

    doc: dict[str, Any] = {}
    toml_source = ""
    if toml_path is not None:
        toml_path = Path(toml_path)
        toml_source = str(toml_path)
        if toml_path.is_file():
            doc = _read_toml(toml_path)
        elif toml_path != DEFAULT_TOML:
            raise ConfigError(f"config file {toml_path} does not exist", source=toml_source,
                              fix="check the path, or drop the option to run without it")
    _reject_unknown(doc, _TOP_KEYS, "", toml_source)

    url, realtime_url = _url(get("SUPABASE_URL"), src("SUPABASE_URL"))
    anon_key = _key(get("SUPABASE_ANON_KEY"), "SUPABASE_ANON_KEY", src("SUPABASE_ANON_KEY"),
                    "anon")
    service_key = _key(get("SUPABASE_SERVICE_ROLE_KEY"), "SUPABASE_SERVICE_ROLE_KEY",
                       src("SUPABASE_SERVICE_ROLE_KEY"), "service_role")
    access_token = get("SUPABASE_ACCESS_TOKEN")
    if access_token is not None:
        access_token = access_token.strip()
    email, password = get("SUPABASE_EMAIL"), get("SUPABASE_PASSWORD")
    if bool(email) != bool(password):
        missing = "SUPABASE_PASSWORD" if email else "SUPABASE_EMAIL"
        raise ConfigError("is not set, but its partner is", key=missing,
                          fix="set both SUPABASE_EMAIL and SUPABASE_PASSWORD, or neither")
    if email is not None and "@" not in email:
        raise ConfigError("is not an email address", key="SUPABASE_EMAIL", value=email,
                          source=src("SUPABASE_EMAIL"), fix="set the user's email address")
    jwt_secret = get("SUPABASE_JWT_SECRET")
    db_url = get("SUPABASE_DB_URL")
    if db_url is not None and not re.match(r"^postgres(ql)?://", db_url.strip()):
        raise ConfigError("must start with postgresql:// or postgres://", key="SUPABASE_DB_URL",
                          value=db_url, source=src("SUPABASE_DB_URL"),
                          fix="copy the connection string from Project Settings > Database")

    auth = doc.get("auth", {})
    if not isinstance(auth, dict):
        raise ConfigError("must be a table", key="auth", source=toml_source,
                          fix="write [auth] followed by key = value lines")
    _reject_unknown(auth, _AUTH_KEYS, "auth", toml_source)
    claims_raw = auth.get("claims", {})
    if not isinstance(claims_raw, dict):
        raise ConfigError("must be a table of JWT claims", key="auth.claims", value=claims_raw,
                          source=toml_source,
                          fix='write claims = { sub = "<user id>", role = "authenticated" }')
    claims: dict[str, Any] = {"role": "authenticated", **claims_raw}
    if not isinstance(claims["role"], str) or not claims["role"]:
        raise ConfigError("must be a role name", key="auth.claims.role", value=claims["role"],
                          source=toml_source, fix='write role = "authenticated"')

    forced_key, forced = "SUPASYNC_TOKEN_SOURCE", get("SUPASYNC_TOKEN_SOURCE")
    forced_source = src("SUPASYNC_TOKEN_SOURCE")
    if forced is None and "source" in auth:
        forced_key, forced, forced_source = "auth.source", auth["source"], toml_source
    if forced is not None:
        forced = forced.strip().lower() if isinstance(forced, str) else forced
        if forced not in TOKEN_SOURCES:
            raise ConfigError(
                f"unknown token source{_did_you_mean(str(forced), TOKEN_SOURCES)}",
                key=forced_key, value=forced, source=forced_source,
                fix=f"use one of {', '.join(TOKEN_SOURCES)}")

    tuning = _tuning(doc.get("settings", {}), toml_source)

    mirror = doc.get("mirror", {})
    if not isinstance(mirror, dict):
        raise ConfigError("must be a table", key="mirror", source=toml_source,
                          fix='write [mirror] then db = "mirror.sqlite"')
    _reject_unknown(mirror, _MIRROR_KEYS, "mirror", toml_source)
    mirror_db = None
    if "db" in mirror:
        mirror_db = _plain_str(mirror["db"], "mirror.db", toml_source, "a SQLite file path")

    relay = doc.get("relay", {})
    if not isinstance(relay, dict):
        raise ConfigError("must be a table", key="relay", source=toml_source,
                          fix='write [relay] then to = "nats://127.0.0.1:4222"')

    raw_subs = doc.get("subscription", [])
    if not isinstance(raw_subs, list):
        raise ConfigError("must be an array of tables", key="subscription", source=toml_source,
                          fix="write each one as [[subscription]] (double brackets)")
    specs = tuple(_subscription(i, raw, toml_source) for i, raw in enumerate(raw_subs))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError("is used by more than one subscription",
                              key=f"subscription {spec.name!r}.name", value=spec.name,
                              source=toml_source,
                              fix="give each [[subscription]] a unique name = \"...\"")
        seen.add(spec.name)

    return Settings(
        url=url,
        realtime_url=realtime_url,
        anon_key=anon_key,
        service_role_key=service_key,
        access_token=access_token or None,
        email=email,
        password=password,
        jwt_secret=jwt_secret,
        jwt_claims=claims,
        db_url=db_url.strip() if db_url else None,
        preferred_token_source=cast(TokenSource | None, forced),
        subscriptions=specs,
        mirror_db=mirror_db,
        relay=dict(relay),
        **tuning,
    )
