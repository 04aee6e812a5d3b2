"""Plain records: names, wildcards, rdata given as strings or mappings, TTLs."""

from __future__ import annotations

import ipaddress

import pytest

from .helpers import line_of, load, zone_text


def node(text: str, name: str):
    return load(text).nodes[name]


def rrset(text: str, name: str, rtype: str):
    return next(r for r in node(text, name).rrsets if r.rtype == rtype)


def test_relative_absolute_and_apex_names():
    text = zone_text(
        """\
        "@": {TXT: [apex]}
        www: {A: [192.0.2.1]}
        Mail.Example.Test.: {A: [192.0.2.2]}
        deep.sub: {A: [192.0.2.3]}
        """
    )
    zone = load(text)
    assert set(zone.nodes) == {"example.test", "www.example.test", "mail.example.test", "deep.sub.example.test"}
    assert zone.nodes["deep.sub.example.test"].line == line_of(text, "deep.sub")


def test_targets_are_relative_unless_they_end_with_a_dot():
    text = zone_text("app: {CNAME: www}\nold: {CNAME: www.example.net.}\n")
    assert rrset(text, "app.example.test", "CNAME").values == ("www.example.test",)
    assert rrset(text, "old.example.test", "CNAME").values == ("www.example.net",)


def test_wildcard_names():
    text = zone_text('"*": {A: [192.0.2.9]}\n"*.cdn": {A: [192.0.2.99]}\n')
    zone = load(text)
    assert {"*.example.test", "*.cdn.example.test"} <= set(zone.nodes)
    assert rrset(text, "*.cdn.example.test", "A").values == (ipaddress.ip_address("192.0.2.99"),)


def test_a_steered_wildcard():
    text = zone_text('"*.geo":\n  steer: [geo_proximity]\n')
    assert node(text, "*.geo.example.test").steered.candidates == ("eu-west", "us-east")


@pytest.mark.parametrize(
    "mx",
    ['["10 mail"]', "[{preference: 10, exchange: mail}]", '"10 mail"', '["10 mail.example.test."]'],
)
def test_mx_as_string_or_mapping(mx):
    text = zone_text(f'"@":\n  MX: {mx}\n')
    assert rrset(text, "example.test", "MX").values == ((10, "mail.example.test"),)


@pytest.mark.parametrize(
    "srv",
    ['["10 60 5060 sip"]', "[{priority: 10, weight: 60, port: 5060, target: sip}]"],
)
def test_srv_as_string_or_mapping(srv):
    text = zone_text(f'"_sip._tcp":\n  SRV: {srv}\n')
    assert rrset(text, "_sip._tcp.example.test", "SRV").values == ((10, 60, 5060, "sip.example.test"),)


@pytest.mark.parametrize(
    "caa",
    ['["0 issue letsencrypt.org"]', '[\'0 issue "letsencrypt.org"\']', "[{flags: 0, tag: issue, value: letsencrypt.org}]"],
)
def test_caa_as_string_or_mapping(caa):
    text = zone_text(f'"@":\n  CAA: {caa}\n')
    assert rrset(text, "example.test", "CAA").values == ((0, "issue", "letsencrypt.org"),)


def test_txt_strings_and_numbers():
    text = zone_text('"@":\n  TXT: ["v=spf1 -all", 42, "x"]\nsingle:\n  TXT: one value\n')
    assert rrset(text, "example.test", "TXT").values == ("v=spf1 -all", "42", "x")
    assert rrset(text, "single.example.test", "TXT").values == ("one value",)


def test_ttls_zone_default_and_per_record():
    text = zone_text("a: {A: [192.0.2.1]}\nb: {A: [192.0.2.2], ttl: 300}\n").replace("zone: example.test\n", "zone: example.test\nttl: 60\n")
    zone = load(text)
    assert zone.ttl == 60
    assert rrset(text, "a.example.test", "A").ttl == 60
    assert rrset(text, "b.example.test", "A").ttl == 300
    plain = load(zone_text("a: {A: [192.0.2.1]}\n"))
    assert plain.nodes["a.example.test"].rrsets[0].ttl == 30


def test_sub_delegation_with_glue_below_the_cut():
    # In-bailiwick name servers of a sub-delegation need glue, which lives below the cut.
    text = zone_text("legacy:\n  NS: [ns.legacy, ns.other.net.]\nns.legacy:\n  A: [192.0.2.77]\n  AAAA: [2001:db8::77]\n")
    assert rrset(text, "legacy.example.test", "NS").values == ("ns.legacy.example.test", "ns.other.net")
    assert rrset(text, "ns.legacy.example.test", "A").values == (ipaddress.ip_address("192.0.2.77"),)


def test_steered_name_defaults():
    text = zone_text("www:\n  steer: [healthy, geo_proximity, {limit: 1}]\n  failover_ttl: 5\n  fallback: us-east\n")
    steered = node(text, "www.example.test").steered
    assert steered.candidates == ("eu-west", "us-east")
    assert steered.default == ()
    assert steered.fallback == ("us-east",)
    assert steered.failover_ttl == 5


def test_geolocation_rules_parse_every_match_kind():
    text = zone_text(
        """\
        geo:
          steer:
            - geolocation:
                rules:
                  - match: [198.51.100.0/24, 2001:db8:1::/48]
                    regions: [us-east]
                  - match: [NA-US-CA, us-or, CA-BC]
                    regions: [us-east]
                  - match: [NA-US, DE]
                    regions: [eu-west]
                  - match: [eu]
                    regions: eu-west
                default: [us-east]
        """
    )
    step = node(text, "geo.example.test").steered.chain[0]
    rules, default = step.params
    assert default == ("us-east",)
    assert rules[0].networks == (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:1::/48"))
    assert rules[1].subdivisions == {"US-CA", "US-OR", "CA-BC"}
    assert rules[2].countries == {"US", "DE"}
    assert rules[3].continents == {"EU"}
    assert rules[3].regions == ("eu-west",)
    assert rules[0].label == "198.51.100.0/24, 2001:db8:1::/48"
