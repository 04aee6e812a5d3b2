"""The C search-tree walk (`geodns.geo._tree`) against maxminddb's own lookups.

Every record size the format has (24, 28, 32 bits) and both tree kinds (IPv4
only, IPv6 with IPv4 under ::/96), written by mmdb-writer; then the bundled
database. `find` must give maxminddb's prefix, and the same record key exactly
when maxminddb finds the same record.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import maxminddb
import pytest
from mmdb_writer import MMDBWriter, TreeWriter
from netaddr import IPSet

from geodns.geo import GeoDatabase
from geodns.geo.database import location_from_fields, location_from_record

_tree = pytest.importorskip("geodns.geo._tree", reason="the C extension is not built (pip install -e .)")

BUNDLE = Path(__file__).resolve().parents[2] / "data" / "geoip-bundle.mmdb"


def _write(path: Path, ip_version: int, record_size: int, seed: int = 7) -> Path:
    """A database of 400 random networks, each its own record, written with `record_size`."""

    class SizedTreeWriter(TreeWriter):
        def _adjust_record_size(self) -> None:
            super()._adjust_record_size()
            self.record_size = record_size
            self.data_offset = self.record_size * 2 / 8 * self._node_counter

    rnd = random.Random(seed)
    writer = MMDBWriter(ip_version=ip_version, database_type="GeoIP2-City", ipv4_compatible=ip_version == 6)
    networks = []
    for i in range(400):
        if ip_version == 6 and i % 2:
            net = ipaddress.IPv6Network((0x2000 << 112 | rnd.getrandbits(100) << 16, rnd.randint(20, 48)), strict=False)
        else:
            net = ipaddress.IPv4Network((rnd.getrandbits(32), rnd.randint(8, 28)), strict=False)
        networks.append(net)
    for i, net in enumerate(sorted(networks, key=lambda n: n.prefixlen)):
        record = {
            "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
            "location": {"latitude": float(i % 90), "longitude": float(i % 180)},
            "city": {"names": {"en": f"City {i}"}},
        }
        writer.insert_network(IPSet([str(net)]), record)
    SizedTreeWriter(writer.tree, writer._build_meta(), writer.int_type, writer.float_type).write(str(path))
    return path


def _addresses(ip_version: int, count: int, seed: int = 11) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        if ip_version == 6 and i % 2:
            out.append(ipaddress.IPv6Address(0x2000 << 112 | rnd.getrandbits(113)).packed)
        else:
            out.append(ipaddress.IPv4Address(rnd.getrandbits(32)).packed)
    return out


def _agrees(path: Path, addresses: list[bytes]) -> None:
    addresses = addresses + [b"\x20\x02" + a[:4] + bytes(10) for a in addresses[:200] if len(a) == 4]
    db = GeoDatabase(str(path))
    reader = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    assert db._tree is not None, "the C walk is built but was not used"
    seen: dict[object, object] = {}
    located = 0
    for packed in addresses:
        text = str(ipaddress.ip_address(packed))
        if packed[:2] == b"\x20\x02":
            # 6to4: the embedded IPv4 address's record, 16 more prefix bits (the C walk does
            # it itself; the Python fallback by recursion, tests/geo/test_database.py).
            record, prefix = db.find(packed[2:6])
            assert db.find(packed) == (record, prefix + 16), text
            continue
        try:
            want, want_prefix = reader.get_with_prefix_len(text)
        except ValueError:  # an IPv6 address in an IPv4-only database
            want, want_prefix = None, 0
        record, prefix = db.find(packed)
        assert prefix == want_prefix, text
        assert (record is None) == (want is None), text
        if record is None:
            continue
        located += 1
        # One record key per distinct record, and the same record for one key.
        assert seen.setdefault(record, repr(want)) == repr(want), text
        assert db._tree.record(record) == want, text
        assert db.location(record, packed) == location_from_record(want), text
        assert db.lookup(text) == (location_from_record(want), want_prefix)
    assert located > 0


@pytest.mark.parametrize("record_size", [24, 28, 32])
@pytest.mark.parametrize("ip_version", [4, 6])
def test_walk_agrees_with_maxminddb(tmp_path, record_size, ip_version):
    path = _write(tmp_path / f"t{ip_version}-{record_size}.mmdb", ip_version, record_size)
    assert maxminddb.open_database(str(path)).metadata().record_size == record_size
    rnd = random.Random(3)
    # Random addresses, and addresses inside the written networks' neighbourhoods.
    addresses = _addresses(ip_version, 3000)
    reader = maxminddb.open_database(str(path))
    inside = []
    for packed in addresses:
        try:
            if reader.get(str(ipaddress.ip_address(packed))) is not None:
                inside.append(packed)
        except ValueError:
            pass
    for packed in inside[:200]:
        value = int.from_bytes(packed, "big") ^ rnd.getrandbits(8)
        inside.append(value.to_bytes(len(packed), "big"))
    _agrees(path, addresses + inside)


def test_walk_agrees_on_the_bundled_database():
    _agrees(BUNDLE, _addresses(6, 20000))


def test_a_tree_larger_than_its_buffer_is_refused():
    with pytest.raises(ValueError, match="larger than the file"):
        _tree.Tree(bytes(60), 11, 24, 6)
    with pytest.raises(ValueError, match="record size"):
        _tree.Tree(bytes(60), 1, 20, 6)
    tree = _tree.Tree(bytes(60), 10, 24, 4)  # all-zero nodes: every bit leads back to node 0
    assert tree.find(bytes(4)) == (None, 32)
    with pytest.raises(ValueError):
        tree.find(b"\x01\x02\x03")
    with pytest.raises(TypeError):
        tree.find("1.2.3.4")


def test_a_corrupt_data_section_raises_instead_of_crashing():
    # One node (24-bit records) whose both records point at data offset 0, then the
    # 16-byte separator, then data. node_count 1: value 1 + 16 + offset.
    node = (17).to_bytes(3, "big") * 2
    for data, why in [
        (bytes([0x20 | 0x07, 0xFF]), "pointer past the data section"),  # pointer, size 0, to 0x7FF
        (bytes([0x5F, 0x01]), "past the data section"),  # a 29+ byte string cut short
        (bytes([0xE1, 0x42, 0x61]), "past the data section"),  # a map whose key runs out
        (bytes([0x00, 0x0C]), "unknown data type"),  # extended type 19
        (bytes([0x20, 0x00]), "nested too deeply"),  # a pointer to itself
        (bytes([0x1F, 0x04, 0xFF, 0xFF, 0xFF]), "array longer"),  # an array of ~16M items
    ]:
        tree = _tree.Tree(node + bytes(16) + data, 1, 24, 4)
        value, _ = tree.find(bytes(4))
        assert value == 17
        with pytest.raises(ValueError, match=why):
            tree.record(value)
    with pytest.raises(ValueError, match="not a data pointer"):
        _tree.Tree(node + bytes(16) + b"\x40", 1, 24, 4).record(1)


def test_without_the_walk_lookups_decode_and_agree(tmp_path):
    """The pure-Python path (no C compiler at install) gives the same places and prefixes."""
    path = _write(tmp_path / "t.mmdb", 6, 24)
    fast = GeoDatabase(str(path))
    slow = GeoDatabase(str(path), walk=False)
    assert fast._tree is not None and slow._tree is None
    for packed in _addresses(6, 3000):
        record, prefix = slow.find(packed)
        assert prefix == fast.find(packed)[1]
        assert slow.location(record, packed) == fast.location(fast.find(packed)[0], packed)


def test_without_the_walk_an_unhashable_record_is_keyed_by_its_network(tmp_path):
    """A foreign record whose place cannot be a dict key (a list for a latitude) gets its
    network as key: one key per network, never shared with another record's network."""
    writer = MMDBWriter(ip_version=6, database_type="odd", ipv4_compatible=True)
    for cidr, country in (("81.2.69.0/24", "GB"), ("81.2.70.0/24", "FR")):
        writer.insert_network(IPSet([cidr]), {"country": {"iso_code": country}, "location": {"latitude": [1], "longitude": 2.0}})
    writer.to_db_file(str(tmp_path / "odd.mmdb"))
    db = GeoDatabase(str(tmp_path / "odd.mmdb"), walk=False)
    one, same, other = (ipaddress.ip_address(a).packed for a in ("81.2.69.1", "81.2.69.200", "81.2.70.1"))
    assert db.find(one) == db.find(same)
    assert db.find(one)[0] != db.find(other)[0]
    assert db.location(db.find(one)[0], one).country == "GB"
    assert db.location(db.find(other)[0], other).country == "FR"


