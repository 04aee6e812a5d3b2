"""Corrupt GeoIP files at the C tree walk (`_tree.c`), bounded and seeded: a few seconds of what
tests/fuzz_long.py runs for an hour under AddressSanitizer (its `MmdbTarget` checks each file)."""

from __future__ import annotations

import random

import maxminddb
import pytest
from fuzz_long import ADDRESSES, MmdbTarget, base_databases, mutate_mmdb

pytest.importorskip("geodns.geo._tree", reason="the C extension is not built (pip install -e .)")

SEED = 20261204
FILES = 400


def test_base_databases_of_every_record_size_read_alike(tmp_path):
    """The 28- and 32-bit files are the 24-bit one rewritten: maxminddb reads the same records."""
    paths = {p.name: p for p in base_databases(tmp_path)}
    readers = {
        name: maxminddb.open_database(str(paths[name]))
        for name in ("city6.mmdb", "city6-28.mmdb", "city6-32.mmdb")
    }
    assert [r.metadata().record_size for r in readers.values()] == [24, 28, 32]
    found = 0
    for address in ADDRESSES:
        results = {name: r.get_with_prefix_len(address) for name, r in readers.items()}
        assert len({repr(v) for v in results.values()}) == 1, (address, results)
        found += results["city6.mmdb"][0] is not None
    assert found >= 4


def test_corrupt_files_never_crash_and_agree_with_maxminddb(tmp_path):
    target = MmdbTarget(tmp_path, SEED)
    rng = random.Random(SEED)
    for base in target.seeds():
        target.check(base)  # the well-formed files pass every check
    for _ in range(FILES):
        target.check(mutate_mmdb(rng, rng.choice(target.seeds())))
    # The checks ran on files the walk opened and maxminddb read, not only on refusals.
    counts = target.counts
    assert counts["tree"] > FILES // 3, counts
    assert counts["prefix"] > 1000 and counts["record"] > 100 and counts["place"] > 50, counts
