"""Corrupt GeoIP files: refused with GeoDatabaseError at open (every record is checked then),
and where a copy is trusted unchecked (a worker mapping the parent's), their bad records
located nowhere at lookup; never another exception, never a crash.

The three ways past that which fuzzing once found are pinned first (invalid
UTF-8 in the metadata, a record holding a map where a code belongs, an absurd
record_size); then a fixed-seed fuzz mutates copies of the bundled database
(metadata, upper tree nodes, the records real addresses reach, truncation) and
looks addresses up in each, with the C walk and with maxminddb's decoder. The
fuzz runs in a child process, so that a crash is a failed test, not a dead run.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import maxminddb
import pytest

from geodns.geo import GeoDatabase, GeoDatabaseError
from geodns.geo.database import _check_metadata, location_from_record
from tests.geo.mmdb_files import write_city_db

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "data" / "geoip-bundle.mmdb"
MARKER = b"\xab\xcd\xefMaxMind.com"
LONDON = "81.2.69.160"


def _metadata_start(data: bytes) -> int:
    return data.rindex(MARKER) + len(MARKER)


def _opened_or_refused(path: Path, walk: bool = True) -> GeoDatabase | None:
    try:
        return GeoDatabase(str(path), walk=walk)
    except GeoDatabaseError:
        return None


def test_invalid_utf8_in_the_metadata_is_refused(tmp_path: Path) -> None:
    data = BUNDLE.read_bytes()
    at = data.index(b"IP Geolocation", _metadata_start(data))
    bad = tmp_path / "utf8.mmdb"
    bad.write_bytes(data[:at] + b"\xff\xfe" + data[at + 2:])
    for walk in (True, False):
        with pytest.raises(GeoDatabaseError, match="utf8.mmdb: cannot open GeoIP database"):
            GeoDatabase(str(bad), walk=walk)


@pytest.mark.parametrize(("field", "value"), [
    (b"record_size", b"\xc4\xff\xff\xff\xff"),  # uint32 4294967295: OverflowError in the walk's constructor once
    (b"record_size", b"\xa1\x14"),  # 20
    (b"node_count", b"\xc4\x7f\xff\xff\xff"),  # a tree far larger than the file
    (b"ip_version", b"\xa1\x05"),
])
def test_absurd_metadata_is_refused(tmp_path: Path, field: bytes, value: bytes) -> None:
    data = BUNDLE.read_bytes()
    key = data.index(field, _metadata_start(data)) + len(field)
    size = 1 + (data[key] & 0x1F)  # the uint16/uint32 value after the key: control byte + payload
    bad = tmp_path / "meta.mmdb"
    bad.write_bytes(data[:key] + value + data[key + size:])
    for walk in (True, False):
        with pytest.raises(GeoDatabaseError, match="meta.mmdb: cannot open GeoIP database: ") as refused:
            GeoDatabase(str(bad), walk=walk)
        assert "/proc/" not in str(refused.value)  # the operator's file is named, not our copy


def test_metadata_the_walk_cannot_use_is_refused() -> None:
    # What maxminddb's reader lets through, our own check refuses (`_check_metadata`).
    class Meta:
        binary_format_major_version, record_size, ip_version, node_count = 2, 24, 6, 10
        database_type, build_epoch, description = "GeoIP2-City", 1_700_000_000, {"en": "x"}

    _check_metadata(Meta, bytes(100))
    for name, value, why in [("record_size", 2**32 - 1, "record_size 4294967295 is not 24, 28 or 32"),
                             ("node_count", 2**40, "does not fit the file"), ("ip_version", 5, "ip_version 5"),
                             ("build_epoch", 1e300, "is not a time"), ("description", {"en": {"x": 1}}, "map of strings"),
                             ("database_type", b"x", "not a string")]:
        odd = type("Odd", (Meta,), {name: value})
        with pytest.raises(ValueError, match=why):
            _check_metadata(odd, bytes(100))


def test_a_record_with_a_map_for_a_code_is_located_safely(tmp_path: Path) -> None:
    # What a corrupt file can decode to: maps where strings belong. No TypeError (an
    # unhashable dict used to reach the continent table), a place from what is sound.
    record = {"country": {"iso_code": {"x": 1}}, "continent": {"code": ["EU"]},
              "location": {"latitude": 51.5, "longitude": -0.1}, "subdivisions": [{"iso_code": {"y": 2}}]}
    location = location_from_record(record)
    assert location is not None and location.country is None and location.latitude == 51.5
    assert location_from_record({"country_code": {"GB": 1}, "city": ["x"], "latitude": 1.0, "longitude": 2.0}).country is None
    # And in a real file, through both decoders.
    path = write_city_db(tmp_path / "odd.mmdb", {"81.2.69.0/24": dict(lat=51.5, lon=-0.09, country="GB", continent="EU")})
    data = bytearray(path.read_bytes())
    at = data.index(b"\x42GB")  # the country's iso_code string, "GB": make it a map of one pair
    data[at:at + 3] = b"\xe1\x41a"  # a map with 1 pair, its key "a"... whose value is what follows
    path.write_bytes(bytes(data))
    for walk in (True, False):
        db = _opened_or_refused(path, walk)
        if db is not None:
            db.lookup(LONDON)  # located or not, never a TypeError


@pytest.mark.parametrize(("patch", "why"), [
    (lambda d: d.replace(b"\x46London", b"\x46Lond\xc0\x80", 1), "string is not UTF-8"),  # an overlong NUL
    (lambda d: d.replace(b"\x46London", b"\x46Lon\xed\xa0\x80", 1), "string is not UTF-8"),  # a surrogate
    (lambda d: d.replace(b"\x46London", b"\x5f\xff\xff\xffdon", 1), "past the data section"),  # 16 MB of string
    (lambda d: d.replace(b"\x46London", b"\x06London", 1), "unknown data type"),  # extended type 7 + ord("L")
    (lambda d: d.replace(b"\x46London", b"\x66London", 1), "double of the wrong size"),  # a 6-byte double
], ids=["overlong", "surrogate", "long-string", "bad-type", "bad-double"])
def test_a_corrupt_record_is_refused_at_open(tmp_path: Path, patch, why: str) -> None:
    path = write_city_db(tmp_path / "city.mmdb", {
        "81.2.69.0/24": dict(lat=51.5, lon=-0.09, country="GB", continent="EU", city="London"),
        "8.8.8.0/24": dict(lat=37.4, lon=-122.1, country="US", continent="NA", city="Mountain View"),
    })
    data = path.read_bytes()
    assert GeoDatabase(str(path)).lookup(LONDON)[0].city == "London"
    bad = patch(data)
    assert bad != data and len(bad) == len(data)
    path.write_bytes(bad)
    for walk in (True, False):
        with pytest.raises(GeoDatabaseError, match=why):
            GeoDatabase(str(path), walk=walk)


def test_a_search_tree_pointing_outside_or_a_dirty_separator_is_refused(tmp_path: Path) -> None:
    path = write_city_db(tmp_path / "city.mmdb", {"81.2.69.0/24": dict(lat=51.5, lon=-0.09, country="GB")}, ip_version=4)
    data = bytearray(path.read_bytes())
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
    tree_end = meta.node_count * meta.record_size // 4
    dirty = bytearray(data)
    dirty[tree_end + 3] = 1
    path.write_bytes(bytes(dirty))
    with pytest.raises(GeoDatabaseError, match="16 bytes after the search tree are not zero"):
        GeoDatabase(str(path))
    assert meta.record_size == 24
    outside = bytearray(data)
    outside[0:3] = (meta.node_count + 16 + len(data)).to_bytes(3, "big")  # node 0's left record
    path.write_bytes(bytes(outside))
    with pytest.raises(GeoDatabaseError, match="node 0 points past the data section"):
        GeoDatabase(str(path))


def _sealed_copy(data: bytes) -> int:
    """A memfd holding `data`, sealed as GeoDatabase seals its copies (what workers open)."""
    fd = os.memfd_create("mutant", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    return fd


def fuzz(seed: int, rounds: int, work: Path) -> dict[str, int]:
    """Mutate copies of the bundle `rounds` times; return how each kind of mutation ended.
    Any exception but GeoDatabaseError propagates (and fails the child process)."""
    rnd = random.Random(seed)
    base = BUNDLE.read_bytes()
    meta_at = _metadata_start(base)
    with maxminddb.open_database(str(BUNDLE)) as reader:
        meta = reader.metadata()
    tree_end = meta.node_count * meta.record_size // 4
    addresses = [LONDON, "8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2002:5102:45a0::1", "10.0.0.1", "::ffff:81.2.69.160"]
    addresses += [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(150)]
    addresses += [str(ipaddress.IPv6Address(0x2000 << 112 | rnd.getrandbits(115))) for _ in range(50)]
    packed = [ipaddress.ip_address(a).packed for a in addresses]
    # Where the records real addresses reach start: corrupting them is what lookups see.
    clean = GeoDatabase(str(BUNDLE))
    record_offsets = sorted({tree_end + 16 + (v - meta.node_count - 16) for v, _ in map(clean.find, packed) if v is not None})
    clean.close()
    # One file, patched in place each round and restored after (cheaper than 33 MB writes).
    path = work / "mutant.mmdb"
    path.write_bytes(base)
    fd = os.open(path, os.O_RDWR)
    outcomes: dict[str, int] = {}
    try:
        for _ in range(rounds):
            kind = rnd.choice(["metadata", "tree", "record", "record", "truncate", "garbage-tail"])
            patches: list[tuple[int, bytes]] = []
            length = len(base)
            if kind == "metadata":
                patches = [(rnd.randrange(meta_at, len(base)), bytes([rnd.randrange(256)])) for _ in range(rnd.randint(1, 4))]
            elif kind == "tree":
                top = min(tree_end, 6000 * meta.record_size // 4)  # the upper nodes, which every lookup walks
                patches = [(rnd.randrange(0, top), bytes([rnd.randrange(256)])) for _ in range(rnd.randint(1, 8))]
            elif kind == "record":
                for _ in range(rnd.randint(1, 6)):
                    at = rnd.choice(record_offsets) + rnd.randrange(0, 48)
                    patches.append((at, bytes([rnd.randrange(256) if rnd.random() < 0.7 else base[at] ^ (1 << rnd.randrange(8))])))
            elif kind == "truncate":
                length = rnd.choice([rnd.randrange(0, 64), rnd.randrange(0, tree_end), rnd.randrange(tree_end, len(base))])
            else:
                at = rnd.randrange(tree_end, meta_at - len(MARKER))
                patches = [(at, rnd.randbytes(rnd.randrange(1, 4096)))]
                length = at + len(patches[0][1])
            for at, data in patches:
                os.pwrite(fd, data, at)
            os.ftruncate(fd, length)
            mutant = bytearray(base[:length])
            for at, data in patches:
                mutant[at:at + len(data)] = data[: max(0, length - at)]
            # The file as the node opens it (checked whole), then as a worker opens the
            # parent's sealed copy (trusted, not checked again): lookups must hold on their own.
            sealed = _sealed_copy(bytes(mutant))
            try:
                # (Checked, both readers would refuse alike: the whole-file check is the same.)
                for opened, how, walks in ((path, "", (True,)), (Path(f"/proc/self/fd/{sealed}"), "unchecked ", (True, False))):
                    for walk in walks:
                        db = _opened_or_refused(opened, walk)
                        outcome = f"{how}{kind} {'refused' if db is None else 'served'}"
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                        if db is None:
                            continue
                        for address, raw in zip(addresses, packed, strict=True):
                            db.lookup(address)
                            record, _ = db.find(raw)
                            db.location(record, raw)
                        db.close()
            finally:
                os.close(sealed)
            for at, data in patches:
                os.pwrite(fd, base[at:at + len(data)], at)
            if length < len(base):
                os.pwrite(fd, base[length:], length)
    finally:
        os.close(fd)
    return outcomes


@pytest.mark.slow
def test_fuzzed_copies_of_the_bundle_are_refused_or_served(tmp_path: Path) -> None:
    seed, rounds = 20261204, 30
    code = f"from pathlib import Path; from tests.geo.test_corrupt import fuzz; print(fuzz({seed}, {rounds}, Path({str(tmp_path)!r})))"
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, f"exit {out.returncode}:\n{out.stdout}\n{out.stderr[-3000:]}"
    outcomes = eval(out.stdout.strip().splitlines()[-1])  # the dict fuzz() printed
    print(f"{rounds} mutants in {time.monotonic() - started:.1f}s: {outcomes}")
    assert sum(outcomes.values()) == 3 * rounds
    checked = {k: n for k, n in outcomes.items() if not k.startswith("unchecked")}
    assert sum(n for k, n in checked.items() if k.endswith("refused")) >= rounds * 3 // 4  # most are caught at open
    assert sum(n for k, n in outcomes.items() if k.startswith("unchecked") and k.endswith("served")) >= rounds // 2