ODD_RECORDS = [
    # The plain GeoIP2 City shape, and every way a record can leave it.
    {"continent": {"code": "EU", "names": {"en": "Europe"}}, "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
     "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}, {"iso_code": "X"}],
     "location": {"latitude": 51.5, "longitude": -0.12, "accuracy_radius": 50}, "city": {"names": {"en": "London", "de": "London"}},
     "postal": {"code": "E1"}, "registered_country": {"iso_code": "GB"}},
    {"country": {"iso_code": "US"}, "location": {"latitude": 40.0, "longitude": -74.0}},  # continent from the country
    {"registered_country": {"iso_code": "FR"}, "location": {"latitude": 48.8, "longitude": 2.3}},  # no country
    {"country": {}, "registered_country": {"iso_code": "DE"}},  # an empty country
    {"country": {"names": {"en": "Nowhere"}}, "location": {"latitude": 1.0, "longitude": 2.0}},  # no iso_code
    {"country": {"iso_code": "BR"}, "subdivisions": []},
    {"country": {"iso_code": "BR"}, "subdivisions": [{"names": {"en": "São Paulo"}}]},  # a name, no code
    {"country": {"iso_code": "BR"}, "subdivisions": ["SP"]},
    {"country": {"iso_code": "CA"}, "location": {"latitude": 100.5, "longitude": 10.0}},  # out of range
    {"country": {"iso_code": "CA"}, "location": {"latitude": float("nan"), "longitude": 10.0}},
    {"country": {"iso_code": "CA"}, "location": {"latitude": 45.0}},  # half a coordinate
    {"country": {"iso_code": "CA"}, "location": {"latitude": 45, "longitude": -75}},  # integers
    {"country": {"iso_code": "CA"}, "location": [45.0, -75.0]},
    {"country": {"iso_code": "CA"}, "continent": "NA"},
    {"country": {"iso_code": "CA"}, "continent": {"code": 7}},
    {"country": {"iso_code": 124}},
    {"country": "CA"},
    {"country": {"iso_code": ""}, "location": {"latitude": 1.0, "longitude": 1.0}},
    {"country": {"iso_code": "JP"}, "city": {"names": {"ja": "東京"}}},
    {"country": {"iso_code": "JP"}, "city": {"geoname_id": 1850147}},
    {"country": {"iso_code": "JP"}, "city": {"names": {"en": 5}}},
    {"country": {"iso_code": "JP"}, "city": "Tokyo"},
    {"country": {"iso_code": "JP"}, "subdivisions": [{"iso_code": "13", "names": ["Tokyo"]}]},
    {"country_code": "gb", "latitude": 51.5, "longitude": -0.1, "city": "London", "state1": "England"},  # DB-IP flat
    {"location": {"latitude": 1.0, "longitude": 1.0}},  # nothing but coordinates
    {},
]


