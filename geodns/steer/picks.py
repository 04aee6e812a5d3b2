"""Which of a region's addresses an answer carries when the region's `answers` limits them.

A region with more endpoints up than `answers` gives each answer `answers` of them, and
each endpoint a share of answers in proportion to its weight. The answer path never draws
at random: a name's answers are prebuilt per branch and picked per query by smooth weighted
round robin (`geodns.dns.cache.smooth_schedule`), so the picks are a few weighted subsets.

They come from systematic sampling with probability proportional to size (Madow, 1949):
lay the endpoints' inclusion probabilities `n * w / W` end to end on [0, n) and take the
endpoints under u, u + 1, ..., u + n - 1 for u in [0, 1). Every endpoint is then in exactly
its share of answers, never twice in one, and there are at most as many distinct subsets as
endpoints (one per interval between the fractional parts of the running sums). An endpoint
whose share would pass 1 is in every answer, and the rest share what is left.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

MIN_SHARE = 1e-9
"""Subsets rarer than this are float noise at an interval's edge, not a pick."""


def weighted_picks(weights: Sequence[int], n: int) -> list[tuple[float, tuple[int, ...]]]:
    """The subsets of `n` indices into `weights` an answer may carry, each with the share of
    answers that carry it (the shares sum to 1; indices ascending, as configured). Weights
    are positive; with `n` at least their number, one subset holds them all."""
    k = len(weights)
    if n >= k:
        return [(1.0, tuple(range(k)))]
    sure: list[int] = []
    rest = list(range(k))
    while True:  # an endpoint whose share passes 1 is in every answer
        m = n - len(sure)
        total = sum(weights[i] for i in rest)
        over = [i for i in rest if m * weights[i] >= total]
        if not over or m == 0:
            break
        sure += over
        rest = [i for i in rest if i not in over]
    m = n - len(sure)
    if m == 0 or not rest:
        return [(1.0, tuple(sorted(sure)))]
    total = sum(weights[i] for i in rest)
    bounds = [0.0]
    for i in rest:
        bounds.append(bounds[-1] + m * weights[i] / total)
    cuts = sorted({0.0, 1.0, *(b % 1.0 for b in bounds[1:-1])})
    picks: dict[tuple[int, ...], float] = {}
    for low, high in itertools.pairwise(cuts):
        if high - low < MIN_SHARE:
            continue
        u = (low + high) / 2
        chosen = [rest[j] for j in range(len(rest)) if _covers(bounds[j], bounds[j + 1], u, m)]
        key = tuple(sorted(sure + chosen))
        picks[key] = picks.get(key, 0.0) + high - low
    return [(share, subset) for subset, share in picks.items()]


def _covers(low: float, high: float, u: float, m: int) -> bool:
    """Whether [low, high) holds one of u, u + 1, ..., u + m - 1."""
    j = max(0, math.ceil(low - u))
    return j <= m - 1 and u + j < high
