"""Unit tests for supasync.client.config: env, .env, supasync.toml, validation and secret
redaction."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supasync.client.config import EVENTS, Settings, SubscriptionSpec, load_settings
from supasync.core.errors import ConfigError
from supasync.core.filters import ALL, col

SECRETS = {
    "SUPABASE_ANON_KEY": "anon-SECRET-aaaaaaaaaaaa",
    "SUPABASE_SERVICE_ROLE_KEY": "service-SECRET-bbbbbbbbbbbb",
    "SUPABASE_ACCESS_TOKEN": "access-SECRET-cccccccccccc",
    "SUPABASE_PASSWORD": "password-SECRET-dddddddddd",
    "SUPABASE_JWT_SECRET": "jwt-SECRET-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
    "SUPABASE_DB_URL": "postgresql://postgres:dbpass-SECRET-ffff@db.example:5432/postgres",
}
BASE = {"SUPABASE_URL": "https://abc.supabase.co"}


def load(env: dict[str, str], tmp_path: Path, toml: str | None = None,
         dotenv: str | None = None) -> Settings:
    toml_path = None
    env_file = None
    if toml is not None:
        toml_path = tmp_path / "supasync.toml"
        toml_path.write_text(toml)
    if dotenv is not None:
        env_file = tmp_path / ".env"
        env_file.write_text(dotenv)
    return load_settings(env, env_file=env_file, toml_path=toml_path)


def config_error(env: dict[str, str], tmp_path: Path, toml: str | None = None,
                 dotenv: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(env, tmp_path, toml, dotenv)
    return info.value


def assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text
    assert "SECRET" not in text
    assert "dbpass" not in text


# --------------------------------------------------------------------------- environment


def test_minimal(tmp_path: Path) -> None:
    s = load({**BASE, "SUPABASE_ANON_KEY": "k"}, tmp_path)
    assert s.url == "https://abc.supabase.co"
    assert s.realtime_url == "wss://abc.supabase.co/realtime/v1"
    assert s.rest_url == "https://abc.supabase.co/rest/v1"
    assert s.auth_url == "https://abc.supabase.co/auth/v1"
    assert s.subscriptions == () and s.jwt_claims == {"role": "authenticated"}
    assert (s.heartbeat_interval, s.reconnect_max_delay, s.queue_size, s.refresh_margin) == (
        15.0, 30.0, 1000, 60.0)
    assert s.token_source() == "anon"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "base", "realtime"),
    [
        ("http://127.0.0.1:54321/", "http://127.0.0.1:54321", "ws://127.0.0.1:54321/realtime/v1"),
        ("https://x.co//", "https://x.co", "wss://x.co/realtime/v1"),
        ("https://proxy.example/supabase/", "https://proxy.example/supabase",
         "wss://proxy.example/supabase/realtime/v1"),
        ("  https://x.co  ", "https://x.co", "wss://x.co/realtime/v1"),
    ],
)
def test_url_normalised(url: str, base: str, realtime: str, tmp_path: Path) -> None:
    s = load({"SUPABASE_URL": url}, tmp_path)
    assert (s.url, s.realtime_url) == (base, realtime)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "is not set"),
        ("abc.supabase.co", "http:// or https://"),
        ("ftp://abc", "http:// or https://"),
        ("https://", "http:// or https://"),
        ("https://x.co/?a=1", "query"),
        ("https://x.co/rest/v1", "service URL"),
        ("https://x.co/realtime/v1/", "service URL"),
    ],
)
def test_bad_url(url: str, fragment: str, tmp_path: Path) -> None:
    err = config_error({"SUPABASE_URL": url} if url else {}, tmp_path)
    assert err.key == "SUPABASE_URL" and fragment in str(err) and err.fix


def test_dotenv_fills_in_but_never_overrides(tmp_path: Path) -> None:
    dotenv = (
        "SUPABASE_URL=http://from-dotenv:1\n"
        "SUPABASE_ANON_KEY=dotenv-anon\n"
        "SUPABASE_SERVICE_ROLE_KEY=\n"
    )
    s = load({"SUPABASE_URL": "http://from-env:2"}, tmp_path, dotenv=dotenv)
    assert s.url == "http://from-env:2"
    assert s.anon_key == "dotenv-anon"
    assert s.service_role_key is None  # empty means unset
    # An empty real variable does not hide the .env value either.
    s = load({"SUPABASE_URL": "", "SUPABASE_ANON_KEY": ""}, tmp_path, dotenv=dotenv)
    assert s.url == "http://from-dotenv:1" and s.anon_key == "dotenv-anon"


def test_error_names_dotenv_as_source(tmp_path: Path) -> None:
    err = config_error({}, tmp_path, dotenv="SUPABASE_URL=nope\n")
    assert str(tmp_path / ".env") in str(err)


def test_missing_explicit_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(BASE, env_file=tmp_path / "nope.env", toml_path=None)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(BASE, env_file=None, toml_path=tmp_path / "nope.toml")


def test_default_files_may_be_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(BASE)
    assert s.url == BASE["SUPABASE_URL"]
    (tmp_path / ".env").write_text("SUPABASE_ANON_KEY=from-default-dotenv\n")
    (tmp_path / "supasync.toml").write_text('[[subscription]]\ntable = "t"\n')
    s = load_settings(BASE)
    assert s.anon_key == "from-default-dotenv" and s.subscriptions[0].table == "t"


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "http://from-os:3")
    assert load_settings(env_file=None, toml_path=None).url == "http://from-os:3"


def test_email_password_both_or_neither(tmp_path: Path) -> None:
    err = config_error({**BASE, "SUPABASE_EMAIL": "a@b.c"}, tmp_path)
    assert err.key == "SUPABASE_PASSWORD"
    err = config_error({**BASE, "SUPABASE_PASSWORD": SECRETS["SUPABASE_PASSWORD"]}, tmp_path)
    assert err.key == "SUPABASE_EMAIL"
    assert_no_secret(str(err))
    err = config_error({**BASE, "SUPABASE_EMAIL": "nobody", "SUPABASE_PASSWORD": "x"}, tmp_path)
    assert err.key == "SUPABASE_EMAIL"


def _jwt(role: str) -> str:
    return jwt.encode({"role": role, "exp": 2**31}, "k" * 32, algorithm="HS256")


def test_swapped_keys_are_caught(tmp_path: Path) -> None:
    err = config_error({**BASE, "SUPABASE_ANON_KEY": _jwt("service_role")}, tmp_path)
    assert err.key == "SUPABASE_ANON_KEY" and "swap" in str(err)
    assert _jwt("service_role") not in str(err)
    err = config_error({**BASE, "SUPABASE_SERVICE_ROLE_KEY": _jwt("anon")}, tmp_path)
    assert err.key == "SUPABASE_SERVICE_ROLE_KEY"
    err = config_error({**BASE, "SUPABASE_ANON_KEY": "sb_secret_abc"}, tmp_path)
    assert "sb_secret_abc" not in str(err)
    s = load({**BASE, "SUPABASE_ANON_KEY": _jwt("anon"),
              "SUPABASE_SERVICE_ROLE_KEY": _jwt("service_role")}, tmp_path)
    assert s.anon_key == _jwt("anon")
    s = load({**BASE, "SUPABASE_ANON_KEY": "sb_publishable_x"}, tmp_path)
    assert s.anon_key == "sb_publishable_x"


def test_key_with_quotes_or_spaces(tmp_path: Path) -> None:
    err = config_error({**BASE, "SUPABASE_ANON_KEY": '"abc def"'}, tmp_path)
    assert "quotes" in str(err) and "abc def" not in str(err)
    assert load({**BASE, "SUPABASE_ANON_KEY": " abc \n"}, tmp_path).anon_key == "abc"


def test_db_url(tmp_path: Path) -> None:
    s = load({**BASE, "SUPABASE_DB_URL": SECRETS["SUPABASE_DB_URL"]}, tmp_path)
    assert s.db_url == SECRETS["SUPABASE_DB_URL"]
    err = config_error({**BASE, "SUPABASE_DB_URL": "mysql://u:dbpass-SECRET@h/d"}, tmp_path)
    assert err.key == "SUPABASE_DB_URL"
    assert_no_secret(str(err))


# --------------------------------------------------------------------------- token source


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["SUPABASE_ACCESS_TOKEN", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY",
          "SUPABASE_JWT_SECRET", "SUPABASE_PASSWORD"], "access_token"),
        (["SUPABASE_PASSWORD", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY",
          "SUPABASE_JWT_SECRET"], "password"),
        (["SUPABASE_JWT_SECRET", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY"], "jwt_secret"),
        (["SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY"], "service_role"),
        (["SUPABASE_SERVICE_ROLE_KEY"], "service_role"),
        (["SUPABASE_ANON_KEY"], "anon"),
    ],
)
def test_token_source_order(keys: list[str], expected: str, tmp_path: Path) -> None:
    env = {**BASE, **{k: SECRETS[k] for k in keys}}
    if "SUPABASE_PASSWORD" in keys:
        env["SUPABASE_EMAIL"] = "me@example.com"
    assert load(env, tmp_path).token_source() == expected


def test_token_source_none(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(BASE, tmp_path).token_source()
    text = str(info.value)
    for name in ("SUPABASE_ACCESS_TOKEN", "SUPABASE_EMAIL", "SUPABASE_JWT_SECRET",
                 "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY"):
        assert name in text


def test_token_source_needs_anon_key(tmp_path: Path) -> None:
    s = load({**BASE, "SUPABASE_ACCESS_TOKEN": SECRETS["SUPABASE_ACCESS_TOKEN"]}, tmp_path)
    with pytest.raises(ConfigError) as info:
        s.token_source()
    assert info.value.key == "SUPABASE_ANON_KEY"
    assert_no_secret(str(info.value))


def test_token_source_forced(tmp_path: Path) -> None:
    env = {**BASE, "SUPABASE_ANON_KEY": "a", "SUPABASE_SERVICE_ROLE_KEY": "s",
           "SUPASYNC_TOKEN_SOURCE": "Anon"}
    assert load(env, tmp_path).token_source() == "anon"
    toml = '[auth]\nsource = "anon"\n'
    env2 = {**BASE, "SUPABASE_ANON_KEY": "a", "SUPABASE_SERVICE_ROLE_KEY": "s"}
    assert load(env2, tmp_path, toml).token_source() == "anon"
    # The environment wins over the file.
    env3 = {**env2, "SUPASYNC_TOKEN_SOURCE": "service_role"}
    assert load(env3, tmp_path, toml).token_source() == "service_role"
    s = load({**env2, "SUPASYNC_TOKEN_SOURCE": "jwt_secret"}, tmp_path)
    with pytest.raises(ConfigError, match="SUPABASE_JWT_SECRET"):
        s.token_source()
    err = config_error({**env2, "SUPASYNC_TOKEN_SOURCE": "servce_role"}, tmp_path)
    assert "did you mean 'service_role'" in str(err) and "'servce_role'" in str(err)
    err = config_error(env2, tmp_path, '[auth]\nsource = "token"\n')
    assert err.key == "auth.source"


def test_claims(tmp_path: Path) -> None:
    s = load(BASE, tmp_path, '[auth]\nclaims = { sub = "u1", role = "editor", n = 3 }\n')
    assert s.jwt_claims == {"sub": "u1", "role": "editor", "n": 3}
    s = load(BASE, tmp_path, '[auth]\nclaims = { sub = "u1" }\n')
    assert s.jwt_claims["role"] == "authenticated"
    assert config_error(BASE, tmp_path, '[auth]\nclaims = "x"\n').key == "auth.claims"
    assert config_error(BASE, tmp_path, "[auth]\nclaims = { role = 1 }\n").key == (
        "auth.claims.role")


# --------------------------------------------------------------------------- toml

FULL = """
[settings]
heartbeat_interval = 10
reconnect_max_delay = 5.5
queue_size = 50
refresh_margin = 0

