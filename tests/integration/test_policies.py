"""Steering policies of the example zone, as a client sees them over the wire."""

from __future__ import annotations

import collections
import socket

import dns.message
import dns.rcode
import pytest
from dnsclient import addresses, ask, fqdn, query

REGION_OF = {
    "192.0.2.10": "us-east",
    "192.0.2.20": "us-west",
    "192.0.2.30": "eu-west",
    "2001:db8::10": "us-east",
    "2001:db8::20": "us-west",
    "2001:db8::30": "eu-west",
}


def tally(server, name: str, rdtype: str, count: int) -> collections.Counter:
    """Ask `count` times over one UDP socket; count the regions answered."""
    seen: collections.Counter = collections.Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(count):
            q = query(fqdn(name), rdtype, qid=i)
            s.sendto(q.to_wire(), (server.host, server.port))
            while True:
                r = dns.message.from_wire(s.recv(4096))
                if r.id == i:
                    break
            assert r.rcode() == dns.rcode.NOERROR
            found = addresses(r, rdtype)
            assert len(found) == 1, found
            seen[REGION_OF[found[0]]] += 1
    return seen


@pytest.mark.parametrize("rdtype", ["A", "AAAA"])
def test_weighted_round_robin_is_close_to_3_to_1(example_server, rdtype):
    seen = tally(example_server, "wrr", rdtype, 400)
    assert seen["eu-west"] == 0, "weight 0 is a standby, never chosen while the others are up"
    assert sum(seen.values()) == 400
    share = seen["us-east"] / 400
    assert 0.68 <= share <= 0.82, f"us-east share {share:.2f} (3:1 is 0.75): {dict(seen)}"
    assert seen["us-west"] > 0


def test_failover_answers_the_first_healthy_region(example_server):
    for rdtype, expected in (("A", "192.0.2.10"), ("AAAA", "2001:db8::10")):
        for subnet in (None, "81.2.69.0/24", "8.8.8.0/24"):
            r = ask(example_server, fqdn("failover"), rdtype, ecs=subnet)
            assert addresses(r, rdtype) == [expected]
            assert r.answer[0].ttl == 30, "not degraded: the zone TTL, not failover_ttl"


def test_multi_value_answers_the_two_nearest(example_server):
    assert addresses(ask(example_server, fqdn("multi"), "A", ecs="81.2.69.0/24")) == [
        "192.0.2.10",
        "192.0.2.30",
    ]
    assert addresses(ask(example_server, fqdn("multi"), "A", ecs="8.8.8.0/24")) == [
        "192.0.2.10",
        "192.0.2.20",
    ]
    assert addresses(ask(example_server, fqdn("multi"), "A")) == ["192.0.2.10", "192.0.2.20"], (
        "the default pair"
    )


@pytest.mark.parametrize(
    "subnet,expected",
    [
        ("81.2.69.0/24", "192.0.2.30"),
        ("8.8.8.0/24", "192.0.2.20"),
        ("2404:6800:4003::/48", "192.0.2.40"),
        ("2800:3f0:4001::/48", "192.0.2.50"),
        ("2001:4860:4860::/48", "192.0.2.10"),  # Montreal: nearer Washington than Oregon
        ("127.0.0.0/8", "192.0.2.10"),
    ],
)
def test_www_geo_proximity_across_regions(example_server, subnet, expected):
    assert addresses(ask(example_server, fqdn("www"), "A", ecs=subnet)) == [expected]
