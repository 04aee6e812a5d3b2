"""Issue 2, section 5: DNS semantics, asked of the running server over UDP and TCP."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from dnsclient import (
    EXAMPLE,
    addresses,
    ask,
    fqdn,
    header,
    query,
    raw_tcp,
    raw_udp,
    read_framed,
    tcp,
    udp,
)

TRANSPORTS = ["udp", "tcp"]
NEGATIVE_TTL = 60
"""min(SOA TTL 3600, MINIMUM 60) in zones/example.yaml (RFC 2308 section 5)."""


def soa_in_authority(msg: dns.message.Message):
    soas = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
    assert len(soas) == 1, msg
    return soas[0]


# --- header flags ---------------------------------------------------------


@pytest.mark.parametrize("over", TRANSPORTS)
def test_authoritative_answer_sets_aa_and_never_ra(example_server, over):
    q = query(fqdn("www"))
    q.flags |= dns.flags.RD  # a recursion request changes nothing
    r = (tcp if over == "tcp" else udp)(example_server, q)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR
    assert r.flags & dns.flags.AA
    assert not r.flags & dns.flags.RA
    assert r.flags & dns.flags.RD, "RD is copied from the query"
    assert r.id == q.id
    # loopback has no location: the record's default, us-east
    assert addresses(r) == ["192.0.2.10"]
    assert r.answer[0].ttl == 30


@pytest.mark.parametrize("name", ["www.example.com.", "test.", "example.test.", "."])
def test_names_outside_our_zones_are_refused(example_server, name):
    r = ask(example_server, name, "A")
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA
    assert not r.flags & dns.flags.RA
    assert not r.answer and not r.authority


# --- negative answers -----------------------------------------------------


@pytest.mark.parametrize("over", TRANSPORTS)
def test_nxdomain_has_the_soa_with_the_negative_ttl(example_server, over):
    r = ask(example_server, fqdn("no-such-name"), "A", over=over)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    assert not r.answer
    soa = soa_in_authority(r)
    assert soa.name.to_text() == f"{EXAMPLE}."
    assert soa.ttl == NEGATIVE_TTL
    assert soa[0].minimum == 60 and soa[0].serial == 2026112601


@pytest.mark.parametrize(
    "name,rdtype",
    [
        ("mail", "MX"),  # the name has A and AAAA, not MX
        ("www", "TXT"),  # a steered name asked for another type
        ("_tcp", "A"),  # an empty non-terminal (from _sip._tcp)
        ("cdn", "A"),  # an empty non-terminal above the wildcard *.cdn
    ],
)
def test_nodata_has_the_soa_with_the_negative_ttl(example_server, name, rdtype):
    r = ask(example_server, fqdn(name), rdtype)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert not r.answer
    assert soa_in_authority(r).ttl == NEGATIVE_TTL


# --- the apex -------------------------------------------------------------


def test_soa_at_the_apex(example_server):
    r = ask(example_server, fqdn("@"), "SOA")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    (rrset,) = r.answer
    assert rrset.rdtype == dns.rdatatype.SOA and rrset.ttl == 3600
    soa = rrset[0]
    assert soa.mname.to_text() == f"ns1.{EXAMPLE}."
    assert soa.rname.to_text() == f"hostmaster.{EXAMPLE}."
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        2026112601,
        3600,
        600,
        604800,
        60,
    )


@pytest.mark.parametrize("over", TRANSPORTS)
def test_ns_at_the_apex_with_glue(example_server, over):
    r = ask(example_server, fqdn("@"), "NS", over=over)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    (rrset,) = r.answer
    assert rrset.ttl == 3600
    assert sorted(rd.target.to_text() for rd in rrset) == [f"ns1.{EXAMPLE}.", f"ns2.{EXAMPLE}."]
    glue = {
        rr.name.to_text(): [rd.address for rd in rr]
        for rr in r.additional
        if rr.rdtype == dns.rdatatype.A
    }
    assert glue == {f"ns1.{EXAMPLE}.": ["127.0.0.53"], f"ns2.{EXAMPLE}.": ["127.0.0.54"]}


def test_nameserver_names_answer_with_their_glue(example_server):
    r = ask(example_server, fqdn("ns1"), "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r) == ["127.0.0.53"]


def test_mx_at_the_apex_with_the_target_addresses(example_server):
    r = ask(example_server, fqdn("@"), "MX")
    (rrset,) = r.answer
    assert [(rd.preference, rd.exchange.to_text()) for rd in rrset] == [(10, f"mail.{EXAMPLE}.")]
    extra = sorted(
        (rr.rdtype, rd.address) for rr in r.additional for rd in rr if hasattr(rd, "address")
    )
    assert extra == [(dns.rdatatype.A, "192.0.2.25"), (dns.rdatatype.AAAA, "2001:db8::25")]


def test_txt_caa_srv_plain_records(example_server):
    assert [rd.strings for rd in ask(example_server, fqdn("@"), "TXT").answer[0]] == [
        (b"v=spf1 -all",)
    ]
    caa = ask(example_server, fqdn("@"), "CAA").answer[0][0]
    assert (caa.flags, caa.tag, caa.value) == (0, b"issue", b"letsencrypt.org")
    srv = ask(example_server, fqdn("_sip._tcp"), "SRV").answer[0][0]
    assert (srv.priority, srv.weight, srv.port, srv.target.to_text()) == (
        10,
        60,
        5060,
        f"app.{EXAMPLE}.",
    )


# --- CNAME chains -----------------------------------------------------------


def chain(msg: dns.message.Message) -> list[tuple[str, str]]:
    out = []
    for rrset in msg.answer:
        for rd in rrset:
            out.append((rrset.name.to_text(), rd.to_text()))
    return out


@pytest.mark.parametrize("over", TRANSPORTS)
def test_cname_chain_app_to_www(example_server, over):
    r = ask(example_server, fqdn("app"), "A", over=over)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert chain(r) == [(fqdn("app"), fqdn("www")), (fqdn("www"), "192.0.2.10")]


def test_cname_chain_api_to_app_to_www(example_server):
    r = ask(example_server, fqdn("api"), "A")
    assert chain(r) == [
        (fqdn("api"), fqdn("app")),
        (fqdn("app"), fqdn("www")),
        (fqdn("www"), "192.0.2.10"),
    ]


@pytest.mark.parametrize(
    "subnet,rdtype,expected",
    [
        ("81.2.69.0/24", "A", "192.0.2.30"),
        ("8.8.8.0/24", "A", "192.0.2.20"),
        ("8.8.8.0/24", "AAAA", "2001:db8::20"),
        ("2800:3f0:4001::/48", "AAAA", "2001:db8::50"),
    ],
)
def test_cname_chain_target_is_steered_per_client(example_server, subnet, rdtype, expected):
    r = ask(example_server, fqdn("api"), rdtype, ecs=subnet)
    assert chain(r)[:2] == [(fqdn("api"), fqdn("app")), (fqdn("app"), fqdn("www"))]
    assert chain(r)[2:] == [(fqdn("www"), expected)]


def test_cname_asked_for_itself(example_server):
    r = ask(example_server, fqdn("app"), "CNAME")
    assert chain(r) == [(fqdn("app"), fqdn("www"))]


# --- letter case (0x20) -----------------------------------------------------


def question_bytes(wire: bytes) -> bytes:
    end = 12
    while wire[end]:
        end += wire[end] + 1
    return wire[12 : end + 5]


@pytest.mark.parametrize(
    "name",
    [
        "WwW.GsLb.ExAmPlE.TeSt.",
        "MAIL.gslb.EXAMPLE.test.",
        "nO-sUcH.gSlB.eXaMpLe.TeSt.",
        "aPi.GSLB.example.TEST.",
    ],
)
@pytest.mark.parametrize("over", TRANSPORTS)
def test_question_letter_case_is_preserved(example_server, name, over):
    # Ask in lower case first so that the mixed-case query is a cache hit.
    ask(example_server, name.lower(), "A", over=over)
    wire = query(name, "A").to_wire()
    response = raw_udp(example_server, wire) if over == "udp" else raw_tcp(example_server, wire)
    assert response is not None
    assert question_bytes(response) == question_bytes(wire)
    assert dns.message.from_wire(response).question[0].name.to_text() == name


# --- ANY, AXFR, IXFR --------------------------------------------------------


@pytest.mark.parametrize("name", ["@", "mail", "www"])
def test_any_gets_a_minimal_answer(example_server, name):
    r = ask(example_server, fqdn(name), "ANY")
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.answer) == 1, f"RFC 8482: one RRset, got {r.answer}"


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
@pytest.mark.parametrize("over", TRANSPORTS)
def test_zone_transfers_are_refused(example_server, rdtype, over):
    wire = query(fqdn("@"), rdtype).to_wire()
    response = raw_udp(example_server, wire) if over == "udp" else raw_tcp(example_server, wire)
    assert response is not None
    r = dns.message.from_wire(response)
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.answer


# --- wildcard and delegation -----------------------------------------------


@pytest.mark.parametrize("label", ["foo.cdn", "a.b.cdn", "EDGE-7.cdn"])
def test_wildcard(example_server, label):
    r = ask(example_server, fqdn(label), "A")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    (rrset,) = r.answer
    assert rrset.name.to_text().lower() == fqdn(label).lower()
    assert [rd.address for rd in rrset] == ["192.0.2.99"]


def test_wildcard_other_type_is_nodata(example_server):
    r = ask(example_server, fqdn("foo.cdn"), "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert soa_in_authority(r).ttl == NEGATIVE_TTL


@pytest.mark.parametrize("label", ["legacy", "foo.legacy", "a.b.legacy"])
@pytest.mark.parametrize("over", TRANSPORTS)
def test_subdelegation_gets_a_referral(example_server, label, over):
    r = ask(example_server, fqdn(label), "A", over=over)
    assert r.rcode() == dns.rcode.NOERROR
    assert not r.flags & dns.flags.AA, "a referral is not authoritative"
    assert not r.answer
    ns = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.NS]
    assert len(ns) == 1
    assert ns[0].name.to_text() == fqdn("legacy")
    assert [rd.target.to_text() for rd in ns[0]] == ["ns.legacy.example.net."]


# --- opcodes, counts, responses --------------------------------------------


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 6, 15])
@pytest.mark.parametrize("over", TRANSPORTS)
def test_opcodes_other_than_query_are_notimp(example_server, opcode, over):
    wire = bytearray(query(fqdn("www"), "A").to_wire())
    wire[2] = (wire[2] & 0x87) | (opcode << 3)
    response = (
        raw_udp(example_server, bytes(wire))
        if over == "udp"
        else raw_tcp(example_server, bytes(wire))
    )
    assert response is not None
    qid, flags, *_ = header(response)
    assert qid == header(bytes(wire))[0]
    assert flags & 0x8000
    assert flags & 0xF == dns.rcode.NOTIMP
    assert (flags >> 11) & 0xF == opcode, "the opcode is echoed"
    if opcode != dns.opcode.UPDATE:  # dnspython reads UPDATE sections differently
        dns.message.from_wire(response)


def question(name: str, rdtype: int = 1) -> bytes:
    return (
        b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
        + b"\x00"
        + struct.pack("!HH", rdtype, 1)
    )


@pytest.mark.parametrize("over", TRANSPORTS)
def test_qdcount_zero_is_formerr(example_server, over):
    wire = struct.pack("!HHHHHH", 0x1234, 0, 0, 0, 0, 0)
    response = raw_udp(example_server, wire) if over == "udp" else raw_tcp(example_server, wire)
    assert response is not None
    qid, flags, qd, an, ns, ar = header(response)
    assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    assert (qd, an, ns) == (0, 0, 0)


@pytest.mark.parametrize("over", TRANSPORTS)
def test_qdcount_two_is_formerr(example_server, over):
    wire = (
        struct.pack("!HHHHHH", 0x4321, 0, 2, 0, 0, 0)
        + question(fqdn("www"))
        + question(fqdn("mail"))
    )
    response = raw_udp(example_server, wire) if over == "udp" else raw_tcp(example_server, wire)
    assert response is not None
    qid, flags, _, an, _, _ = header(response)
    assert qid == 0x4321 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR and an == 0


def test_qdcount_one_but_no_question_is_formerr(example_server):
    wire = struct.pack("!HHHHHH", 0x1111, 0, 1, 0, 0, 0)
    response = raw_udp(example_server, wire)
    assert response is not None and header(response)[1] & 0xF == dns.rcode.FORMERR


def test_responses_are_never_answered_over_udp(example_server):
    q = query(fqdn("www"), "A")
    q.flags |= dns.flags.QR
    assert raw_udp(example_server, q.to_wire(), timeout=0.5) is None
    # a full response, as a reflection attack would send
    r = dns.message.make_response(query(fqdn("www"), "A"))
    assert raw_udp(example_server, r.to_wire(), timeout=0.5) is None


def test_responses_are_never_answered_over_tcp(example_server):
    import socket


    bad = query(fqdn("www"), "A", qid=0xBAD)
    bad.flags |= dns.flags.QR
    good = query(fqdn("mail"), "A", qid=0x600D)
    with socket.create_connection((example_server.host, example_server.port), timeout=3) as s:
        for m in (bad, good):
            w = m.to_wire()
            s.sendall(struct.pack("!H", len(w)) + w)
        first = dns.message.from_wire(read_framed(s))
    assert first.id == 0x600D, "the response to the QR message must not be answered"


def chaos_query(name: str, qid: int) -> bytes:
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + question(name)[:-2] + struct.pack("!H", 3)


def test_non_in_class_is_refused(example_server):
    wire = chaos_query(fqdn("never-asked-in-class-in"), 0x0C1A)
    response = raw_udp(example_server, wire)
    assert response is not None
    assert header(response)[1] & 0xF == dns.rcode.REFUSED
    assert question_bytes(response) == question_bytes(wire)


def test_non_in_class_is_refused_after_the_in_answer_is_cached(example_server):
    ask(example_server, fqdn("mail"), "A")
    wire = chaos_query(fqdn("mail"), 0x0C1B)
    response = raw_udp(example_server, wire)
    assert response is not None
    assert question_bytes(response) == question_bytes(wire), "the question (class CH) is echoed"
    assert header(response)[1] & 0xF == dns.rcode.REFUSED


# --- IPv6 transport ---------------------------------------------------------


def test_ipv6_listener_answers(example_server):
    v6 = [h for h in example_server.hosts if ":" in h[0]]
    if not v6:
        pytest.skip("no IPv6 loopback on this machine")
    host, port = v6[0]
    for transport in (udp, tcp):
        r = transport(example_server, query(fqdn("www"), "AAAA"), host=host, port=port)
        assert r.flags & dns.flags.AA
        assert addresses(r, "AAAA") == ["2001:db8::10"]  # ::1 has no location: the default


# --- odd bytes in labels (RFC 2181 section 11: any octet is allowed) -----------

@pytest.mark.parametrize(
    "label",
    [
        b"A B",
        b"x\\y",
        b"\x00z",
        b"a.cdn",
        b"\xc3\xa9",
    ],
    ids=["space", "backslash", "nul", "dot", "utf8"],
)
def test_wildcard_answer_owner_is_the_question_name_for_odd_labels(example_server, label):
    qname = bytes([len(label)]) + label + wb_name(fqdn("cdn"))
    wire = struct.pack("!HHHHHH", 0x0DD1, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    response = raw_udp(example_server, wire)
    assert response is not None
    r = dns.message.from_wire(response)
    assert r.rcode() == dns.rcode.NOERROR
    (rrset,) = r.answer
    assert rrset.name == r.question[0].name
    assert rrset.name.to_wire() == dns.name.from_wire(qname, 0)[0].to_wire()
    assert [rd.address for rd in rrset] == ["192.0.2.99"]


def wb_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\x00"