def test_place_reads_exactly_what_location_from_record_reads(tmp_path):
    """`place` answers only where it cannot differ from the general path, and then agrees."""
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    for i, record in enumerate(ODD_RECORDS):
        writer.insert_network(IPSet([f"10.0.{i}.0/24"]), record)
    path = tmp_path / "odd.mmdb"
    writer.to_db_file(str(path))
    db = GeoDatabase(str(path))
    reader = maxminddb.open_database(str(path))
    read_in_place = 0
    for i in range(len(ODD_RECORDS)):
        packed = ipaddress.ip_address(f"10.0.{i}.1").packed
        record, _ = db.find(packed)
        want = reader.get(f"10.0.{i}.1")
        expected = location_from_record(want) if want else None
        fields = db._tree.place(record)
        if fields is not None:
            read_in_place += 1
            assert location_from_fields(*fields) == expected, want
        assert db.location(record, packed) == expected, want
    assert read_in_place >= 6  # the plain ones, not only fallbacks


def test_place_covers_the_bundled_database():
    db = GeoDatabase(str(BUNDLE))
    reader = maxminddb.open_database(str(BUNDLE))
    seen, in_place = set(), 0
    for packed in _addresses(6, 20000):
        record, _ = db.find(packed)
        if record is None or record in seen:
            continue
        seen.add(record)
        fields = db._tree.place(record)
        want = location_from_record(reader.get(str(ipaddress.ip_address(packed))))
        assert fields is None or location_from_fields(*fields) == want
        in_place += fields is not None
    assert len(seen) > 100
    assert in_place == len(seen)  # every DB-IP record has the plain shape


def test_place_never_crashes_on_a_corrupt_data_section():
    node = (17).to_bytes(3, "big") * 2
    for data in (
        bytes([0x20 | 0x07, 0xFF]), bytes([0x5F, 0x01]), bytes([0xE1, 0x42, 0x61]), bytes([0x00, 0x0C]),
        bytes([0x20, 0x00]), bytes([0x1F, 0x04, 0xFF, 0xFF, 0xFF]),
        bytes([0xE1, 0x47]) + b"country" + bytes([0xE1, 0x48]) + b"iso_code" + bytes([0x5F]),  # cut short
        bytes([0xE1, 0x47]) + b"country" + bytes([0x20, 0x00]),  # a value pointing back at the record
    ):
        tree = _tree.Tree(node + bytes(16) + data, 1, 24, 4)
        value, _ = tree.find(bytes(4))
        try:
            fields = tree.place(value)
        except ValueError:
            continue
        # Reading only what it needs, place may get through a record that record() refuses
        # as a whole (a loop elsewhere in it); it still answers a well-formed tuple or None.
        assert fields is None or (len(fields) == 7 and location_from_fields(*fields) is None)


def test_source_is_the_opened_file_even_after_the_path_names_another(tmp_path):
    """Workers open `GeoDatabase.source` (the parent's descriptor): replacing the file at the
    path, with another database or with junk, does not change what it opens."""
    path = _write(tmp_path / "a.mmdb", 6, 24, seed=1)
    db = GeoDatabase(str(path))
    assert db.source is not None and db.source.startswith("/proc/")
    packed = _addresses(6, 1)[0]
    before = db.find(packed)
    other = _write(tmp_path / "b.mmdb", 6, 24, seed=2)
    other.replace(path)
    again = GeoDatabase(db.source)
    assert again.find(packed) == before and again.location(*before[:1], packed) == db.location(*before[:1], packed)
    (tmp_path / "junk").write_bytes(b"junk" * 100)
    (tmp_path / "junk").replace(path)
    assert GeoDatabase(db.source).find(packed) == before
