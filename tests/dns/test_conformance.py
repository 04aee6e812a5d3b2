"""The hot path against a reference built with dnslib, on the same queries.

DESIGN: the hand parser and patcher (`geodns.dns.wire`, behind
`geodns.dns.answer.answer`) and the general dnslib path are tested against
each other. For each query of a corpus, the reference parses the query with
dnslib, resolves it with `resolve()`, and builds the response with dnslib;
the hot path's bytes must parse with both dnslib and dnspython and agree with
the reference on the header flags, rcode, question (letter case included),
every section's RRsets, the OPT record and the ECS echo, and truncation.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dnsclient
import pytest
from dnsclient import fqdn
from dnslib import EDNS0, QTYPE, RR, DNSHeader, DNSRecord

from geodns.control.controller import Controller
from geodns.dns.answer import answer, locate
from geodns.dns.resolve import _addr_rr, resolve

REPO = Path(__file__).resolve().parents[2]
NAMES = [
    "www", "app", "api", "mail", "nope", "foo.cdn", "a.b.cdn", "cdn", "_tcp", "_sip._tcp", "foo.legacy",
    "legacy", "@", "big", "wrr", "failover", "multi", "geo", "fast", "ns1",
]  # fmt: skip
QTYPES = ["A", "AAAA", "TXT", "MX", "NS", "SOA", "SRV", "CAA", "CNAME", "ANY", "AXFR", "IXFR", "DS"]
VARIANTS = {
    "plain": dict(),
    "edns-do-rd": dict(edns=True, do=True, rd=True),
    "edns-512": dict(edns=True, payload=512),
    "ecs-london": dict(subnet="81.2.69.0/24"),
    "ecs-california": dict(subnet="8.8.8.0/24"),
    "ecs-brazil-v6": dict(subnet="2800:3f0:4001::/48"),
    "ecs-zero": dict(subnet="0.0.0.0/0"),
    "mixed-case-from-8.8.8.8": dict(case=True, source="8.8.8.8"),
    "tcp": dict(udp=False, edns=True),
}


@pytest.fixture(scope="module")
def snapshot():
    controller = Controller(str(REPO / "zones"), str(REPO / "data" / "geoip-bundle.mmdb"))
    return controller.start()


def mixed_case(name: str) -> str:
    return "".join(c.upper() if i % 2 else c for i, c in enumerate(name))


def make_query(name: str, qtype: str, v: dict, qid: int) -> bytes:
    if v.get("case"):
        name = mixed_case(name)
    q = dnsclient.query(name, qtype, ecs=v.get("subnet"), edns=0 if v.get("edns") else None,
                        payload=v.get("payload", 1232), do=v.get("do", False), qid=qid, rd=v.get("rd", False))
    return q.to_wire()


def ecs_of_dnslib(query: DNSRecord) -> tuple[int, int, bytes] | None:
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            for option in rr.rdata:
                if option.code == 8:
                    family, source, _ = struct.unpack_from("!HBB", option.data)
                    return family, source, option.data[4:]
    return None


def reference(snap, wire: bytes, source: str, udp: bool) -> tuple[list[bytes], bool]:
    """Responses built with dnslib from dnslib's parse of the query: one per possible steering branch."""
    query = DNSRecord.parse(wire)
    qname = str(query.q.qname)
    name = qname.rstrip(".").lower()
    qtype = query.q.qtype
    opt = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
    ecs = ecs_of_dnslib(query)
    header = DNSHeader(id=query.header.id, qr=1, aa=0, ra=0, rd=query.header.rd, opcode=0)
    czone = snap.find_zone(name)
    bodies: list[list[RR]] = [[]]
    authority: list[RR] = []
    additional: list[RR] = []
    dependent = False
    if czone is None:
        header.rcode = dns.rcode.REFUSED
    else:
        if ecs is not None and ecs[1] > 0:
            family, _, raw = ecs
            width = 4 if family == 1 else 16
            address = ipaddress.ip_address(raw + bytes(width - len(raw)))
            origin = "ECS"
        else:
            address, origin = ipaddress.ip_address(source), "source address"
        used = []

        def where():
            used.append(True)
            return locate(snap, czone, address, origin)[0]

        res = resolve(snap, czone, name, qtype, where, time.time())
        dependent = bool(used) and res.decision is not None
        header.rcode = int(res.rcode)
        header.aa = 1 if res.aa else 0
        authority, additional = res.authority, res.additional
        if res.decision is not None:
            bodies = [
                res.answer
                + [_addr_rr(res.steered_owner, a, res.steered_ttl) for a in branch.addresses]
                for branch in res.decision.branches
            ]
        else:
            bodies = [res.answer]
    out = []
    for answers in bodies:
        record = DNSRecord(header, q=query.q)
        for rr in answers:
            record.add_answer(rr)
        for rr in authority:
            record.add_auth(rr)
        for rr in additional:
            record.add_ar(rr)
        if opt is not None:
            flags = "do" if opt.ttl & 0x8000 else ""
            record.add_ar(EDNS0(udp_len=1232, flags=flags))
        out.append(bytes(record.pack()))  # dnslib packs to a bytearray
    return out, dependent


