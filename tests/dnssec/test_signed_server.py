"""A signed zone served by the real server over UDP and TCP, every signature checked by dnspython.

The example zone plus `dnssec: {keys: keys}`; a second node with the same key
files, and the unsigned example zone beside it to show that queries without
DO get exactly the answers they get today.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from dnsclient import exchange, query, tcp, udp

from geodns.dnssec import keys as zkeys
from tests.integration.conftest import REPO, Server, running

ZONE = "gslb.example.test"
ORIGIN = dns.name.from_text(ZONE + ".")


def signed_zones(tmp: Path, key: zkeys.Key | None = None) -> tuple[Path, zkeys.Key]:
    zones = tmp / "zones"
    zones.mkdir(parents=True)
    shutil.copy(REPO / "data" / "latency.yaml", tmp / "latency.yaml")
    text = (REPO / "zones" / "example.yaml").read_text().replace("../data/latency.yaml", "../latency.yaml")
    (zones / "example.yaml").write_text(text + "\ndnssec:\n  keys: ../keys\n")
    key = key or zkeys.generate(ZONE)
    zkeys.write(key, tmp / "keys")
    return zones, key


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[tuple[Server, Server, Server, zkeys.Key]]:
    """Two signed nodes (same key files) and one serving the unsigned example zone."""
    zones, key = signed_zones(tmp_path_factory.mktemp("signed-1"))
    zones2, _ = signed_zones(tmp_path_factory.mktemp("signed-2"), key)
    with running(tmp_path_factory.mktemp("s1"), zones=zones) as one, running(
        tmp_path_factory.mktemp("s2"), zones=zones2
    ) as two, running(tmp_path_factory.mktemp("plain")) as plain:
        yield one, two, plain, key
        assert one.alive() and two.alive(), one.log_text() + two.log_text()


@pytest.fixture(scope="module")
def server(nodes) -> Server:
    return nodes[0]


@pytest.fixture(scope="module")
def keyring(server) -> dict:
    reply = udp(server, query(ZONE + ".", "DNSKEY", do=True))
    dnskey = reply.find_rrset(reply.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    return {ORIGIN: dnskey}


def validated(reply: dns.message.Message, keyring: dict, unsigned: tuple = ()) -> list[tuple[str, str]]:
    """Validate every RRset of the answer and authority sections against its RRSIG; returns
    (owner, type) of each; `unsigned` lists the types that may come without one (a referral's NS)."""
    seen = []
    for section in (reply.answer, reply.authority, reply.additional):
        sigs = {(r.name, r[0].type_covered): r for r in section if r.rdtype == dns.rdatatype.RRSIG}
        for rrset in section:
            if rrset.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.OPT):
                continue
            sig = sigs.get((rrset.name, rrset.rdtype))
            if sig is None:
                assert dns.rdatatype.to_text(rrset.rdtype) in unsigned or section is reply.additional, rrset
                continue
            dns.dnssec.validate(rrset, sig, keyring)
            assert sig.ttl == rrset.ttl and sig[0].original_ttl == rrset.ttl, (sig, rrset)
            seen.append((rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype)))
    return seen


def test_apex_keys_validate_and_cds_matches_the_ds(server, keyring, nodes) -> None:
    key = nodes[3]
    reply = udp(server, query(ZONE + ".", "DNSKEY", do=True))
    assert reply.flags & dns.flags.AA and reply.ednsflags & dns.flags.DO
    assert validated(reply, keyring) == [(ZONE + ".", "DNSKEY")]
    for rdtype in ("CDS", "CDNSKEY"):
        reply = udp(server, query(ZONE + ".", rdtype, do=True))
        assert validated(reply, keyring) == [(ZONE + ".", rdtype)]
    cds = reply = udp(server, query(ZONE + ".", "CDS", do=True)).answer[0]
    assert cds[0].to_wire() == zkeys.ds_rdata(key)


