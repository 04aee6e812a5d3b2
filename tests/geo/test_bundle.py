"""The bundled GeoIP default in data/ places the documented clients."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from geodns.geo import GeoDatabase

BUNDLE = Path(__file__).resolve().parents[2] / "data" / "geoip-bundle.mmdb"


@pytest.fixture(scope="module")
def bundle():
    if BUNDLE.stat().st_size < 1_000_000:
        pytest.fail(f"{BUNDLE.name} looks like a Git LFS pointer, not the database")
    db = GeoDatabase(str(BUNDLE))
    yield db
    db.close()


def test_london_is_gb_in_europe(bundle):
    location, prefix = bundle.lookup("81.2.69.160")
    assert (location.country, location.continent) == ("GB", "EU")
    assert 49 < location.latitude < 59
    assert 8 <= prefix <= 32


def test_google_dns_is_california_in_the_west(bundle):
    location, prefix = bundle.lookup("8.8.8.8")
    assert location.subdivision == "US-CA"
    assert location.longitude < -115
    assert 8 <= prefix <= 32


def test_private_address_has_no_location(bundle):
    assert bundle.lookup("10.0.0.1")[0] is None


def test_ipv6_at_country_level(bundle):
    location, _ = bundle.lookup("2a00:1450:4009::1")
    assert location is not None and location.country is not None


def test_attribution_in_metadata(bundle):
    assert "IP Geolocation by DB-IP" in bundle.description
    assert bundle.ip_version == 6
    assert BUNDLE.stat().st_size <= 40 * 1024 * 1024


def test_ipv4_mapped_addresses_reach_the_ipv4_data(bundle):
    location, prefix = bundle.lookup("::ffff:81.2.69.160")
    assert location.country == "GB"
    assert prefix == 96 + bundle.lookup("81.2.69.160")[1]


def test_6to4_addresses_reach_the_ipv4_data(bundle):
    # 2002:5102:45a0::/48 embeds 81.2.69.160 (London). The bundle itself holds one US record
    # for 2002::/16; the reader locates 6to4 by the embedded IPv4 address, as gdnsd does.
    location, prefix = bundle.lookup("2002:5102:45a0::1")
    assert location.country == "GB"
    v4_location, v4_prefix = bundle.lookup("81.2.69.160")
    assert prefix == 16 + v4_prefix
    assert bundle.lookup(ipaddress.IPv6Address("2002:5102:45a0::1")) == (location, prefix)
