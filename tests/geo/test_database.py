"""GeoDatabase over small mmdb files in each schema the server reads."""

from __future__ import annotations

import ipaddress
import os

import pytest

from geodns.geo import GeoDatabase, GeoDatabaseError, Location

from .mmdb_files import write_city_db, write_country_db, write_dbip_flat_db

LONDON = dict(lat=51.5143, lon=-0.0912, country="GB", continent="EU", subdivision="ENG", city="London")
PARIS = dict(lat=48.8566, lon=2.3522, country="FR", continent="EU", subdivision="IDF", city="Paris")
GB = dict(lat=54.0, lon=-2.0, country="GB", continent="EU")
CALIFORNIA = dict(lat=37.751, lon=-122.42, country="US", continent="NA", subdivision="CA", city="San Francisco")
BERLIN = dict(lat=52.52, lon=13.405, country="DE", continent="EU", subdivision="DE-BE")

CITY = {
    "81.2.0.0/16": GB,
    "81.2.69.0/24": LONDON,
    "8.8.8.0/24": CALIFORNIA,
    "2a02:db8::/32": BERLIN,
}


@pytest.fixture
def city6(tmp_path):
    db = GeoDatabase(str(write_city_db(tmp_path / "city6.mmdb", CITY)))
    yield db
    db.close()


@pytest.fixture
def city4(tmp_path):
    v4 = {k: v for k, v in CITY.items() if ":" not in k}
    db = GeoDatabase(str(write_city_db(tmp_path / "city4.mmdb", v4, ip_version=4)))
    yield db
    db.close()


def test_city_schema_location(city6):
    location, prefix = city6.lookup("81.2.69.160")
    assert location == Location(
        latitude=51.5143, longitude=-0.0912, continent="EU", country="GB",
        subdivision="GB-ENG", city="London", subdivision_name="Subdivision ENG",
    )
    assert prefix == 24
    assert city6.database_type == "GeoIP2-City"
    assert city6.ip_version == 6


def test_subdivision_code_joins_the_country(city6):
    assert city6.lookup("8.8.8.8")[0].subdivision == "US-CA"
    assert city6.lookup("2a02:db8::1")[0].subdivision == "DE-BE"
    assert city6.lookup("81.2.1.1")[0].subdivision is None


def test_ipv4_prefix_lengths_count_ipv4_bits_in_an_ipv6_database(city6):
    # IPv4 data lives under ::/96, but an IPv4 client's scope is an IPv4 prefix.
    assert city6.lookup("81.2.69.1")[1] == 24
    assert city6.lookup(ipaddress.ip_address("8.8.8.8"))[1] == 24
    # 81.2.1.1 is in the /16 outside the carved /24: the largest uniform block is 81.2.0.0/18.
    location, prefix = city6.lookup("81.2.1.1")
    assert (location.country, location.city, prefix) == ("GB", None, 18)
    assert ipaddress.ip_address("81.2.69.1") not in ipaddress.ip_network("81.2.1.1/18", strict=False)


def test_ipv6_lookup_and_prefix(city6):
    location, prefix = city6.lookup("2a02:db8:1234::1")
    assert (location.country, location.continent, prefix) == ("DE", "EU", 32)


def test_no_record_is_none_with_the_empty_blocks_prefix(city6):
    location, prefix = city6.lookup("10.0.0.1")
    assert location is None
    assert 0 < prefix <= 8  # the scope still covers only the empty block
    location, prefix = city6.lookup("2001:db8::1")
    assert location is None
    assert 0 < prefix <= 32


def test_ipv4_only_database(city4):
    assert city4.ip_version == 4
    location, prefix = city4.lookup("81.2.69.160")
    assert (location.city, prefix) == ("London", 24)
    assert city4.lookup("10.1.2.3")[0] is None
    # Nothing is known about IPv6 clients: no location, and a scope of /0 (shared by all).
    assert city4.lookup("2a02:db8::1") == (None, 0)


def test_country_schema(tmp_path):
    path = write_country_db(
        tmp_path / "country.mmdb",
        {"81.2.69.0/24": dict(country="GB", continent="EU"), "2a02:db8::/32": dict(country="DE", continent="EU"),
         "200.0.0.0/8": dict(country="BR")},
    )
    db = GeoDatabase(str(path))
    location, prefix = db.lookup("81.2.69.160")
    assert location == Location(None, None, "EU", "GB", None)
    assert not location.has_coordinates
    assert prefix == 24
    assert db.lookup("2a02:db8::5")[0].country == "DE"
    # A country record without a continent gets one from the country table.
    assert db.lookup("200.1.2.3")[0].continent == "SA"
    assert db.database_type == "GeoIP2-Country"