def test_steered_answer_is_signed_with_its_own_ttl(server, keyring) -> None:
    reply = udp(server, query(f"www.{ZONE}.", "A", do=True, ecs="81.2.69.0/24"))
    a = reply.find_rrset(reply.answer, dns.name.from_text(f"www.{ZONE}."), dns.rdataclass.IN, dns.rdatatype.A)
    assert [r.address for r in a] == ["192.0.2.30"] and a.ttl == 30
    assert validated(reply, keyring) == [(f"www.{ZONE}.", "A")]
    assert reply.options[0].scopelen > 0  # still an ECS answer
    other = udp(server, query(f"www.{ZONE}.", "A", do=True, ecs="8.8.8.0/24"))
    assert [r.address for r in other.answer[0]] == ["192.0.2.20"]
    validated(other, keyring)


def test_without_do_the_answers_are_byte_for_byte_the_unsigned_ones(nodes) -> None:
    signed, _, plain, _ = nodes
    for name, rdtype, subnet in (
        (f"www.{ZONE}.", "A", "81.2.69.0/24"),
        (f"api.{ZONE}.", "A", None),
        (f"nope.{ZONE}.", "A", None),
        (f"mail.{ZONE}.", "TXT", None),
        (f"legacy.{ZONE}.", "A", None),
        (f"x.cdn.{ZONE}.", "A", None),
        (ZONE + ".", "DNSKEY", None),
    ):
        wire = query(name, rdtype, ecs=subnet, edns=0, qid=4321).to_wire()
        answers = [exchange(srv, wire, timeout=3) for srv in (signed, plain)]
        assert answers[0] is not None and answers[0] == answers[1], (name, rdtype)


def test_nonexistent_name_is_a_compact_answer(server, keyring) -> None:
    name = f"nope.{ZONE}."
    reply = udp(server, query(name, "A", do=True))
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    nsec = reply.find_rrset(reply.authority, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.NSEC)
    assert nsec[0].next == dns.name.from_text("\\000." + name)
    assert nsec[0].to_text().split()[1:] == ["RRSIG", "NSEC", "NXNAME"]
    assert sorted(validated(reply, keyring)) == [(ZONE + ".", "SOA"), (name, "NSEC")]
    # CO set: the real rcode, and CO echoed (RFC 9824 4).
    q = query(name, "A", do=True)
    q.ednsflags |= 0x4000
    reply = udp(server, q)
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.ednsflags & 0x4000
    assert reply.find_rrset(reply.authority, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.NSEC)
    # An explicit NSEC query gets the NSEC as its answer, for a name that exists or not.
    for owner in (name, f"mail.{ZONE}."):
        reply = udp(server, query(owner, "NSEC", do=True))
        assert reply.rcode() == dns.rcode.NOERROR and not reply.authority
        assert validated(reply, keyring) == [(owner, "NSEC")]
    # An explicit NXNAME query is a format error (RFC 9824 3.5).
    assert udp(server, query(name, 128, do=True)).rcode() == dns.rcode.FORMERR


def test_missing_type_lists_the_types_that_exist(server, keyring) -> None:
    name = f"mail.{ZONE}."
    reply = udp(server, query(name, "TXT", do=True))
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    nsec = reply.find_rrset(reply.authority, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.NSEC)
    assert nsec[0].to_text().split()[1:] == ["A", "AAAA", "RRSIG", "NSEC"]
    assert sorted(validated(reply, keyring)) == [(ZONE + ".", "SOA"), (name, "NSEC")]
    # A steered name: its types come from its regions' endpoints; the asked type is never listed.
    reply = udp(server, query(f"www.{ZONE}.", "MX", do=True))
    nsec = reply.find_rrset(reply.authority, dns.name.from_text(f"www.{ZONE}."), dns.rdataclass.IN, dns.rdatatype.NSEC)
    assert nsec[0].to_text().split()[1:] == ["A", "AAAA", "RRSIG", "NSEC"]
    # The apex lists its keys.
    reply = udp(server, query(ZONE + ".", "A", do=True))
    nsec = reply.find_rrset(reply.authority, ORIGIN, dns.rdataclass.IN, dns.rdatatype.NSEC)
    for t in ("NS", "SOA", "MX", "TXT", "DNSKEY", "CDS", "CDNSKEY", "CAA"):
        assert t in nsec[0].to_text().split()
    validated(reply, keyring)


