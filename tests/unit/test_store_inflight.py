"""The in-flight keys file: recorded before delivery, forgotten once cached, carried across a
crash until delivered again."""

from __future__ import annotations

from pathlib import Path

from supasync.store.inflight import InFlight, inflight_path


def test_marked_keys_survive_until_settled(tmp_path: Path) -> None:
    path = inflight_path(tmp_path / "cache.db", "todos")
    assert path.parent == tmp_path and path.name.startswith("cache.db.")
    first = InFlight(path)
    first.mark([(1,), (2, "a")])
    first.close()  # a crash: nothing settled
    again = InFlight(path)
    assert again.load() == [(1,), (2, "a")]
    again.mark([(3,)])
    again.settled()  # this run's rows are cached; the previous run's keys are not yet
    assert InFlight(path).load() == [(1,), (2, "a")]
    again.redelivered()
    assert InFlight(path).load() == []
    again.close()


def test_a_torn_line_is_skipped_and_no_file_means_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.inflight"
    path.write_text('[1]\n[2]\n[3, "un', encoding="utf-8")
    assert InFlight(path).load() == [(1,), (2,)]
    assert InFlight(tmp_path / "missing").load() == []
    nothing = InFlight(None)
    nothing.mark([(1,)])
    nothing.settled()
    assert nothing.load() == []


def test_settled_empties_the_file(tmp_path: Path) -> None:
    path = tmp_path / "y.inflight"
    keys = InFlight(path)
    keys.mark([(1,)])
    assert path.read_text() == "[1]\n"
    keys.settled()
    assert path.read_text() == ""
    keys.close()
