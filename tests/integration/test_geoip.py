"""GeoIP from small databases the tests write, and reopening a replaced database without a restart."""

from __future__ import annotations

import errno

import dns.message
import pytest
from dnsclient import addresses, ask, ecs_of, fqdn, query
from netutil import wait_until

from .conftest import NET

try:
    from geo.mmdb_files import write_city_db, write_country_db, write_dbip_flat_db
except ImportError:  # run from the repository root as a package
    from tests.geo.mmdb_files import write_city_db, write_country_db, write_dbip_flat_db

SINGAPORE = dict(lat=1.29, lon=103.85, country="SG", continent="AS", city="Singapore")
DUBLIN = dict(lat=53.35, lon=-6.26, country="IE", continent="EU", city="Dublin")
SAO_PAULO = dict(
    lat=-23.55, lon=-46.63, country="BR", continent="SA", subdivision="SP", city="Sao Paulo"
)
PORTLAND = dict(
    lat=45.52, lon=-122.68, country="US", continent="NA", subdivision="OR", city="Portland"
)
SOURCE = f"{NET}.250"
"""The client's own address for tests without ECS; the test database places 127.0.2.0/24."""


def city_db(path, test_net: dict) -> None:
    write_city_db(
        path,
        {
            "203.0.113.0/24": test_net,
            "198.18.0.0/15": SAO_PAULO,
            "2001:db8:1::/48": DUBLIN,
            f"{NET}.0/24": PORTLAND,
        },
    )


@pytest.fixture(scope="module")
def small_geo_server(server_factory, tmp_path_factory):
    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    city_db(path, SINGAPORE)
    return server_factory(geoip=path)


@pytest.mark.parametrize(
    "subnet,rdtype,expected,scope",
    [
        ("203.0.113.0/24", "A", "192.0.2.40", 24),
        (
            "203.0.113.128/25",
            "A",
            "192.0.2.40",
            24,
        ),  # scope is the database network, not the source
        ("198.19.7.0/24", "A", "192.0.2.50", 15),
        ("2001:db8:1:2::/64", "AAAA", "2001:db8::30", 48),
    ],
)
def test_small_city_database_places_test_subnets(small_geo_server, subnet, rdtype, expected, scope):
    r = ask(small_geo_server, fqdn("www"), rdtype, ecs=subnet)
    assert addresses(r, rdtype) == [expected]
    assert ecs_of(r).scopelen == scope


def test_address_missing_from_the_database_gets_the_default(small_geo_server):
    assert addresses(ask(small_geo_server, fqdn("www"), "A", ecs="8.8.8.0/24")) == ["192.0.2.10"]


def from_source(server, source: str, q: dns.message.Message) -> dns.message.Message:
    """The response to `q` sent from the client address `source` (skip where it cannot be bound)."""
    try:
        return ask(server, q, source=source)
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise
        pytest.skip(f"cannot send from {source}")


def test_without_ecs_the_source_address_is_located(small_geo_server):
    r = from_source(small_geo_server, SOURCE, query(fqdn("www"), "A", qid=99))
    assert addresses(r) == ["192.0.2.20"], "127.0.2.0/24 is Portland in the test database: us-west"


def test_same_query_bytes_from_two_sources_are_steered_apart(small_geo_server):
    """The exact-query cache must not serve one source's steered answer to another."""
    q = query(fqdn("www"), "A", qid=7)
    for _ in range(3):
        for source, expected in ((SOURCE, ["192.0.2.20"]), ("127.0.0.1", ["192.0.2.10"])):
            assert addresses(from_source(small_geo_server, source, q)) == expected, source


def test_geolocation_rules_by_subdivision(small_geo_server):
    # NA-US-OR -> us-west; BR (SA, not CO/VE) -> sa-east
    assert addresses(ask(small_geo_server, fqdn("geo"), "A", ecs=f"{NET}.0/24")) == [
        "192.0.2.20"
    ]
    assert addresses(ask(small_geo_server, fqdn("geo"), "A", ecs="198.18.0.0/24")) == [
        "192.0.2.50"
    ]


def test_country_database(server_factory, tmp_path):
    path = write_country_db(
        tmp_path / "country.mmdb", {"203.0.113.0/24": dict(country="JP", continent="AS")}
    )
    server = server_factory(geoip=path)
    assert addresses(ask(server, fqdn("geo"), "A", ecs="203.0.113.0/24")) == ["192.0.2.40"]


def test_dbip_flat_database(server_factory, tmp_path):
    path = write_dbip_flat_db(
        tmp_path / "flat.mmdb",
        {
            "203.0.113.0/24": dict(
                lat=53.35, lon=-6.26, country="IE", state="Leinster", city="Dublin"
            )
        },
    )
    server = server_factory(geoip=path)
    assert addresses(ask(server, fqdn("www"), "A", ecs="203.0.113.0/24")) == ["192.0.2.30"]
    assert addresses(ask(server, fqdn("geo"), "A", ecs="203.0.113.0/24")) == ["192.0.2.30"]


def wait_for_answer(server, subnet: str, expected: str, seconds: float) -> None:
    wait_until(
        lambda: addresses(ask(server, fqdn("www"), "A", ecs=subnet)) == [expected],
        seconds,
        lambda: f"answers did not change after the GeoIP file was replaced:\n{server.log_text()[-2000:]}",
        step=0.1,
    )


def test_replaced_database_is_reopened_without_a_restart(server_factory, tmp_path):
    path = tmp_path / "city.mmdb"
    city_db(path, SINGAPORE)
    server = server_factory(geoip=path)
    pid = server.process.pid
    subnet = "203.0.113.0/24"
    for _ in range(3):  # warm the answer cache on the old database
        assert addresses(ask(server, fqdn("www"), "A", ecs=subnet)) == ["192.0.2.40"]
    city_db(path, DUBLIN)  # written to a temporary name and renamed over: atomic
    wait_for_answer(server, subnet, "192.0.2.30", 6)
    assert server.alive() and server.process.pid == pid
    # the other networks come from the new file too, and a second replacement is picked up as well
    assert addresses(ask(server, fqdn("www"), "AAAA", ecs="2001:db8:1::/48"), "AAAA") == [
        "2001:db8::30"
    ]
    city_db(path, SAO_PAULO)
    wait_for_answer(server, subnet, "192.0.2.50", 6)


def test_unreadable_replacement_keeps_the_old_database(server_factory, tmp_path):
    path = tmp_path / "city.mmdb"
    city_db(path, SINGAPORE)
    # With workers (the default), the node answers as soon as one is up; one still starting
    # when the junk arrives must open the parent's file (its descriptor), not the junk.
    server = server_factory(geoip=path)
    assert addresses(ask(server, fqdn("www"), "A", ecs="203.0.113.0/24")) == ["192.0.2.40"]
    junk = tmp_path / "junk.tmp"
    junk.write_bytes(b"this is not a MaxMind DB" * 100)
    junk.replace(path)
    # The watcher looks every second; it says when it refuses a file (and publishes nothing).
    wait_until(lambda: "replaced but unreadable" in server.log_text(), 10, server.log_text)
    assert server.alive(), server.log_text()
    assert addresses(ask(server, fqdn("www"), "A", ecs="203.0.113.0/24")) == ["192.0.2.40"]
    assert addresses(ask(server, fqdn("www"), "A", ecs="198.18.0.0/24")) == ["192.0.2.50"]