def test_cname_chain_and_wildcard(server, keyring) -> None:
    reply = udp(server, query(f"api.{ZONE}.", "A", do=True, ecs="81.2.69.0/24"))
    assert validated(reply, keyring) == [(f"api.{ZONE}.", "CNAME"), (f"app.{ZONE}.", "CNAME"), (f"www.{ZONE}.", "A")]
    reply = udp(server, query(f"x.cdn.{ZONE}.", "A", do=True))
    sig = next(r for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG)
    assert sig[0].labels == 4  # cdn.gslb.example.test: the wildcard's, not the query name's 5
    nsec = next(r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC)
    assert validated(reply, keyring) == [(f"x.cdn.{ZONE}.", "A"), (nsec.name.to_text(), "NSEC")]
    nsec_sig = next(r for r in reply.authority if r.rdtype == dns.rdatatype.RRSIG and r.name == nsec.name)
    assert nsec_sig[0].labels == 5  # the NSEC is not synthesized: its owner's own label count
    # The NSEC proves x.cdn itself does not exist: it covers it, and nothing else of the zone.
    assert nsec.name < dns.name.from_text(f"x.cdn.{ZONE}.") < nsec[0].next
    assert nsec[0].next == dns.name.from_text(f"x\\000.cdn.{ZONE}.")  # after x.cdn and anything below it


def test_delegation_is_unsigned_with_a_signed_nsec_proving_no_ds(server, keyring) -> None:
    reply = udp(server, query(f"www.legacy.{ZONE}.", "A", do=True))
    assert not reply.flags & dns.flags.AA
    assert not any(r.rdtype == dns.rdatatype.RRSIG and r[0].type_covered == dns.rdatatype.NS for r in reply.authority)
    nsec = reply.find_rrset(reply.authority, dns.name.from_text(f"legacy.{ZONE}."), dns.rdataclass.IN, dns.rdatatype.NSEC)
    assert nsec[0].to_text().split()[1:] == ["NS", "RRSIG", "NSEC"]
    assert validated(reply, keyring, unsigned=("NS",)) == [(f"legacy.{ZONE}.", "NSEC")]
    # The DS query at the cut is ours: NODATA, the same NSEC.
    reply = udp(server, query(f"legacy.{ZONE}.", "DS", do=True))
    assert reply.flags & dns.flags.AA and not reply.answer
    assert sorted(validated(reply, keyring)) == [(ZONE + ".", "SOA"), (f"legacy.{ZONE}.", "NSEC")]


def test_small_buffer_truncates_and_tcp_carries_it_whole(server, keyring) -> None:
    q = query(f"big.{ZONE}.", "TXT", do=True, payload=1232)
    reply = udp(server, q)
    assert reply.flags & dns.flags.TC and not reply.answer and reply.ednsflags & dns.flags.DO
    whole = tcp(server, q)
    assert not whole.flags & dns.flags.TC
    assert validated(whole, keyring) == [(f"big.{ZONE}.", "TXT")]
    # Fits in 512 octets unsigned, not signed: the DO query alone is truncated, TCP has it all.
    name = f"{'a' * 60}.cdn.{ZONE}."
    assert not udp(server, query(name, "A", edns=0, payload=512)).flags & dns.flags.TC
    cut = udp(server, query(name, "A", do=True, payload=512))
    assert cut.flags & dns.flags.TC and not cut.answer and not cut.authority
    whole = tcp(server, query(name, "A", do=True, payload=512))
    assert len(whole.to_wire()) > 512
    assert [t for _n, t in validated(whole, keyring)] == ["A", "NSEC"]


def test_two_nodes_sign_the_same_rrset_the_same_way(nodes) -> None:
    one, two, _, _ = nodes
    for name, rdtype, subnet in ((f"www.{ZONE}.", "A", "81.2.69.0/24"), (f"nope.{ZONE}.", "A", None), (ZONE + ".", "DNSKEY", None)):
        q = query(name, rdtype, do=True, ecs=subnet)
        sigs = [
            sorted(r.to_text() for r in udp(srv, q).answer + udp(srv, q).authority if r.rdtype == dns.rdatatype.RRSIG)
            for srv in (one, two)
        ]
        assert sigs[0] and sigs[0] == sigs[1], name


