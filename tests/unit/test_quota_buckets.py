"""kms.domain.quota.Bucket, a token bucket on a clock the test holds (``now`` is passed in):
bursts, refusals that say how long to wait, refill up to the burst, and debt for calls already
spent, down to a floor."""

from __future__ import annotations

import pytest

from kms.domain.quota import Bucket, Limit


def full(rate: float = 2.0, burst: float = 5.0, now: float = 100.0) -> Bucket:
    return Bucket(Limit(rate, burst), tokens=burst, updated=now)


def test_a_full_bucket_passes_a_burst_then_refuses_saying_how_long_to_wait():
    bucket = full(rate=2.0, burst=5.0)
    assert [bucket.take(1, 100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(1, 100.0) == pytest.approx(0.5)  # one token at 2/s
    assert bucket.tokens == 0


def test_a_refused_take_takes_nothing():
    bucket = full(rate=1.0, burst=3.0)
    assert bucket.take(2, 100.0) == 0.0
    assert bucket.take(2, 100.0) == pytest.approx(1.0)  # one token there, one missing
    assert bucket.tokens == pytest.approx(1.0)
    assert bucket.take(1, 100.0) == 0.0


def test_tokens_come_back_at_the_rate():
    bucket = full(rate=4.0, burst=8.0)
    bucket.take(8, 100.0)
    assert bucket.take(1, 100.1) == pytest.approx((1 - 0.4) / 4)
    assert bucket.take(1, 100.25) == 0.0
    assert bucket.tokens == pytest.approx(0.0)


def test_refill_stops_at_the_burst():
    bucket = full(rate=10.0, burst=3.0)
    bucket.take(3, 100.0)
    assert bucket.wait(1000.0) == 0.0
    assert bucket.tokens == 3.0
    assert [bucket.take(1, 1000.0) for _ in range(4)][-1] > 0


def test_a_take_bigger_than_the_burst_is_refused_with_its_full_wait():
    bucket = full(rate=1.0, burst=2.0)
    assert bucket.take(5, 100.0) == pytest.approx(3.0)
    assert bucket.tokens == 2.0


def test_charging_goes_into_debt_and_the_debt_is_waited_off():
    bucket = full(rate=2.0, burst=5.0)
    bucket.charge(7, 100.0)
    assert bucket.tokens == pytest.approx(-2.0)
    assert bucket.wait(100.0) == pytest.approx(1.5)  # from -2 to 1 token at 2/s
    assert bucket.take(1, 100.0) == pytest.approx(1.5)
    assert bucket.wait(101.5) == 0.0


def test_debt_has_a_floor_of_minus_the_burst():
    bucket = full(rate=1.0, burst=4.0)
    for _ in range(10):
        bucket.charge(100, 100.0)
    assert bucket.tokens == -4.0
    assert bucket.wait(100.0) == pytest.approx(5.0)  # never more than (burst + 1) / rate


def test_wait_takes_nothing():
    bucket = full(rate=1.0, burst=1.0)
    assert bucket.wait(100.0) == 0.0
    assert bucket.wait(100.0) == 0.0
    assert bucket.tokens == 1.0
    assert bucket.take(1, 100.0) == 0.0
    assert bucket.wait(100.0) == pytest.approx(1.0)
    assert bucket.wait(100.25) == pytest.approx(0.75)


def test_time_is_measured_from_the_last_look():
    bucket = full(rate=1.0, burst=10.0)
    bucket.take(10, 100.0)
    bucket.wait(102.0)
    assert bucket.updated == 102.0 and bucket.tokens == pytest.approx(2.0)
    bucket.charge(1, 103.0)
    assert bucket.updated == 103.0 and bucket.tokens == pytest.approx(2.0)