def rrsets(section) -> set[tuple]:
    """RRsets as comparable values. Names compare without case: a name compressed against the
    question takes the question's letter case, as in any server that compresses (RFC 4343)."""

    def text(rdtype, rd) -> str:
        t = rd.to_text()
        return t if rdtype in (dns.rdatatype.TXT, dns.rdatatype.CAA) else t.lower()

    return {
        (r.name.to_text().lower(), r.rdtype, r.ttl, frozenset(text(r.rdtype, rd) for rd in r))
        for r in section
    }


def compare(
    hot: bytes,
    refs: list[bytes],
    wants: list[dns.message.Message],
    query: dns.message.Message,
    v: dict,
    dependent: bool,
) -> None:
    DNSRecord.parse(hot)  # dnslib reads it
    got = dns.message.from_wire(hot)  # and so does dnspython
    want = wants[0]
    assert got.id == query.id
    assert got.rcode() == want.rcode()
    for flag in (dns.flags.QR, dns.flags.AA, dns.flags.RD, dns.flags.RA):
        assert bool(got.flags & flag) == bool(want.flags & flag), dns.flags.to_text(flag)
    assert got.opcode() == 0
    # the question, letter case included
    assert [q.to_text() for q in got.question] == [q.to_text() for q in query.question]
    assert got.question[0].name.to_text() == query.question[0].name.to_text()
    # OPT: present exactly when the query had one; DO copied; ECS echoed
    assert got.edns == query.edns
    if query.edns >= 0:
        assert bool(got.ednsflags & dns.flags.DO) == bool(query.ednsflags & dns.flags.DO)
        sent = next((o for o in query.options if isinstance(o, dns.edns.ECSOption)), None)
        echo = next((o for o in got.options if isinstance(o, dns.edns.ECSOption)), None)
        if sent is None:
            assert echo is None
        else:
            assert echo is not None and (echo.address, echo.srclen) == (sent.address, sent.srclen)
            if not dependent or sent.srclen == 0:
                assert echo.scopelen == 0
    if got.flags & dns.flags.TC:
        assert v.get("udp", True)
        limit = max(query.payload, 512) if query.edns >= 0 else 512
        sent = next((o for o in query.options if isinstance(o, dns.edns.ECSOption)), None)
        echo_size = (
            8 + (sent.srclen + 7) // 8 if sent is not None else 0
        )  # the reference has no ECS echo
        assert len(refs[0]) + echo_size > limit, "truncated although the answer fits"
        assert not got.answer
        return
    if v.get("udp", True):
        limit = max(query.payload, 512) if query.edns >= 0 else 512
        assert len(hot) <= limit
    assert rrsets(got.answer) in [rrsets(w.answer) for w in wants]
    assert rrsets(got.authority) == rrsets(want.authority)
    assert rrsets(got.additional) == rrsets(want.additional)


@pytest.mark.parametrize("variant", VARIANTS.keys())
@pytest.mark.parametrize("label", NAMES + ["example.com.", "test."])
def test_hot_path_agrees_with_dnslib_reference(snapshot, label, variant):
    v = VARIANTS[variant]
    name = label if label.endswith(".") else fqdn(label)
    source = v.get("source", "127.0.0.1")
    udp = v.get("udp", True)
    failures = []
    for i, qtype in enumerate(QTYPES):
        wire = make_query(name, qtype, v, qid=0x1000 + i)
        refs, dependent = reference(snapshot, wire, source, udp)
        query = dns.message.from_wire(wire)
        wants = [dns.message.from_wire(r) for r in refs]
        for attempt in range(2):  # the second is answered from the cache
            hot = answer(snapshot, wire, source, time.time(), udp)
            assert hot is not None
            hot = bytes(hot)
            try:
                compare(hot, refs, wants, query, v, dependent)
            except AssertionError as exc:
                failures.append(f"{name} {qtype} attempt {attempt}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "mutate,rcode",
    [
        (
            lambda w: w[:2] + bytes([w[2] | 2 << 3]) + w[3:],  # opcode 2 (STATUS)
            dns.rcode.NOTIMP,
        ),
        (lambda w: w[:4] + b"\x00\x00" + w[6:], dns.rcode.FORMERR),  # QDCOUNT 0
        (
            lambda w: w[:-6] + b"\x00\x01" + w[-4:],
            dns.rcode.BADVERS,
        ),  # EDNS version 1 (OPT TTL byte 2)
    ],
    ids=["opcode", "qdcount0", "badvers"],
)
def test_error_responses_parse_with_both_libraries(snapshot, mutate, rcode):
    wire = make_query(fqdn("www"), "A", {"edns": True}, qid=0x4444)
    bad = mutate(wire)
    hot = answer(snapshot, bad, "127.0.0.1", time.time(), True)
    assert hot is not None
    hot = bytes(hot)
    record = DNSRecord.parse(hot)
    assert record.header.id == 0x4444 and record.header.qr == 1
    got = dns.message.from_wire(hot)
    assert got.rcode() == rcode


def test_responses_are_ignored(snapshot):
    wire = bytearray(make_query(fqdn("www"), "A", {}, qid=1))
    wire[2] |= 0x80
    assert answer(snapshot, bytes(wire), "127.0.0.1", time.time(), True) is None