def test_health_capped_ttl_is_the_rrsig_ttl(tmp_path: Path) -> None:
    """us-east down: `failover` answers us-west with its failover_ttl (10), and so does its RRSIG
    (bytes in, bytes out through the sans-I/O answer(), with the verdict set directly)."""
    from geodns.config import load_zones
    from geodns.dns.answer import answer
    from geodns.dns.snapshot import build_snapshot
    from geodns.steer import Verdict

    zones, key = signed_zones(tmp_path)
    loaded = load_zones(zones)
    keyring = {ORIGIN: dns.rrset.from_text(ORIGIN, 3600, "IN", "DNSKEY", zkeys.dnskey_text(key).split(" IN DNSKEY ")[1])}
    name = f"failover.{ZONE}."
    for verdicts, ttl, address in (({}, 30, "192.0.2.10"), ({"us-east": Verdict(up=False)}, 10, "192.0.2.20")):
        snap = build_snapshot(1, loaded, None, verdicts)
        reply = dns.message.from_wire(answer(snap, query(name, "A", do=True).to_wire(), "127.0.0.1", time.time()))
        assert [r.address for r in reply.answer[0]] == [address] and reply.answer[0].ttl == ttl
        assert validated(reply, keyring) == [(name, "A")]


def test_metrics_report_signature_expiry(tmp_path: Path) -> None:
    """/metrics shows how long until the first served signature expires (about a week: renewed
    daily, valid eight days) and how many were made."""
    import re
    import time
    import urllib.request

    from netutil import free_port

    from tests.integration.conftest import next_host

    zones, _ = signed_zones(tmp_path)
    admin = next_host()
    admin_port = free_port(admin)
    with running(tmp_path / "run", zones=zones, extra=["--admin", f"{admin}:{admin_port}"]) as srv:
        assert udp(srv, query(f"www.{ZONE}.", "A", do=True, ecs="81.2.69.0/24")).answer
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 10
        text, found = "", None
        while True:  # the admin port may come up after DNS; workers push counters once a second
            try:
                text = opener.open(f"http://{admin}:{admin_port}/metrics", timeout=5).read().decode()
            except OSError:
                text = ""
            found = re.search(r'^geodns_dnssec_signature_expiry_seconds\{zone="gslb.example.test"\} (\S+)$', text, re.M)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert found, text[-2000:]
        assert 6 * 86400 < float(found.group(1)) <= 8 * 86400
        made = re.search(r'^geodns_dnssec_signatures_total\{zone="gslb.example.test"\} (\S+)$', text, re.M)
        assert made and float(made.group(1)) >= 1


def test_an_unsigned_zone_beside_a_signed_one_answers_as_before(tmp_path: Path) -> None:
    """With one zone signed, DO queries get cache keys of their own; another zone's answers to
    them stay exactly the bytes they were with no zone signed (sans-I/O answer(), same queries)."""
    from geodns.config import load_zone_text, load_zones
    from geodns.dns.answer import answer
    from geodns.dns.snapshot import build_snapshot

    zones, _ = signed_zones(tmp_path)
    signed = load_zones(zones)
    other = load_zone_text(
        "zone: other.test\nsoa: {mname: ns1, rname: hostmaster, serial: 1}\n"
        "nameservers: [{name: ns1, glue: [192.0.2.53]}]\nrecords:\n  www: {A: [192.0.2.7]}\n  '*.w': {A: [192.0.2.8]}\n",
        str(tmp_path / "other.yaml"),
    )
    plain = [*load_zones(REPO / "zones"), other]
    with_signed = build_snapshot(1, [*signed, other], None, {})
    without = build_snapshot(1, plain, None, {})
    assert with_signed.signed and not without.signed
    for name, rdtype in (("www.other.test.", "A"), ("nope.other.test.", "A"), ("x.w.other.test.", "A"), ("other.test.", "DNSKEY")):
        for do in (True, False):
            wire = query(name, rdtype, do=do, edns=0, qid=77).to_wire()
            for _ in range(2):  # the first answer, then the cached one
                assert answer(with_signed, wire, "192.0.2.1", time.time()) == answer(without, wire, "192.0.2.1", time.time()), (name, rdtype, do)
    # ...while the signed zone's DO answers differ from its plain ones.
    wire = query(f"www.{ZONE}.", "A", do=True, qid=77).to_wire()
    assert answer(with_signed, wire, "192.0.2.1", time.time()) != answer(without, wire, "192.0.2.1", time.time())
