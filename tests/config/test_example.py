"""The shipped example zone loads into the model issue 2 describes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from geodns.config import load_zone_file, load_zones

from .helpers import EXAMPLE

ip = ipaddress.ip_address


def test_example_zone_loads_with_its_five_regions():
    zone = load_zone_file(EXAMPLE)
    assert zone.origin == "gslb.example.test"
    assert zone.ttl == 30
    expected = {
        "us-east": (38.9, -77.0, "192.0.2.10", "2001:db8::10"),
        "us-west": (45.6, -121.2, "192.0.2.20", "2001:db8::20"),
        "eu-west": (53.3, -6.3, "192.0.2.30", "2001:db8::30"),
        "ap-southeast": (1.35, 103.8, "192.0.2.40", "2001:db8::40"),
        "sa-east": (-23.5, -46.6, "192.0.2.50", "2001:db8::50"),
    }
    assert set(zone.regions) == set(expected)
    for name, (lat, lon, v4, v6) in expected.items():
        region = zone.regions[name]
        assert (region.latitude, region.longitude) == (lat, lon)
        assert [e.address for e in region.endpoints] == [ip(v4), ip(v6)]


def test_example_soa_nameservers_and_glue():
    zone = load_zone_file(EXAMPLE)
    assert zone.soa.mname == "ns1.gslb.example.test"
    assert zone.soa.rname == "hostmaster.gslb.example.test"
    assert (zone.soa.serial, zone.soa.minimum, zone.soa.ttl) == (2026112601, 60, 3600)
    assert [(ns.name, ns.glue) for ns in zone.nameservers] == [
        ("ns1.gslb.example.test", (ip("127.0.0.53"),)),
        ("ns2.gslb.example.test", (ip("127.0.0.54"),)),
    ]
    # Resolved relative to the zone file, so it works from any working directory.
    assert Path(zone.latency_table).resolve() == (EXAMPLE.parent.parent / "data" / "latency.yaml").resolve()


def test_example_www_is_geo_proximity_with_us_east_default():
    zone = load_zone_file(EXAMPLE)
    www = zone.nodes["www.gslb.example.test"]
    assert www.ttl == 30
    assert [s.kind for s in www.steered.chain] == ["healthy", "geo_proximity", "limit"]
    assert www.steered.chain[-1].params == 1
    assert www.steered.default == ("us-east",)
    assert www.steered.candidates == ("us-east", "us-west", "eu-west", "ap-southeast", "sa-east")


def test_example_shows_every_policy_and_record_type():
    zone = load_zone_file(EXAMPLE)
    kinds = {s.kind for n in zone.nodes.values() if n.steered for s in n.steered.chain}
    assert kinds >= {"healthy", "geo_proximity", "geolocation", "latency", "weighted", "failover", "limit"}
    types = {r.rtype for n in zone.nodes.values() for r in n.rrsets}
    assert types == {"A", "AAAA", "CNAME", "TXT", "MX", "SRV", "CAA", "NS"}
    assert "*.cdn.gslb.example.test" in zone.nodes
    wrr = zone.nodes["wrr.gslb.example.test"].steered
    assert wrr.chain[1].params == (("us-east", 3), ("us-west", 1), ("eu-west", 0))
    failover = zone.nodes["failover.gslb.example.test"].steered
    assert failover.failover_ttl == 10
    assert failover.chain[0].params == ("us-east", "us-west", "eu-west")


def test_example_big_txt_is_over_1500_bytes():
    zone = load_zone_file(EXAMPLE)
    (txt,) = zone.nodes["big.gslb.example.test"].rrsets
    assert txt.rtype == "TXT"
    assert sum(len(v.encode()) + 1 for v in txt.values) > 1500


def test_load_zones_on_the_zones_directory():
    zones = load_zones(EXAMPLE.parent)
    assert [z.origin for z in zones] == ["gslb.example.test"]
