#!/usr/bin/env python3
"""Signatures per second on one core, and what one new steered answer costs to sign.

Prints a table: per algorithm, RRSIGs made per second over distinct A RRsets
(a miss storm of new answers: every one a private-key operation), and the
signature cache's hit rate cost for an RRset signed before.
"""

from __future__ import annotations

import time

from geodns.dnssec import keys
from geodns.dnssec.cache import SignatureCache

OWNER = b"\x03www\x04gslb\x07example\x04test\x00"


def rate(algorithm: int, seconds: float = 2.0) -> tuple[float, float]:
    key = keys.generate("gslb.example.test", algorithm)
    signers = [key.signer()]
    cache = SignatureCache(max_entries=10_000_000)
    now, n, start = 1_800_000_000, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            n += 1
            cache.rrsigs(signers, OWNER, 1, 30, [n.to_bytes(4, "big")], 4, now)
    made = n / (time.perf_counter() - start)
    start, hits = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 2:
        for i in range(1, 201):
            cache.rrsigs(signers, OWNER, 1, 30, [i.to_bytes(4, "big")], 4, now)
            hits += 1
    return made, hits / (time.perf_counter() - start)


if __name__ == "__main__":
    print(f"{'algorithm':<12}{'new RRSIGs/s (1 core)':>24}{'cached RRSIG lookups/s':>26}")
    for algorithm in (13, 15):
        made, hit = rate(algorithm)
        print(f"{algorithm:<12}{made:>24,.0f}{hit:>26,.0f}")