[mirror]
db = "mirror.sqlite"

[[subscription]]
name = "open-todos"
table = "todos"
schema = "app"
events = ["insert", "UPDATE"]
filter = "status=eq.open,id=in.(1,2)"
columns = ["id", "status"]
primary_key = "id"
repair = "cursor"
cursor_column = "updated_at"

[[subscription]]
table = "todos"
events = "*"
"""


def test_full_toml(tmp_path: Path) -> None:
    s = load(BASE, tmp_path, FULL)
    assert (s.heartbeat_interval, s.reconnect_max_delay, s.queue_size, s.refresh_margin) == (
        10.0, 5.5, 50, 0.0)
    assert isinstance(s.queue_size, int) and isinstance(s.heartbeat_interval, float)
    assert s.mirror_db == "mirror.sqlite"
    first, second = s.subscriptions
    assert first == SubscriptionSpec(
        name="open-todos", schema="app", table="todos", events=frozenset({"INSERT", "UPDATE"}),
        filter=col("status").eq("open") & col("id").in_([1, 2]), columns=("id", "status"),
        primary_key=("id",), repair="cursor", cursor_column="updated_at")
    assert second == SubscriptionSpec(name="todos", schema="public", table="todos")
    assert second.events == EVENTS and second.filter is ALL
    assert s.subscription("open-todos") is first
    with pytest.raises(ConfigError, match="did you mean 'open-todos'"):
        s.subscription("open-todo")
    # The CLI relies on Settings being a dataclass.
    assert dataclasses.replace(s, subscriptions=()).subscriptions == ()


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ("[setings]\n", "setings", "did you mean 'settings'"),
        ("[[subscriptions]]\ntable = 't'\n", "subscriptions", "did you mean 'subscription'"),
        ("[[subscription]]\ntable = 't'\nfiltr = 'a=eq.1'\n", "subscription 't'.filtr",
         "did you mean 'filter'"),
        ("[[subscription]]\nname = 'x'\n", "subscription 'x'.table", "has no table"),
        ("[[subscription]]\ntable = ''\n", "subscription[0].table", "non-empty"),
        ("[[subscription]]\ntable = '*'\n", "subscription '*'.table", "wildcards"),
        ("[[subscription]]\ntable = 't'\nname = 'a b'\n", "subscription 'a b'.name", "letters"),
        ("[[subscription]]\ntable = 't'\nevents = ['INSERT', 'UPSERT']\n",
         "subscription 't'.events", "unknown event 'UPSERT'"),
        ("[[subscription]]\ntable = 't'\nevents = []\n", "subscription 't'.events", "non-empty"),
        ("[[subscription]]\ntable = 't'\nfilter = 5\n", "subscription 't'.filter", "string"),
        ("[[subscription]]\ntable = 't'\ncolumns = []\n", "subscription 't'.columns",
         "non-empty"),
        ("[[subscription]]\ntable = 't'\ncolumns = ['a', 'a']\n", "subscription 't'.columns",
         "twice"),
        ("[[subscription]]\ntable = 't'\ncolumns = ['a']\nprimary_key = ['id']\n",
         "subscription 't'.columns", "not selected"),
        ("[[subscription]]\ntable = 't'\nrepair = 'exactly'\n", "subscription 't'.repair",
         "did you mean 'exact'"),
        ("[[subscription]]\ntable = 't'\nrepair = 'cursor'\n", "subscription 't'.cursor_column",
         "needs a cursor column"),
        ("[[subscription]]\ntable = 't'\n[[subscription]]\ntable = 't'\n",
         "subscription 't'.name", "more than one"),
        ("subscription = 3\n", "subscription", "array of tables"),
        ("[settings]\nqueue_size = 0\n", "settings.queue_size", ">= 1"),
        ("[settings]\nqueue_size = 1.5\n", "settings.queue_size", "integer"),
        ("[settings]\nheartbeat_interval = 0\n", "settings.heartbeat_interval", "> 0"),
        ("[settings]\nheartbeat_interval = true\n", "settings.heartbeat_interval", "number"),
        ("[settings]\nheartbeat = 1\n", "settings.heartbeat", "did you mean"),
        ("[mirror]\ndatabase = 'x'\n", "mirror.database", "unknown key"),
        ("[mirror]\ndb = ''\n", "mirror.db", "non-empty"),
        ("mirror = 1\n", "mirror", "must be a table"),
        ("[auth]\nsecret = 'abc-SECRET'\n", "auth.secret", "unknown key"),
    ],
)
def test_toml_errors(toml: str, key: str, fragment: str, tmp_path: Path) -> None:
    err = config_error(BASE, tmp_path, toml)
    assert err.key == key, str(err)
    assert fragment in str(err)
    assert str(tmp_path / "supasync.toml") in str(err)
    assert err.fix
    assert_no_secret(str(err))


def test_filter_error_points_at_character(tmp_path: Path) -> None:
    toml = '[[subscription]]\nname = "todos"\ntable = "t"\nfilter = "status=eqq.open"\n'
    err = config_error(BASE, tmp_path, toml)
    lines = str(err).splitlines()
    assert "subscription 'todos'.filter" in lines[0]
    assert str(tmp_path / "supasync.toml") in lines[0]
    assert "unknown operator 'eqq'" in lines[0]
    assert lines[-2:] == ["  status=eqq.open", "         ^"]


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    err = config_error(BASE, tmp_path, "[[subscription]\n")
    assert "not valid TOML" in str(err) and "line 1" in str(err)


def test_toml_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Issue #17: a supasync.toml that is not UTF-8 gave a UnicodeDecodeError traceback."""
    path = tmp_path / "supasync.toml"
    path.write_bytes(b'[settings]\nx = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text: byte 0xff at offset 16") as err:
        load_settings(env=BASE, env_file=None, toml_path=path)
    assert "save the file as UTF-8" in str(err.value)


def test_env_file_dev_null_is_an_empty_file(tmp_path: Path) -> None:
    """Issue #17: ``--env-file /dev/null`` was reported as "does not exist"."""
    s = load_settings(env=BASE, env_file=Path("/dev/null"), toml_path=None)
    assert s.url == BASE["SUPABASE_URL"]


def test_env_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_bytes(b"SUPABASE_ANON_KEY=\xff\n")
    with pytest.raises(ConfigError, match=r"bad\.env is not UTF-8 text"):
        load_settings(env=BASE, env_file=bad, toml_path=None)
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(env=BASE, env_file=tmp_path, toml_path=None)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env=BASE, env_file=tmp_path / "missing.env",
                      toml_path=None)


