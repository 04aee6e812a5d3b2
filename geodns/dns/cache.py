"""The answer cache: prepared wire answers, per snapshot generation.

Keyed by (qname, qtype) for answers that do not depend on the client, and by
(qname, qtype, GeoIP record) for those that do (by the client's network,
narrowed by CIDR rules, where such a rule applies). A value is a `Prepared`: one
or more wire answers (one per weighted branch) with ID 0 and no OPT record;
`geodns.dns.wire.patch` finishes one per query. Bounded: the oldest entry
goes first.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable


class Prepared:
    """Ready-made answers for one cache key."""

    __slots__ = (
        "body", "bodies", "_turns", "schedule", "scope", "deadline", "labels", "client_dependent", "meta", "slots", "slot_table"
    )

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
        self.schedule = schedule
        self._turns = itertools.cycle(schedule) if schedule and len(bodies) > 1 else None
        self.scope = scope
        """ECS scope prefix to echo (None: scope 0, the answer does not depend on the client)."""
        self.deadline = deadline
        """Time (Unix seconds, the `now` the answer path is given) after which this entry must
        be rebuilt (a verdict may have changed, a signature is due for renewal)."""
        self.labels = labels or [()]
        """Per body: the regions it answers (for metrics and logs)."""
        self.client_dependent = client_dependent
        self.meta = meta or [None] * len(bodies)
        """Per body: its `AnswerLabel` for metrics."""
        self.slots: dict[int, int] = {}
        """qtype << 1 | udp -> the slot of the single body's (label, qtype, transport) key in
        `slot_table`, filled on first use: hashing that key costs ~1 us, looking it up here 0.05."""
        self.slot_table = None
        """The `SlotTable` (of the `Stats` that first counted this answer) that `slots` are of."""

    def pick(self) -> int:
        """Index of the body to answer with (round robin over the weighted schedule)."""
        return next(self._turns) if self._turns is not None else 0


DEPENDS_ON_CLIENT = Prepared([b""], client_dependent=True)
"""Stored under the client-independent key of names whose answer depends on the client."""


PacketEntry = tuple[bytes, float | None, int, str | None, object]
"""Level 0: (the answer without its 2-byte ID, deadline or None, the slot to count it by, the one
client address it is for or None, and the `SlotTable` the slot is of). Only an answer that
echoes a valid DNS cookie has a client: the cookie is valid for that address alone, and until
it is due for renewal (the deadline), so an entry with a client always has a deadline."""


class AnswerCache:
    """Levels 0-2 of the answer cache of one snapshot.

    Level 0, `packets`, is an exact-query memo in front of the others (PowerDNS's
    packet cache): the UDP query bytes after the ID -> the answer after the ID.
    The key holds the question with its letter case, the flags, the EDNS payload
    and the ECS subnet exactly as sent, so a hit is the answer this very query
    would get; only answers that do not depend on the source address, have a
    single body (no per-query weighted pick) and came out of the normal path go
    in, and answers to a query with a DNS cookie only when they echo its valid
    server cookie, for that client alone (`PacketEntry`). A hit costs one slice, one dict lookup and one concatenation. An answer is
    admitted on its second sighting only (a doorkeeper set of key hashes, as in
    TinyLFU): in a miss storm no query repeats, and storing each answer cost time
    and ~60 MB per worker for entries nothing ever hit.

    Bounds, from `max_entries` (`--cache-size`, 200k): level 0 holds up to
    max_entries answers, level 1 half that, level 2 (`places`) max_entries
    decisions. The main bench workload (100k client /24s: 25k places) fits, and
    a miss storm over the full city database (1M client /24s: 105k places) too.
    """

    __slots__ = ("_entries", "max_entries", "hits", "misses", "packets", "places", "_seen", "level0")

    def __init__(self, max_entries: int = 200_000, level0: bool = True):
        self._entries: dict[Hashable, Prepared] = {}
        self.max_entries = max_entries
        self.level0 = level0
        """False: level 0 stores nothing (only to measure what it buys, bench/cookies.py; the
        answers are the same either way)."""
        self.hits = 0
        self.misses = 0
        self.packets: dict[bytes, PacketEntry] = {}
        self._seen: set[int] = set()
        """Hashes of level-0 keys seen once (a collision only admits an answer early)."""
        self.places: dict[Hashable, Prepared] = {}
        """Level 2: one steering decision per GeoIP record (or per network where a
        CIDR rule applies), kept apart from level 1."""

    def get(self, key: Hashable) -> Prepared | None:
        return self._entries.get(key)

    def put_packet(self, key: bytes, value: PacketEntry) -> None:
        if not self.level0:
            return
        seen = self._seen
        mark = hash(key)
        if mark not in seen:
            if len(seen) >= self.max_entries:
                seen.clear()
            seen.add(mark)
            return
        _bounded_put(self.packets, key, value, self.max_entries)

    def put_place(self, key: Hashable, value: Prepared) -> None:
        _bounded_put(self.places, key, value, max(1, self.max_entries))

    def put(self, key: Hashable, value: Prepared) -> None:
        _bounded_put(self._entries, key, value, max(1, self.max_entries // 2))

    def __len__(self) -> int:
        return len(self._entries) + len(self.packets) + len(self.places)


def _bounded_put(entries: dict, key: Hashable, value: object, cap: int) -> None:
    if len(entries) >= cap:
        # Evict the oldest tenth in one go: amortised O(1), and no per-hit bookkeeping.
        for old in list(itertools.islice(entries, max(1, cap // 10))):
            del entries[old]
    entries[key] = value


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
