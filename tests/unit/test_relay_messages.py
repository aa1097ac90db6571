"""supasync.relay.messages and status (sans-I/O): subjects, the deterministic message id, the
body and headers; the status line, JSON record and metrics; [relay] settings; the relay's
options refused with a clear error; server URLs never shown with their credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supasync.client.config import Settings, load_settings
from supasync.core.errors import ConfigError
from supasync.relay.jetstream import _covers, safe_url
from supasync.relay.messages import (
    build_message,
    check_subject_token,
    message_id,
    normalise_commit_time,
    subject_matches,
)
from supasync.relay.relay import RelayOptions, check_options, relay_settings
from supasync.relay.status import (
    RelayFigures,
    TableRelay,
    relay_metrics,
    relay_record,
    relay_status_line,
)


def test_commit_times_are_cut_to_milliseconds_in_utc() -> None:
    assert normalise_commit_time("2026-08-21T10:15:30.123Z") == "2026-08-21T10:15:30.123Z"
    assert normalise_commit_time("2026-08-21T10:15:30.123987+00:00") == "2026-08-21T10:15:30.123Z"
    assert normalise_commit_time("2026-08-21T12:15:30.5+02:00") == "2026-08-21T10:15:30.500Z"
    assert normalise_commit_time(None) is None
    assert normalise_commit_time("not a time") == "not a time"


def test_message_id_is_the_change_not_the_relay() -> None:
    a = message_id("public", "todos", [1], "I", "2026-08-21T10:15:30.123Z", {"id": 1, "t": "a"})
    # The same change read later (another row image), or journaled as an update by a relay
    # whose repair wrote the row first: the same id.
    assert a == message_id("public", "todos", [1], "U", "2026-08-21T10:15:30.123Z",
                           {"id": 1, "t": "b"})
    # Another key, another time, a delete, a second change in the same millisecond: other ids.
    others = {
        message_id("public", "todos", [2], "I", "2026-08-21T10:15:30.123Z", None),
        message_id("public", "todos", [1], "I", "2026-08-21T10:15:30.124Z", None),
        message_id("public", "todos", [1], "D", "2026-08-21T10:15:30.123Z", None),
        message_id("public", "todos", [1], "I", "2026-08-21T10:15:30.123Z", None, 1),
        message_id("sales", "todos", [1], "I", "2026-08-21T10:15:30.123Z", None),
    }
    assert a not in others and len(others) == 5
    # No commit time (a diff repair, a snapshot row): the row's content decides.
    r1 = message_id("public", "todos", [1], "R", None, {"id": 1, "t": "a"})
    assert r1 == message_id("public", "todos", [1], "R", None, {"t": "a", "id": 1})
    assert r1 != message_id("public", "todos", [1], "R", None, {"id": 1, "t": "b"})
    assert a.startswith("public.todos.W.") and len(a) < 100


def test_build_message_body_and_headers() -> None:
    m = build_message("sb", "public", "todos", [7], ("id",), "U", "live",
                      "2026-08-21T10:15:30.123456+00:00", {"id": 7, "title": "x"}, (7,))
    assert m.subject == "sb.public.todos"
    body = json.loads(m.body)
    assert body == {"schema": "public", "table": "todos", "op": "UPDATE", "pk": {"id": 7},
                    "row": {"id": 7, "title": "x"}, "origin": "live",
                    "commit_timestamp": "2026-08-21T10:15:30.123Z"}
    assert m.headers["Nats-Msg-Id"] == m.msg_id
    assert m.headers["Supasync-Op"] == "UPDATE"
    assert m.headers["Supasync-Origin"] == "live"
    assert m.headers["Supasync-Commit-Timestamp"] == "2026-08-21T10:15:30.123Z"
    d = build_message("sb", "public", "todos", [7], ("id",), "D", "replay", None,
                      {"id": 7}, (7,))
    assert json.loads(d.body)["row"] is None and "Supasync-Commit-Timestamp" not in d.headers


def test_subjects() -> None:
    assert subject_matches("sb.>", "sb.public.todos")
    assert subject_matches("sb.*.todos", "sb.public.todos")
    assert not subject_matches("sb.*", "sb.public.todos")
    assert not subject_matches("other.>", "sb.public.todos")
    assert _covers(["sb.>"], ["sb.public.todos"]) == []
    assert _covers(["other.>"], ["sb.public.todos"]) == ["sb.public.todos"]
    assert check_subject_token("a.b", "prefix", "--subject-prefix") == "a.b"
    for bad in ("", "a b", "a.*", "x>", "a..b"):
        with pytest.raises(ConfigError, match="--subject-prefix"):
            check_subject_token(bad, "prefix", "--subject-prefix")
    with pytest.raises(ConfigError, match="--stream"):
        check_subject_token("MY.STREAM", "stream name", "--stream")


def test_options_refused_with_a_fix() -> None:
    for opts, key in ((RelayOptions(servers=("http://x",)), "--to"),
                      (RelayOptions(servers=()), "--to"),
                      (RelayOptions(batch_size=0), "--batch-size"),
                      (RelayOptions(duplicate_window=0), "--duplicate-window"),
                      (RelayOptions(stream="a b"), "--stream")):
        with pytest.raises(ConfigError, match=key):
            check_options(opts)
    check_options(RelayOptions())


def test_credentials_never_shown() -> None:
    assert safe_url("nats://user:s3cret@host:4222") == "nats://***@host:4222"
    assert safe_url("nats://tok3n@host:4222") == "nats://***@host:4222"
    assert safe_url("nats://host:4222") == "nats://host:4222"
    with pytest.raises(ConfigError) as info:
        check_options(RelayOptions(servers=("http://user:s3cret@host",)))
    assert "s3cret" not in str(info.value)
    s = Settings(url="http://x", realtime_url="ws://x",
                 relay={"to": ["nats://user:s3cret@h:1", "nats://t0ken@h:2"]})
    assert "s3cret" not in repr(s) and "t0ken" not in repr(s)


def test_relay_settings_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "supasync.toml"
    toml.write_text('[relay]\nto = "nats://127.0.0.1:4333"\nstream = "S"\ncache = "r.sqlite"\n'
                    "replicas = 3\nduplicate_window = 300\nsnapshot = true\n")
    settings = load_settings({"SUPABASE_URL": "http://127.0.0.1:1", "SUPABASE_ANON_KEY": "k"},
                             env_file=None, toml_path=toml)
    kw = relay_settings(settings.relay)
    assert kw == {"servers": ("nats://127.0.0.1:4333",), "stream": "S",
                  "cache": Path("r.sqlite"), "replicas": 3, "duplicate_window": 300.0,
                  "snapshot": True}
    RelayOptions(**kw)
    with pytest.raises(ConfigError, match=r"relay\.strem"):
        relay_settings({"strem": "S"})
    with pytest.raises(ConfigError, match=r"relay\.replicas"):
        relay_settings({"replicas": "3"})
    with pytest.raises(ConfigError, match=r"relay\.snapshot"):
        relay_settings({"snapshot": 1})
    with pytest.raises(ConfigError, match=r"relay\.to"):
        relay_settings({"to": ["nats://a:1", 2]})


def test_status_line_record_and_metrics() -> None:
    t = TableRelay("public.todos", "todos", "sb.public.todos", state="relaying", position=40,
                   published=38, duplicates=2, pending=5, oldest_pending_at=100.0)
    f = RelayFigures(url="nats://127.0.0.1:4222", stream="S", tables=[t], nats="connected")
    assert t.lag_s(102.5) == 2.5
    line = relay_status_line(f, 102.5)
    assert "nats connected" in line and "position 40 pending 5 lag 2.5s" in line
    rec = relay_record(f, 102.5, "now")
    assert rec["event"] == "relay_status"
    assert rec["tables"][0]["lag_s"] == 2.5  # type: ignore[index]
    text = relay_metrics(f, 102.5)
    assert 'supasync_relay_position{table="public.todos"} 40' in text
    assert 'supasync_relay_lag_seconds{table="public.todos"} 2.5' in text
    assert "supasync_relay_connected 1" in text
    t.pending = 0
    assert t.lag_s(200.0) == 0.0


def test_nats_is_imported_only_when_a_relay_starts() -> None:
    import subprocess
    import sys

    code = ("import sys, supasync.relay, supasync.cli.app; "
            "print('nats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_cli_help_and_bad_input_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from supasync.cli.app import app

    runner = CliRunner()
    (tmp_path / "none.toml").write_text("")
    result = runner.invoke(app, ["relay", "--help"])
    assert result.exit_code == 0 and "--subject-prefix" in result.output
    result = runner.invoke(app, ["relay", "--to", "http://nope", "--table", "todos",
                                 "--env-file", "/dev/null", "--config",
                                 str(tmp_path / "none.toml")],
                           env={"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_ANON_KEY": "k"})
    assert result.exit_code == 2, result.output
    assert "not a NATS URL" in result.output


def test_without_nats_the_relay_exits_2_naming_the_extra(tmp_path: Path) -> None:
    """nats-py not installed (None in sys.modules, as for a missing package): every relay module
    imports, and ``supasync relay`` exits 2 with ``pip install 'supasync[relay]'``."""
    import subprocess
    import sys

    (tmp_path / "none.toml").write_text("")
    script = f"""
import sys, io
sys.modules["nats"] = None
import supasync.relay.relay, supasync.relay.jetstream, supasync.relay.natsserver
from supasync.relay.command import run_relay_cli
err = io.StringIO()
code = run_relay_cli(tables=["todos"], env={{"SUPABASE_URL": "http://127.0.0.1:9",
                     "SUPABASE_ANON_KEY": "k"}}, env_file=None,
                     toml_path=__import__("pathlib").Path({str(tmp_path / "none.toml")!r}),
                     err=err, out=io.StringIO())
print(code, err.getvalue())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 "), out.stdout
    assert "pip install 'supasync[relay]'" in out.stdout
