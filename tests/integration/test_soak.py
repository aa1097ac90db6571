"""The short soak (issue #17, item 6): bench/soak.py for half a minute - a writer, a fault every
3 s (drop, close, expire), one whole-stack restart - and every view (the client's handlers and
cache, the mirror, tail) must equal the source at the end, with nothing piling up.

The 30-minute run is ``.venv/bin/python bench/soak.py``; this one asserts behaviour, not
timings (limits are loose: a loaded CI machine must not fail it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_short_soak_every_view_equals_the_source(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "30", "--fault-every", "3",
         "--restart-every", "15", "--sample-every", "3", "--settle", "120",
         "--json", str(report_path)],
        capture_output=True, text=True, timeout=400,
    )
    assert report_path.exists(), proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert proc.returncode == 0, (report["differing"], proc.stderr[-2000:])
    assert all(report["views_equal"].values()), report["differing"]
    assert all(report["alive"].values()), report["alive"]
    assert "restart" in report["faults"] and len(report["faults"]) >= 6
    assert report["writes"] > 100
    for name, figures in report["processes"].items():
        assert figures["fds"]["max"] < 64, (name, figures)  # no descriptor piles up
    assert report["client_tasks"]["last"] and report["client_tasks"]["last"][0] < 50
    assert report["expiry_repairs"]["count"] >= 1