def test_dbip_flat_schema(tmp_path):
    path = write_dbip_flat_db(
        tmp_path / "flat.mmdb",
        {
            "81.2.69.0/24": dict(lat=51.5143, lon=-0.0912, country="GB", state="England", city="London"),
            "1.0.0.0/24": dict(lat=-33.49, lon=143.21, country="AU", state="New South Wales"),
            "2001:200::/32": dict(lat=35.69, lon=139.69, country="JP"),
        },
    )
    db = GeoDatabase(str(path))
    location, prefix = db.lookup("81.2.69.160")
    assert prefix == 24
    assert location.country == "GB"
    assert location.continent == "EU"  # the flat schema has no continent: derived from the country
    assert location.city == "London"
    assert location.subdivision_name == "England"
    assert location.subdivision is None  # no ISO 3166-2 code in the flat schema
    # float32 coordinates, close to what was written
    assert location.latitude == pytest.approx(51.5143, abs=1e-4)
    assert location.longitude == pytest.approx(-0.0912, abs=1e-4)
    au = db.lookup("1.0.0.1")[0]
    assert (au.continent, au.city) == ("OC", None)
    jp, prefix = db.lookup("2001:200::1")
    assert (jp.country, jp.continent, prefix) == ("JP", "AS", 32)
    assert db.lookup("9.9.9.9")[0] is None


def test_flat_schema_in_an_ipv4_only_database(tmp_path):
    path = write_dbip_flat_db(tmp_path / "flat4.mmdb", {"81.2.69.0/24": dict(lat=51.5, lon=-0.1, country="gb")}, ip_version=4)
    db = GeoDatabase(str(path))
    location, prefix = db.lookup("81.2.69.7")
    assert (location.country, location.continent, prefix) == ("GB", "EU", 24)
    assert db.lookup("::1") == (None, 0)


def test_one_record_is_one_key_and_one_location_object(tmp_path):
    path = write_city_db(tmp_path / "c.mmdb", {"81.2.69.0/24": LONDON, "81.2.70.0/24": LONDON, "81.2.71.0/24": PARIS})
    db = GeoDatabase(str(path))
    one, two = ipaddress.ip_address("81.2.69.1").packed, ipaddress.ip_address("81.2.69.200").packed
    record, prefix = db.find(one)
    assert (record, prefix) == db.find(two) and prefix == 24
    assert db.location(record, one) is db.location(record, two) is db.lookup("81.2.69.7")[0]
    # Another network at the same place: the same Location value (the answer cache keys by record).
    assert db.lookup("81.2.70.1")[0] == db.lookup("81.2.69.1")[0]
    assert db.find(ipaddress.ip_address("81.2.71.1").packed)[0] != record
    assert db.find(ipaddress.ip_address("9.9.9.9").packed) == (None, db.lookup("9.9.9.9")[1])


def test_changed_after_atomic_replace(tmp_path):
    path = tmp_path / "geo.mmdb"
    write_city_db(path, {"81.2.69.0/24": LONDON})
    db = GeoDatabase(str(path))
    assert not db.changed()
    write_city_db(path, {"81.2.69.0/24": BERLIN})  # written aside, renamed over the path
    assert db.changed()
    # The open reader keeps answering from the file it opened.
    assert db.lookup("81.2.69.1")[0].country == "GB"
    fresh = GeoDatabase(str(path))
    assert fresh.lookup("81.2.69.1")[0].country == "DE"
    assert not fresh.changed()


def test_changed_after_touch_but_not_while_the_file_is_missing(tmp_path):
    path = tmp_path / "geo.mmdb"
    write_city_db(path, {"81.2.69.0/24": LONDON})
    db = GeoDatabase(str(path))
    os.rename(path, tmp_path / "aside.mmdb")
    assert not db.changed()  # mid-replace: keep serving the one we have
    os.rename(tmp_path / "aside.mmdb", path)
    assert not db.changed()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert db.changed()


def test_open_errors(tmp_path):
    with pytest.raises(GeoDatabaseError, match="cannot open"):
        GeoDatabase(str(tmp_path / "missing.mmdb"))
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(GeoDatabaseError, match="cannot open"):
        GeoDatabase(str(junk))


def test_description_is_read(tmp_path):
    path = write_city_db(tmp_path / "c.mmdb", CITY, description="IP Geolocation by DB-IP: test")
    assert GeoDatabase(str(path)).description == "IP Geolocation by DB-IP: test"
