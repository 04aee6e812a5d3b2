#!/usr/bin/env python3
"""What the `latency` step costs per new place, beside `geo_proximity`: `answer()` in process
(no sockets), every query an ECS subnet from a new /24, each variant on a fresh snapshot
(empty answer cache: a miss storm).

    python3 bench/latency.py                  # 20,000 queries, 10,000 measured networks
    python3 bench/latency.py --queries 50000 --measured 10000

Variants (the example zone's names):
  www  geo_proximity            [healthy, geo_proximity, limit 1]
  fast table only               [healthy, latency, geo_proximity, limit 1], no measurement
  fast measured, client not     the same with 10,000 networks measured, none of them the client's
  fast measured, client is      the same, every client's /24 measured (three regions ranked)

Rounds alternate the variants and keep each one's best, so that other load on the machine
shows as noise in every row, not as a difference between rows. Prints a table.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dnslib import EDNS0, DNSRecord, EDNSOption  # noqa: E402

from geodns.control.controller import Controller  # noqa: E402
from geodns.dns.answer import answer  # noqa: E402
from geodns.dns.resolve import steer  # noqa: E402
from geodns.dns.stats import Stats  # noqa: E402
from geodns.steer import Client, Context  # noqa: E402
from geodns.steer.geo_proximity import geo_proximity  # noqa: E402
from geodns.steer.latency import latency  # noqa: E402
from geodns.steer.measured import Measured, network_key  # noqa: E402

REGIONS = ("eu-west", "us-east", "us-west")


def queries(name: str, networks: list[int]) -> list[bytes]:
    out = []
    for i, net in enumerate(networks):
        q = DNSRecord.question(name, "A")
        q.header.id = i & 0xFFFF
        ecs = b"\x00\x01\x18\x00" + (net << 8).to_bytes(4, "big")[:3]
        q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(8, ecs)]))
        out.append(q.pack())
    return out


def measured(networks: list[int], rng: random.Random) -> Measured:
    rows = {}
    for net in networks:
        rtts = sorted((round(rng.uniform(5, 250), 1), r) for r in REGIONS)
        rows[network_key(4, net << 8)] = tuple((r, rtt) for rtt, r in rtts)
    return Measured(rows, "10% or 5 ms")


def run(controller: Controller, wire: list[bytes], ranking: Measured | None) -> tuple[float, int]:
    """Seconds per query, and how many were answer-cache misses (a steering run each)."""
    controller.set_measured(ranking)
    controller.set_utilisation({"bench": float(time.monotonic())})  # a new snapshot: an empty cache
    snap = controller.snapshot
    stats = Stats()
    started = time.perf_counter()
    now = time.time()
    for data in wire:
        answer(snap, data, "127.0.0.1", now, True, stats)
    return (time.perf_counter() - started) / len(wire), stats.cache_misses


def steering(controller: Controller, name: str, nets: list[int], ranking: Measured | None) -> float:
    """Seconds per steering run of `name` for a new client (the chain and its memo, no cache)."""
    controller.set_measured(ranking)
    snap = controller.snapshot
    czone = snap.find_zone(name)
    node = czone.nodes[name]
    geo = snap.geo
    clients = []
    for net in nets:
        address = ipaddress.IPv4Address(net << 8 | 1)
        location, prefix = geo.lookup(address)
        clients.append(Client(address, location, prefix, "ECS"))
    started = time.perf_counter()
    now = time.time()
    for client in clients:
        steer(snap, czone, node, name, 1, client, now)
    return (time.perf_counter() - started) / len(clients)


def steps(controller: Controller, nets: list[int], ranking: Measured | None, kind: str) -> float:
    """Seconds per call of one step alone (`latency` or `geo_proximity`), for new clients."""
    controller.set_measured(ranking)
    snap = controller.snapshot
    czone = snap.find_zone("fast.gslb.example.test")
    table = czone.latency
    geo = snap.geo
    run_step = latency if kind == "latency" else geo_proximity
    candidates = tuple(czone.regions)
    contexts = []
    for net in nets:
        address = ipaddress.IPv4Address(net << 8 | 1)
        location, prefix = geo.lookup(address)
        contexts.append(Context(client=Client(address, location, prefix, "ECS"), regions=czone.regions,
                                region_up=czone.region_up, verdicts={}, family=4, default=("us-east",),
                                latency=table, measured=snap.measured, explain=False))
    params = (0.0, None) if kind == "latency" else None
    started = time.perf_counter()
    for ctx in contexts:
        run_step(candidates, ctx, params)
    return (time.perf_counter() - started) / len(contexts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--measured", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(18)
    # Public /24s (first octet 1-223, not 10, 127), one query each.
    pool: set[int] = set()
    while len(pool) < args.queries + args.measured:
        a = rng.randrange(1, 224)
        if a not in (10, 127):
            pool.add(a << 16 | rng.randrange(65536))
    nets = list(pool)
    clients, others = nets[: args.queries], nets[args.queries :]
    controller = Controller(str(REPO / "zones"), str(REPO / "data" / "geoip-bundle.mmdb"))
    controller.start()
    variants = [
        ("www  geo_proximity", queries("www.gslb.example.test", clients), None),
        ("fast table only", queries("fast.gslb.example.test", clients), None),
        ("fast measured, client not", queries("fast.gslb.example.test", clients), measured(others, rng)),
        ("fast measured, client is", queries("fast.gslb.example.test", clients), measured(clients, rng)),
    ]
    best = {label: (float("inf"), 0) for label, _, _ in variants}
    for _ in range(args.rounds):
        for label, wire, ranking in variants:
            best[label] = min(best[label], run(controller, wire, ranking))
    base = best[variants[0][0]][0]
    print(f"{args.queries:,} queries, each from a new /24 (ECS), answer() in process, a fresh cache, best of {args.rounds} rounds")
    print(f"{'variant':<28} {'us/query':>9} {'vs www':>7} {'misses':>7} {'us/miss':>8}")
    for label, _, _ in variants:
        per, misses = best[label]
        print(f"{label:<28} {per * 1e6:>9.1f} {per / base:>6.2f}x {misses:>7} {per * len(clients) / max(1, misses) * 1e6:>8.1f}")
    runs = [
        ("www  geo_proximity", "www.gslb.example.test", None),
        ("fast table only", "fast.gslb.example.test", None),
        ("fast measured, client not", "fast.gslb.example.test", variants[2][2]),
        ("fast measured, client is", "fast.gslb.example.test", variants[3][2]),
    ]
    steer_best = {label: float("inf") for label, _, _ in runs}
    for _ in range(args.rounds):
        for label, name, ranking in runs:
            steer_best[label] = min(steer_best[label], steering(controller, name, clients, ranking))
    base = steer_best[runs[0][0]]
    print()
    print("one steering run per new place (the chain with its memo, no answer cache)")
    print(f"{'variant':<28} {'us/run':>7} {'vs www':>7}")
    for label, _, _ in runs:
        print(f"{label:<28} {steer_best[label] * 1e6:>7.1f} {steer_best[label] / base:>6.2f}x")
    alone = [
        ("geo_proximity", None, "geo_proximity"),
        ("latency, table", None, "latency"),
        ("latency, measured (not it)", variants[2][2], "latency"),
        ("latency, measured (it)", variants[3][2], "latency"),
    ]
    step_best = {label: float("inf") for label, _, _ in alone}
    for _ in range(args.rounds):
        for label, ranking, kind in alone:
            step_best[label] = min(step_best[label], steps(controller, clients, ranking, kind))
    base = step_best["geo_proximity"]
    print()
    print("one step alone, five candidate regions, a new client each call")
    print(f"{'step':<28} {'us/call':>7} {'vs geo_proximity':>17}")
    for label, _, _ in alone:
        print(f"{label:<28} {step_best[label] * 1e6:>7.2f} {step_best[label] / base:>16.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
