"""Scope narrowing: an answer's ECS scope never spans the edge of a CIDR rule."""

from __future__ import annotations

import ipaddress
import random

import pytest

from geodns.dns.snapshot import narrow

from .helpers import ip, net


def nets(*cidrs: str):
    return tuple(sorted((net(c) for c in cidrs), key=lambda n: -n.prefixlen))


RULES = nets("198.51.100.0/24", "198.51.100.128/25", "10.0.0.0/8")


@pytest.mark.parametrize(
    ("address", "prefix", "expected"),
    [
        ("198.51.100.7", 16, (25, True)),  # inside the /24, beside its /25: the scope is the other /25
        ("198.51.100.200", 16, (25, True)),  # inside the more specific /25
        ("198.51.100.7", 28, (28, True)),  # a longer GeoIP prefix stays
        ("198.51.101.7", 16, (24, False)),  # the sibling /24: a /16 would cover the rule
        ("198.51.0.1", 16, (18, False)),  # the rule lies in 198.51.64.0/18, away from this /18
        ("203.0.113.9", 24, (24, False)),  # disjoint from every rule: unchanged
        ("10.1.2.3", 0, (8, True)),  # no GeoIP data: at least the rule
        ("11.0.0.1", 0, (8, False)),  # ... or the largest block that avoids it
    ],
)
def test_narrow_cases(address, prefix, expected):
    assert narrow(ip(address), prefix, RULES) == expected


def test_no_rules_leaves_the_prefix():
    assert narrow(ip("192.0.2.1"), 20, ()) == (20, False)


def test_ipv6():
    rules = nets("2001:db8:1::/48")
    assert narrow(ip("2001:db8:1::5"), 32, rules) == (48, True)
    assert narrow(ip("2001:db8:2::5"), 32, rules) == (47, False)
    assert narrow(ip("2001:db9::1"), 32, rules) == (32, False)


@pytest.mark.parametrize("seed", range(3))
def test_scope_is_inside_or_outside_every_rule(seed):
    rng = random.Random(seed)
    rules = nets(*{str(ipaddress.ip_network((rng.getrandbits(32), rng.randint(8, 30)), strict=False)) for _ in range(8)})
    for _ in range(300):
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        prefix = rng.randint(0, 32)
        narrowed, inside = narrow(address, prefix, rules)
        assert narrowed >= prefix
        scope = ipaddress.ip_network((address, narrowed), strict=False)
        for rule in rules:
            assert scope.subnet_of(rule) or not scope.overlaps(rule), (address, prefix, scope, rule)
        assert inside == any(address in r for r in rules)
