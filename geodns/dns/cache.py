"""The answer cache: prepared wire answers, per snapshot generation.

Keyed by (qname, qtype, client network) where the network is the GeoIP
network the client fell into (narrowed by CIDR rules) for answers that depend
on the client, and None for those that do not. A value is a `Prepared`: one
or more wire answers (one per weighted branch) with ID 0 and no OPT record;
`geodns.dns.wire.patch` finishes one per query. Bounded: the oldest entry
goes first.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable


class Prepared:
    """Ready-made answers for one cache key."""

    __slots__ = ("body", "bodies", "_turns", "scope", "deadline", "labels", "client_dependent", "meta")

    def __init__(
        self,
        bodies: list[bytes],
        schedule: list[int] | None = None,
        scope: int | None = None,
        deadline: float | None = None,
        labels: list[tuple[str, ...]] | None = None,
        client_dependent: bool = False,
        meta: list | None = None,
    ):
        self.bodies = bodies
        self.body = bodies[0] if len(bodies) == 1 else None
        """Set when there is a single answer (the common case): no selection per query."""
        self._turns = itertools.cycle(schedule) if schedule and len(bodies) > 1 else None
        self.scope = scope
        """ECS scope prefix to echo (None: scope 0, the answer does not depend on the client)."""
        self.deadline = deadline
        """Monotonic time after which this entry must be rebuilt (a verdict may have changed)."""
        self.labels = labels or [()]
        """Per body: the regions it answers (for metrics and logs)."""
        self.client_dependent = client_dependent
        self.meta = meta or [None] * len(bodies)
        """Per body: its `AnswerLabel` for metrics."""

    def pick(self) -> int:
        """Index of the body to answer with (round robin over the weighted schedule)."""
        return next(self._turns) if self._turns is not None else 0


DEPENDS_ON_CLIENT = Prepared([b""], client_dependent=True)
"""Stored under the client-independent key of names whose answer depends on the client."""


class AnswerCache:
    __slots__ = ("_entries", "max_entries", "hits", "misses")

    def __init__(self, max_entries: int = 200_000):
        self._entries: dict[Hashable, Prepared] = {}
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Prepared | None:
        return self._entries.get(key)

    def put(self, key: Hashable, value: Prepared) -> None:
        entries = self._entries
        if len(entries) >= self.max_entries:
            # Evict the oldest tenth in one go: amortised O(1), and no per-hit bookkeeping.
            for old in list(itertools.islice(entries, max(1, self.max_entries // 10))):
                del entries[old]
        entries[key] = value

    def __len__(self) -> int:
        return len(self._entries)


def smooth_schedule(weights: list[int], max_length: int = 1000) -> list[int]:
    """nginx's smooth weighted round robin, unrolled into one period of indices."""
    from math import gcd

    if not weights:
        return []
    g = 0
    for w in weights:
        g = gcd(g, w)
    weights = [w // g for w in weights] if g else [1] * len(weights)
    total = sum(weights)
    if total > max_length:  # keep proportions, bound the period
        weights = [max(1, round(w * max_length / total)) for w in weights]
        total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])
        current[best] -= total
        out.append(best)
    return out
