"""bench/client_throughput.py counts deliveries by row id: rows that share a timestamp are not
duplicates, a loss is an id that never arrived (the bench once printed "460 DUPLICATES" and
"supasync LOST 460 changes" for a clean run, telling rows apart by ``clock_timestamp()``)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "client_throughput.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_client_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_a_clean_run_has_no_loss_and_no_duplicates(bench: ModuleType) -> None:
    d = bench.count_deliveries(reversed(range(1, 501)), range(1, 501))
    assert d == bench.Delivery(received=500, distinct=500, duplicates=0, missing=0, unexpected=0)
    assert bench.delivery_note(d) == ""


def test_a_missing_id_is_a_loss_and_a_repeated_id_a_duplicate(bench: ModuleType) -> None:
    d = bench.count_deliveries([1, 2, 2, 2, 4, 99], [1, 2, 3, 4, 5])
    assert d == bench.Delivery(received=6, distinct=3, duplicates=2, missing=2, unexpected=1)
    assert bench.delivery_note(d) == " (2 LOST, 2 DUPLICATES, 1 rows not written in this phase)"


def test_nothing_received_loses_everything(bench: ModuleType) -> None:
    d = bench.count_deliveries([], [7, 8])
    assert (d.received, d.missing, d.duplicates) == (0, 2, 0)
