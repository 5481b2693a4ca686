"""The SDK's RetryPolicy.run on a hand-moved clock, with its sleep and randomness injected:
exponential backoff with full jitter inside its bounds, the service's retry-after honoured, never
a wait past the deadline, and never a retry of any other code."""

from __future__ import annotations

import random

import pytest

import kms_client
from kms_client import RetryPolicy
from kms_client._retry import NO_RETRY


class World:
    """A monotonic clock that only ``sleep`` moves, and the waits asked for."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Highest:
    """A "random" source that always draws the upper bound: the waits are the bounds."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return high


class Failing:
    """An attempt that raises ``errors`` in turn, then returns "done"; remembers what it was given."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.remaining: list[float | None] = []

    def __call__(self, remaining: float | None) -> str:
        self.remaining.append(remaining)
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def unavailable() -> kms_client.Unavailable:
    return kms_client.Unavailable("try again")


def run(policy: RetryPolicy, attempt: Failing, world: World, deadline: float | None = None, rng=Highest) -> str:
    return policy.run(attempt, deadline, world.sleep, monotonic=world.monotonic, rng=rng)


def test_a_success_needs_no_wait():
    world, attempt = World(), Failing()
    assert run(RetryPolicy(), attempt, world) == "done"
    assert (attempt.remaining, world.sleeps) == ([None], [])


def test_backoff_grows_by_the_multiplier_up_to_its_cap():
    world, attempt = World(), Failing(*(unavailable() for _ in range(6)))
    policy = RetryPolicy(max_attempts=7, initial_backoff=0.5, multiplier=3.0, max_backoff=5.0)
    assert run(policy, attempt, world) == "done"
    assert world.sleeps == pytest.approx([0.5, 1.5, 4.5, 5.0, 5.0, 5.0])


def test_jitter_is_a_seeded_draw_within_zero_and_the_backoff():
    world, attempt = World(), Failing(*(unavailable() for _ in range(9)))
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, multiplier=2.0, max_backoff=1.0)
    assert run(policy, attempt, world, rng=random.Random(20261202)) == "done"
    bounds = [min(0.1 * 2**n, 1.0) for n in range(9)]
    assert all(0 <= wait <= bound for wait, bound in zip(world.sleeps, bounds, strict=True))
    same_seed = random.Random(20261202)
    assert world.sleeps == [same_seed.uniform(0, bound) for bound in bounds]  # full jitter, nothing else
    assert len(set(world.sleeps)) == 9


def test_it_gives_up_after_max_attempts_with_the_last_error():
    world = World()
    errors = [kms_client.HsmUnavailable(f"down {n}") for n in range(5)]
    attempt = Failing(*errors)
    with pytest.raises(kms_client.HsmUnavailable) as raised:
        run(RetryPolicy(max_attempts=3), attempt, world)
    assert raised.value is errors[2]
    assert (len(attempt.remaining), len(world.sleeps)) == (3, 2)


def test_each_attempt_is_given_what_is_left_of_the_deadline():
    world, attempt = World(), Failing(unavailable(), unavailable())
    run(RetryPolicy(initial_backoff=0.25, multiplier=2.0), attempt, world, deadline=1010.0)
    assert attempt.remaining == pytest.approx([10.0, 9.75, 9.25])


def test_a_wait_that_would_reach_the_deadline_is_not_waited():
    world, attempt = World(), Failing(unavailable(), unavailable(), unavailable())
    policy = RetryPolicy(max_attempts=10, initial_backoff=1.0, multiplier=2.0, max_backoff=60.0)
    with pytest.raises(kms_client.Unavailable):
        run(policy, attempt, world, deadline=1003.5)
    assert world.sleeps == [1.0, 2.0]  # the next, 4 s, would end past 1003.5
    assert world.now <= 1003.5


def test_the_services_retry_after_is_honoured_even_above_the_backoff():
    world = World()
    attempt = Failing(
        kms_client.RateLimited("slow down", retry_after=2.5), kms_client.RateLimited("again", retry_after=0.01)
    )
    assert run(RetryPolicy(initial_backoff=0.05, multiplier=2.0), attempt, world) == "done"
    assert world.sleeps == pytest.approx([2.5, 0.1])  # the larger of the jittered backoff and retry-after


def test_retry_after_past_the_deadline_fails_at_once():
    world, attempt = World(), Failing(kms_client.RateLimited("slow down", retry_after=30.0))
    with pytest.raises(kms_client.RateLimited):
        run(RetryPolicy(), attempt, world, deadline=1010.0)
    assert world.sleeps == []


@pytest.mark.parametrize(
    "error",
    [kms_client.ResourceExhausted("no retry information"), kms_client.TooManyStreams("full")],
    ids=["resource-exhausted", "too-many-streams"],
)
def test_exhaustion_without_retry_after_is_not_retried(error):
    world, attempt = World(), Failing(error)
    with pytest.raises(type(error)):
        run(RetryPolicy(), attempt, world)
    assert (len(attempt.remaining), world.sleeps) == (1, [])


@pytest.mark.parametrize(
    "error",
    [
        kms_client.InvalidArgument("bad"),
        kms_client.InvalidCiphertext("bad"),
        kms_client.KeyNotFound("gone"),
        kms_client.PermissionDenied("no"),
        kms_client.Unauthenticated("who"),
        kms_client.FailedPrecondition("state"),
        kms_client.KeyVersionDisabled("off"),
        kms_client.AlreadyExists("twice"),
        kms_client.DeadlineExceeded("late"),
        kms_client.Cancelled("stop"),
        kms_client.Internal("bug"),
        kms_client.KmsError("unknown"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_other_codes_are_never_retried(error):
    world, attempt = World(), Failing(error)
    with pytest.raises(type(error)) as raised:
        run(RetryPolicy(max_attempts=10), attempt, world)
    assert raised.value is error
    assert (len(attempt.remaining), world.sleeps) == (1, [])


def test_anything_but_a_kms_error_passes_through_untouched():
    world, attempt = World(), Failing(ValueError("a bug in the caller"))
    with pytest.raises(ValueError):
        run(RetryPolicy(), attempt, world)
    assert world.sleeps == []


def test_no_retry_makes_one_attempt():
    world, attempt = World(), Failing(unavailable())
    with pytest.raises(kms_client.Unavailable):
        run(NO_RETRY, attempt, world)
    assert (len(attempt.remaining), world.sleeps) == (1, [])
