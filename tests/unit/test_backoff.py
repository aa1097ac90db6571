"""Backoff policy: pure, jittered, capped, never exhausted, reset only after stability."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supasync.core.backoff import Backoff, BackoffPolicy, delays, jittered_delay


def fixed(value: float):  # a deterministic random source
    return lambda: value


def test_no_jitter_doubles_then_caps() -> None:
    policy = BackoffPolicy(initial=1, factor=2, cap=10, jitter=0)
    got = list(itertools.islice(delays(policy, fixed(0.5)), 7))
    assert got == [1, 2, 4, 8, 10, 10, 10]


def test_delays_never_run_out() -> None:
    policy = BackoffPolicy(initial=0.1, cap=1)
    gen = delays(policy, fixed(0.3))
    for _ in range(10_000):
        assert 0 < next(gen) <= 1


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = BackoffPolicy(initial=1, factor=10, cap=30, jitter=0)
    assert jittered_delay(policy, 10**6, fixed(0.0)) == 30


@given(
    attempt=st.integers(min_value=1, max_value=200),
    r=st.floats(min_value=0, max_value=1),
    jitter=st.floats(min_value=0, max_value=1),
)
def test_delay_lies_in_the_jitter_band(attempt: int, r: float, jitter: float) -> None:
    policy = BackoffPolicy(initial=0.5, factor=2, cap=30, jitter=jitter)
    nominal = min(30.0, 0.5 * 2 ** min(attempt - 1, 10))
    delay = jittered_delay(policy, attempt, fixed(r))
    assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal + 1e-9


def test_jitter_uses_the_given_random_source() -> None:
    policy = BackoffPolicy(initial=4, jitter=0.5, cap=30)
    assert jittered_delay(policy, 1, fixed(0.0)) == 2.0
    assert jittered_delay(policy, 1, fixed(1.0)) == 4.0


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError):
        jittered_delay(BackoffPolicy(), 0, fixed(0))


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"cap": -1}, {"factor": 0.5}, {"jitter": 2}, {"reset_after": -1}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_backoff_grows_while_flapping_and_resets_after_stability() -> None:
    b = Backoff(BackoffPolicy(initial=1, jitter=0, cap=60, reset_after=30), random=fixed(0))
    assert b.failure(now=0) == 1
    b.success(now=1)
    assert b.failure(now=2) == 2  # up for 1 s only: keep backing off
    b.success(now=3)
    assert b.failure(now=4) == 4
    b.success(now=10)
    assert b.failure(now=45) == 1  # stayed up 35 s >= reset_after: start over


def test_reset() -> None:
    b = Backoff(BackoffPolicy(initial=1, jitter=0), random=fixed(0))
    b.failure(0)
    b.failure(0)
    b.reset()
    assert b.failure(0) == 1
