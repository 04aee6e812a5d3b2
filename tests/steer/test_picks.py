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


def test_random_regions_weights_and_outages_through_the_chain() -> None:
    """Whatever the weights (standbys included), `answers` and the endpoints down: every
    answer carries at most `answers` addresses of the region, standbys only when no weighted
    endpoint is up, only endpoints that are up while any is, and the shares sum right."""
    import ipaddress

    from geodns.config.model import Endpoint, Region, Step
    from geodns.steer import Verdict, run_chain
    from geodns.steer.verdict import endpoint_target

    from .helpers import context, steered

    rng = random.Random(11)
    for _ in range(300):
        k = rng.randint(1, 9)
        addresses = [ipaddress.ip_address(f"192.0.2.{i + 1}") for i in range(k)]
        weights = [rng.choice([0, 0, 1, 2, 5]) for _ in range(k)]
        n = rng.choice([None, 1, 2, 3])
        region = Region("dc", 50.0, 8.0, tuple(Endpoint(a, w) for a, w in zip(addresses, weights, strict=True)),
                        min_healthy=0, answers=n)
        down = {a for a in addresses if rng.random() < 0.4}
        verdicts = {endpoint_target("dc", a): Verdict(up=False) for a in down}
        for explain in (True, False):
            ctx = context(regions={"dc": region}, verdicts=verdicts)
            ctx.explain = explain
            decision = run_chain(steered("healthy", Step("limit", 1), candidates=("dc",)), ctx)
            up = [a for a in addresses if a not in down] or addresses
            weighted_up = [a for a, w in zip(addresses, weights, strict=True) if w and a in up]
            allowed = set(weighted_up or up)
            total = sum(b.weight for b in decision.branches)
            assert total > 0
            for branch in decision.branches:
                assert set(branch.addresses) <= allowed, (weights, n, down, branch.addresses)
                assert len(branch.addresses) == (len(allowed) if n is None else min(n, len(allowed)))
