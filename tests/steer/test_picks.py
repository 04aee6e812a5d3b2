"""`weighted_picks`: every endpoint in exactly its share of answers, never twice in one."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from geodns.steer.picks import weighted_picks


def inclusion(picks: list[tuple[float, tuple[int, ...]]]) -> Counter:
    seen: Counter = Counter()
    for share, subset in picks:
        for i in subset:
            seen[i] += share
    return seen


def expected(weights: list[int], n: int) -> list[float]:
    """n * w / W, where an endpoint whose share passes 1 is in every answer and the rest share the remainder."""
    sure: set[int] = set()
    while True:
        rest = [i for i in range(len(weights)) if i not in sure]
        total, m = sum(weights[i] for i in rest), n - len(sure)
        over = {i for i in rest if m * weights[i] >= total}
        if not over or m == 0:
            return [1.0 if i in sure else m * weights[i] / total for i in range(len(weights))]
        sure |= over


@pytest.mark.parametrize(("weights", "n", "picks"), [
    ([3, 1], 1, [(0.75, (0,)), (0.25, (1,))]),
    ([2, 1, 1], 3, [(1.0, (0, 1, 2))]),
    ([2, 1, 1], 5, [(1.0, (0, 1, 2))]),
    ([100, 1, 1], 2, [(0.5, (0, 1)), (0.5, (0, 2))]),
    ([1, 1, 1, 1], 2, [(0.5, (0, 2)), (0.5, (1, 3))]),
])
def test_known_cases(weights: list[int], n: int, picks: list) -> None:
    got = weighted_picks(weights, n)
    assert sorted((round(s, 9), sub) for s, sub in got) == sorted(picks)


def test_random_weights_keep_every_share_exactly() -> None:
    rng = random.Random(7)
    for _ in range(500):
        k = rng.randint(1, 12)
        weights = [rng.randint(1, 50) for _ in range(k)]
        n = rng.randint(1, k)
        picks = weighted_picks(weights, n)
        assert abs(sum(s for s, _ in picks) - 1) < 1e-9
        assert len(picks) <= k, "at most one subset per endpoint"
        assert all(len(set(sub)) == n == len(sub) for _, sub in picks), "n distinct endpoints per answer"
        got = inclusion(picks)
        assert all(abs(got[i] - e) < 1e-6 for i, e in enumerate(expected(weights, n))), (weights, n, picks)
