"""The public client API without a server: declaration, naming, validation, exports."""

from __future__ import annotations

from typing import Any

import pytest

import supasync
from supasync import ConfigError, FilterError, Realtime, Subscription
from supasync.core.changes import Change


def make() -> Realtime:
    return Realtime("http://127.0.0.1:9", "anon-key-for-tests")


def test_urls_are_derived_from_the_project_url() -> None:
    rt = Realtime("https://abc.supabase.co/", "k")
    assert rt.realtime_url == "https://abc.supabase.co/realtime/v1"
    assert rt.rest_url == "https://abc.supabase.co/rest/v1"


async def test_subscribe_declares_without_connecting_and_names_are_unique() -> None:
    rt = make()
    a = rt.subscribe("todos")
    b = rt.subscribe("todos", events="INSERT")
    c = rt.subscribe("todos", name="mine")
    assert [s.name for s in rt.subscriptions] == ["public.todos", "public.todos#2", "mine"]
    assert isinstance(a, Subscription) and b.events == {"INSERT"} and c.name == "mine"
    assert rt.connection.clients == []
    with pytest.raises(ConfigError, match="already exists"):
        rt.subscribe("other", name="mine")
    await rt.aclose()
    assert a.closed and b.closed


async def test_decorator_form() -> None:
    rt = make()

    @rt.on("orders", events={"INSERT", "UPDATE"}, filter="total=gt.100")
    async def on_order(change: Change) -> None: ...

    (sub,) = rt.subscriptions
    assert sub.handlers == (on_order,)
    assert sub.filter.to_realtime() == "total=gt.100"
    await rt.aclose()


async def test_bad_filter_raises_at_declaration() -> None:
    rt = make()
    with pytest.raises(FilterError):
        rt.subscribe("todos", filter="status=eqq.open")
    assert rt.subscriptions == ()
    await rt.aclose()


def test_bad_construction() -> None:
    with pytest.raises(ConfigError):
        Realtime("", "k")
    with pytest.raises(ConfigError):
        Realtime("http://x", "")
    with pytest.raises(ConfigError):
        Realtime("http://x", "k", token=42)  # type: ignore[arg-type]


async def test_closed_client_refuses_new_work() -> None:
    rt = make()
    await rt.aclose()
    with pytest.raises(ConfigError, match="closed"):
        rt.subscribe("todos")
    with pytest.raises(ConfigError, match="closed"):
        await rt.start()


def test_public_api_exports_exist() -> None:
    for name in supasync.__all__:
        assert hasattr(supasync, name), name
    for name in ("Realtime", "Subscription", "Change", "col", "parse_filter", "ConnectionState"):
        assert name in supasync.__all__


async def test_from_settings_declares_the_configured_subscriptions(tmp_path: Any) -> None:
    from supasync.client.config import load_settings

    toml = tmp_path / "supasync.toml"
    toml.write_text(
        """
[settings]
heartbeat_interval = 20
reconnect_max_delay = 12

[[subscription]]
name = "open-todos"
table = "todos"
events = ["INSERT", "UPDATE"]
filter = "status=eq.open"

[[subscription]]
table = "orders"
schema = "shop"
primary_key = ["shop_id", "id"]
"""
    )
    settings = load_settings(
        {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_ANON_KEY": "anon-key-for-tests"},
        env_file=None,
        toml_path=toml,
    )
    rt = Realtime.from_settings(settings)
    first, second = rt.subscriptions
    assert first.name == "open-todos" and first.events == {"INSERT", "UPDATE"}
    assert first.filter.to_realtime() == "status=eq.open"
    assert (second.schema, second.table, second.primary_key) == (
        "shop",
        "orders",
        ("shop_id", "id"),
    )
    assert rt.connection.options.heartbeat_interval == 20
    assert rt.connection.options.backoff.cap == 12
    assert rt.rest_url == "http://127.0.0.1:9/rest/v1"
    await rt.aclose()


def test_sync_facade_from_settings_keeps_client_options() -> None:
    """Regression: SyncRealtime.from_settings/from_env dropped options such as cache= and
    repair= on the way to the async client."""
    from supasync.client.config import load_settings
    from supasync.client.sync import SyncRealtime

    settings = load_settings(
        {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_ANON_KEY": "anon-key"},
        env_file=None, toml_path=None,
    )
    facade = SyncRealtime.from_settings(settings, repair="off", cache="memory:")
    client = facade._factory()
    assert client.repair == "off"
    assert client._cache_spec == "memory:"
