"""EDNS0 (RFC 6891) and EDNS Client Subnet (RFC 7871) against the running server."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnsclient import addresses, ask, ecs_of, fqdn, header, query, raw_tcp, raw_udp, tcp, udp

from . import wirebuild as wb

BIG = fqdn("big")
TXT = 16


def raw(server, wire: bytes, over: str) -> dns.message.Message:
    response = raw_udp(server, wire) if over == "udp" else raw_tcp(server, wire)
    assert response is not None, "no response"
    return dns.message.from_wire(response)


# --- OPT ---------------------------------------------------------------------


@pytest.mark.parametrize("over", ["udp", "tcp"])
@pytest.mark.parametrize(
    "name,rdtype,rcode", [("www", "A", 0), ("nope", "A", 3), ("mail", "MX", 0)]
)
def test_opt_is_echoed(example_server, over, name, rdtype, rcode):
    r = ask(example_server, fqdn(name), rdtype, edns=0, over=over)
    assert r.rcode() == rcode
    assert r.edns == 0
    assert r.payload == 1232, "we advertise our own payload size"
    assert not r.ednsflags & dns.flags.DO


def test_opt_is_echoed_on_refused(example_server):
    r = ask(example_server, "example.com.", "A", edns=0)
    assert r.rcode() == dns.rcode.REFUSED and r.edns == 0


@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_no_opt_in_no_opt_out(example_server, over):
    r = ask(example_server, fqdn("www"), "A", over=over)
    assert r.edns == -1 and not r.additional


@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_do_bit_is_copied(example_server, over):
    assert ask(example_server, fqdn("www"), "A", do=True, over=over).ednsflags & dns.flags.DO
    assert ask(example_server, fqdn("nope"), "A", do=True, over=over).ednsflags & dns.flags.DO
    assert not ask(example_server, fqdn("www"), "A", edns=0, over=over).ednsflags & dns.flags.DO


@pytest.mark.parametrize("over", ["udp", "tcp"])
@pytest.mark.parametrize("version", [1, 2, 255])
def test_badvers_for_edns_versions_other_than_0(example_server, over, version):
    wire = wb.query(fqdn("www"), 1, [wb.opt_rr(version=version)], qid=0xBAD1)
    r = raw(example_server, wire, over)
    assert r.id == 0xBAD1
    assert r.rcode() == dns.rcode.BADVERS == 16
    assert r.edns == 0, "the OPT says which version we speak"
    assert not r.answer


@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_two_opt_records_are_formerr(example_server, over):
    wire = wb.query(fqdn("www"), 1, [wb.opt_rr(), wb.opt_rr()], qid=0x0707)
    response = raw_udp(example_server, wire) if over == "udp" else raw_tcp(example_server, wire)
    assert response is not None
    qid, flags, *_ = header(response)
    assert qid == 0x0707 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    dns.message.from_wire(response)


def test_opt_with_a_non_root_owner_is_formerr(example_server):
    bad_opt = b"\x01x" + wb.opt_rr()
    response = raw_udp(example_server, wb.query(fqdn("www"), 1, [bad_opt]))
    assert response is not None and header(response)[1] & 0xF == dns.rcode.FORMERR


# --- payload size and truncation ---------------------------------------------


def test_big_txt_truncated_without_edns(example_server):
    response = raw_udp(example_server, query(BIG, "TXT").to_wire())
    assert response is not None and len(response) <= 512
    r = dns.message.from_wire(response)
    assert r.flags & dns.flags.TC
    assert r.flags & dns.flags.AA
    assert not r.answer
    assert r.question[0].name.to_text() == BIG


@pytest.mark.parametrize("payload", [512, 1232, 100])
def test_big_txt_truncated_at_the_clients_payload(example_server, payload):
    response = raw_udp(example_server, query(BIG, "TXT", edns=0, payload=payload).to_wire())
    assert response is not None and len(response) <= max(payload, 512)
    r = dns.message.from_wire(response)
    assert r.flags & dns.flags.TC
    assert r.edns == 0, "OPT kept in a truncated answer"
    assert not r.answer


def test_big_txt_fits_a_large_payload(example_server):
    response = raw_udp(example_server, query(BIG, "TXT", edns=0, payload=4096).to_wire())
    assert response is not None and 1500 < len(response) <= 4096
    r = dns.message.from_wire(response)
    assert not r.flags & dns.flags.TC
    assert len(r.answer[0]) == 13


@pytest.mark.parametrize("edns", [None, 0])
def test_big_txt_whole_over_tcp(example_server, edns):
    q = query(BIG, "TXT", edns=edns, payload=512)
    r = tcp(example_server, q)
    assert not r.flags & dns.flags.TC
    (rrset,) = r.answer
    assert len(rrset) == 13
    assert len(r.to_wire()) > 1500
    texts = sorted(b"".join(rd.strings) for rd in rrset)
    assert texts[0].endswith(b"01") and texts[-1].endswith(b"13")


def test_small_answers_are_not_truncated_at_512(example_server):
    r = udp(example_server, query(fqdn("@"), "NS"))
    assert not r.flags & dns.flags.TC and r.answer


# --- ECS ---------------------------------------------------------------------

STEERING = [
    # subnet, name, type, expected answer, expected scope
    # London: the GeoIP network is a /18. Only `fast` reads the latency table, whose /24
    # for 81.2.69.0 narrows its scope; `www` and `geo` answer for the whole /18.
    ("81.2.69.0/24", "www", "A", "192.0.2.30", 18),
    ("8.8.8.0/24", "www", "A", "192.0.2.20", 24),  # California
    ("8.8.8.0/24", "www", "AAAA", "2001:db8::20", 24),
    ("81.2.69.0/24", "www", "AAAA", "2001:db8::30", 18),
    ("2800:3f0:4001::/48", "www", "A", "192.0.2.50", 48),  # Brazil
    ("2800:3f0:4001::/48", "www", "AAAA", "2001:db8::50", 48),
    ("2404:6800:4003::/48", "www", "AAAA", "2001:db8::40", 48),  # Singapore
    ("81.2.69.0/24", "geo", "A", "192.0.2.30", 18),
    ("8.8.8.0/24", "geo", "A", "192.0.2.20", 24),  # NA-US-CA rule
    ("198.51.100.0/24", "geo", "A", "192.0.2.20", 24),  # the CIDR rule
    ("81.2.69.0/24", "fast", "A", "192.0.2.30", 24),
    ("8.8.8.0/24", "fast", "A", "192.0.2.20", 24),
]


@pytest.mark.parametrize("subnet,name,rdtype,expected,scope", STEERING)
@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_ecs_steers_by_the_client_subnet(
    example_server, subnet, name, rdtype, expected, scope, over
):
    r = ask(example_server, fqdn(name), rdtype, ecs=subnet, over=over)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert addresses(r, rdtype) == [expected]
    ecs = ecs_of(r)
    assert ecs is not None, "ECS echoed"
    address, source = subnet.split("/")
    assert (ecs.address, ecs.srclen) == (address, int(source))
    assert ecs.scopelen == scope, "scope = the GeoIP network the answer was chosen for"


def test_ecs_answers_do_not_leak_between_subnets(example_server):
    for _ in range(3):
        for subnet, expected in (
            ("81.2.69.0/24", "192.0.2.30"),
            ("8.8.8.0/24", "192.0.2.20"),
            ("2800:3f0:4001::/48", "192.0.2.50"),
        ):
            assert addresses(ask(example_server, fqdn("www"), "A", ecs=subnet)) == [expected]


def test_ecs_host_address_scope_is_the_network(example_server):
    r = ask(example_server, fqdn("www"), "A", ecs="8.8.8.8/32")
    assert addresses(r) == ["192.0.2.20"]
    ecs = ecs_of(r)
    assert (ecs.address, ecs.srclen, ecs.scopelen) == ("8.8.8.8", 32, 24)


def test_ecs_scope_zero_for_answers_that_do_not_depend_on_the_client(example_server):
    for name, rdtype in (("mail", "A"), ("@", "SOA"), ("nope", "A"), ("foo.cdn", "A")):
        ecs = ecs_of(ask(example_server, fqdn(name), rdtype, ecs="81.2.69.0/24"))
        assert ecs is not None and ecs.scopelen == 0 and ecs.srclen == 24


@pytest.mark.parametrize("subnet", ["0.0.0.0/0", "::/0"])
def test_ecs_source_prefix_zero_uses_the_sender_and_scope_zero(example_server, subnet):
    r = ask(example_server, fqdn("www"), "A", ecs=subnet)
    assert addresses(r) == ["192.0.2.10"], "the sender (loopback, no location) decides: the default"
    ecs = ecs_of(r)
    assert ecs is not None and ecs.srclen == 0 and ecs.scopelen == 0


def test_private_subnet_gets_the_default(example_server):
    r = ask(example_server, fqdn("www"), "A", ecs="10.1.2.0/24")
    assert addresses(r) == ["192.0.2.10"]
    assert ecs_of(r) is not None


MALFORMED_ECS = {
    "family 3": wb.ecs_option(3, 24, 0, bytes([81, 2, 69])),
    "family 0": wb.ecs_option(0, 0, 0, b""),
    "IPv4 source /33": wb.ecs_option(1, 33, 0, bytes([81, 2, 69, 0, 0])),
    "IPv6 source /129": wb.ecs_option(2, 129, 0, bytes(17)),
    "bits beyond /20": wb.ecs_option(1, 20, 0, bytes([81, 2, 0x4F])),
    "bits beyond /7": wb.ecs_option(1, 7, 0, bytes([0x51])),
    "address too long for /24": wb.ecs_option(1, 24, 0, bytes([81, 2, 69, 0])),
    "address too short for /24": wb.ecs_option(1, 24, 0, bytes([81, 2])),
    "address for /0": wb.ecs_option(1, 0, 0, bytes([81])),
    "nonzero scope": wb.ecs_option(1, 24, 8, bytes([81, 2, 69])),
    "shorter than 4 bytes": b"\x00\x08\x00\x02\x00\x01",
    "two ECS options": wb.ecs_option(1, 24, 0, bytes([81, 2, 69])) * 2,
    "option runs past the OPT": b"\x00\x08\x00\x09\x00\x01\x18\x00",
}


@pytest.mark.parametrize("option", MALFORMED_ECS.values(), ids=MALFORMED_ECS.keys())
@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_malformed_ecs_is_formerr(example_server, option, over):
    wire = wb.query(fqdn("www"), 1, [wb.opt_rr(options=option)], qid=0xEC5)
    response = raw_udp(example_server, wire) if over == "udp" else raw_tcp(example_server, wire)
    assert response is not None
    qid, flags, _, ancount, _, _ = header(response)
    assert qid == 0xEC5 and flags & 0x8000
    assert flags & 0xF == dns.rcode.FORMERR
    assert ancount == 0
    dns.message.from_wire(response)


def test_unknown_edns_options_are_ignored(example_server):
    cookie = b"\x00\x0a\x00\x08" + bytes(range(8))
    r = raw(example_server, wb.query(fqdn("www"), 1, [wb.opt_rr(options=cookie)]), "udp")
    assert r.rcode() == dns.rcode.NOERROR and addresses(r) == ["192.0.2.10"]


def test_ecs_with_a_well_formed_short_prefix(example_server):
    r = ask(example_server, fqdn("www"), "A", ecs="81.2.64.0/18")
    assert addresses(r) == ["192.0.2.30"]
    assert ecs_of(r).srclen == 18