# --------------------------------------------------------------------------- secrets


def test_repr_redacts_every_secret(tmp_path: Path) -> None:
    env = {**BASE, **SECRETS, "SUPABASE_EMAIL": "me@example.com"}
    s = load(env, tmp_path)
    for value in SECRETS.values():
        assert value in (s.anon_key, s.service_role_key, s.access_token, s.password,
                         s.jwt_secret, s.db_url)
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert_no_secret(text)
        assert "<redacted>" in text
    assert "me@example.com" in repr(s)


@pytest.mark.parametrize("key", sorted(SECRETS))
def test_no_secret_in_any_error(key: str, tmp_path: Path) -> None:
    # Malformed variants of every secret: each error must name the key but not the value.
    bad = {
        "SUPABASE_ANON_KEY": "anon SECRET with space",
        "SUPABASE_SERVICE_ROLE_KEY": "'service-SECRET'",
        "SUPABASE_ACCESS_TOKEN": SECRETS["SUPABASE_ACCESS_TOKEN"],
        "SUPABASE_PASSWORD": SECRETS["SUPABASE_PASSWORD"],
        "SUPABASE_JWT_SECRET": SECRETS["SUPABASE_JWT_SECRET"],
        "SUPABASE_DB_URL": "sqlite://dbpass-SECRET",
    }[key]
    env = {**BASE, key: bad, "SUPASYNC_TOKEN_SOURCE": "password"}
    try:
        s = load(env, tmp_path)
        assert_no_secret(repr(s))
        s.token_source()
    except ConfigError as err:
        assert_no_secret(str(err))
        assert_no_secret(repr(err))
        assert bad not in str(err)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and "\x00" not in s))
def test_secret_values_never_leak(text: str) -> None:
    value = "SECRET-" + text  # a marker, so the value cannot occur by chance in other text
    env: dict[str, Any] = {"SUPABASE_URL": "https://x.co", "SUPABASE_PASSWORD": value,
                           "SUPABASE_JWT_SECRET": value, "SUPABASE_ACCESS_TOKEN": value,
                           "SUPABASE_DB_URL": value}
    try:
        s = load_settings(env, env_file=None, toml_path=None)
    except ConfigError as err:
        assert value not in str(err) and value not in repr(err)
    else:
        assert value not in repr(s)


def test_settings_and_the_client_share_the_heartbeat_default() -> None:
    """Settings said 25 s while Realtime() and ConnectionOptions said 15 s."""
    import dataclasses
    import inspect

    from supasync.client.config import DEFAULT_HEARTBEAT_INTERVAL, Settings
    from supasync.client.connection import ConnectionOptions
    from supasync.client.realtime import Realtime

    client_default = inspect.signature(Realtime).parameters["heartbeat_interval"].default
    settings_default = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert settings_default["heartbeat_interval"] == client_default
    assert ConnectionOptions().heartbeat_interval == client_default == DEFAULT_HEARTBEAT_INTERVAL
