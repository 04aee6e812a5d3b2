"""Choosers are pure: a list of candidates in, one out. Distribution over 1,000 picks."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from geodns.balance.choosers import (
    BoundedConsistentHash,
    Candidate,
    IPHash,
    LeastConnections,
    Member,
    RoundRobin,
    SmoothWeightedRoundRobin,
    make_chooser,
)

THREE = [Candidate("a"), Candidate("b"), Candidate("c")]
WEIGHTED = [Candidate("a", 5), Candidate("b", 3), Candidate("c", 2)]


def members(cands: list[Candidate]) -> list[Member]:
    return [Member(c.key, c.weight) for c in cands]


def picks(chooser, cands, n=1000, key=None) -> Counter[str]:
    return Counter(chooser.choose(cands, key(i) if key else None).key for i in range(n))


def clients(n: int) -> list[str]:
    base = int(ipaddress.ip_address("10.0.0.0"))
    return [str(ipaddress.ip_address(base + i * 7919)) for i in range(n)]


def test_round_robin_is_exact() -> None:
    assert picks(RoundRobin(), THREE, 999) == {"a": 333, "b": 333, "c": 333}


def test_round_robin_skips_unavailable() -> None:
    rr = RoundRobin()
    assert {rr.choose([THREE[0], THREE[2]]).key for _ in range(4)} == {"a", "c"}
    assert rr.choose([]) is None


def test_smooth_weighted_matches_weights_exactly() -> None:
    # 1,000 picks over weights 5:3:2: exactly 500/300/200 (tolerance 0).
    assert picks(SmoothWeightedRoundRobin(), WEIGHTED) == {"a": 500, "b": 300, "c": 200}


def test_smooth_weighted_sequence_is_nginx_like() -> None:
    # nginx's documented example: weights 5,1,1 give a a b a c a a, no burst of five.
    w = SmoothWeightedRoundRobin()
    cands = [Candidate("a", 5), Candidate("b", 1), Candidate("c", 1)]
    assert "".join(w.choose(cands).key for _ in range(7)) == "aabacaa"


def test_least_conn_prefers_idle_weighted() -> None:
    lc = LeastConnections()
    busy = [Candidate("a", 1, 4), Candidate("b", 1, 2), Candidate("c", 2, 5)]
    # in_flight/weight: a=4, b=2, c=2.5
    assert lc.choose(busy).key == "b"
    # weight 3 with 6 in flight (2.0) beats weight 1 with 3 (3.0)
    assert lc.choose([Candidate("x", 1, 3), Candidate("y", 3, 6)]).key == "y"


def test_least_conn_ties_follow_weights() -> None:
    # All idle: ties broken by smooth weighted round robin, so weights hold (tolerance 0).
    assert picks(LeastConnections(), WEIGHTED) == {"a": 500, "b": 300, "c": 200}


def test_ip_hash_is_stable_and_spread() -> None:
    chooser = IPHash(members(THREE))
    ips = clients(1000)
    first = {ip: chooser.choose(THREE, ip).key for ip in ips}
    assert all(chooser.choose(THREE, ip).key == first[ip] for ip in ips)
    counts = Counter(first.values())
    # Tolerance: each of 3 equal backends gets 333 +- 15% of 1,000 clients.
    assert all(abs(c - 333) < 150 for c in counts.values()), counts


def test_ip_hash_weights_and_failover() -> None:
    chooser = IPHash(members(WEIGHTED))
    counts = Counter(chooser.choose(WEIGHTED, ip).key for ip in clients(1000))
    for key, share in (("a", 500), ("b", 300), ("c", 200)):
        assert abs(counts[key] - share) < 100, counts
    # Clients of a dead backend move; the others stay put.
    alive = WEIGHTED[1:]
    for ip in clients(200):
        before = chooser.choose(WEIGHTED, ip).key
        after = chooser.choose(alive, ip).key
        assert after != "a"
        if before != "a":
            assert after == before


def test_consistent_hash_spread_and_minimal_movement() -> None:
    ring = BoundedConsistentHash(members(THREE))
    keys = [f"user-{i}" for i in range(1000)]
    first = {k: ring.choose(THREE, k).key for k in keys}
    counts = Counter(first.values())
    # Tolerance: 100 virtual nodes per backend keep each within 333 +- 20% of 1,000 keys.
    assert all(abs(c - 333) < 200 for c in counts.values()), counts
    # Removing c moves only c's keys.
    two = THREE[:2]
    moved = sum(1 for k in keys if first[k] != "c" and ring.choose(two, k).key != first[k])
    assert moved == 0


def test_consistent_hash_bounded_load_spills_a_hot_key() -> None:
    ring = BoundedConsistentHash(members(THREE), load_factor=1.25)
    home = ring.choose(THREE, "hot").key
    # The hot key's home is already at its bound: ceil(1.25 * (6+1) / 3) = 3.
    loaded = [Candidate(c.key, 1, 3 if c.key == home else 1) for c in THREE]
    spill = ring.choose(loaded, "hot")
    assert spill.key != home
    # Below the bound it stays home.
    light = [Candidate(c.key, 1, 1 if c.key == home else 1) for c in THREE]
    assert ring.choose(light, "hot").key == home


def test_consistent_hash_simulated_hot_key_never_exceeds_bound() -> None:
    ring = BoundedConsistentHash(members(THREE), load_factor=1.25)
    load = {c.key: 0 for c in THREE}
    for _ in range(300):  # one key, 300 concurrent requests
        cands = [Candidate(k, 1, v) for k, v in load.items()]
        load[ring.choose(cands, "hot").key] += 1
    assert max(load.values()) <= 1.25 * 300 / 3 + 1, load


@pytest.mark.parametrize(
    "name", ["round_robin", "weighted_round_robin", "least_conn", "ip_hash", "consistent_hash"]
)
def test_make_chooser_and_empty(name: str) -> None:
    chooser = make_chooser(name, members(THREE))
    assert chooser.choose([], "k") is None
    assert chooser.choose(THREE, "k") in THREE


def test_make_chooser_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown algorithm"):
        make_chooser("random", members(THREE))
