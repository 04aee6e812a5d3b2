"""Signing, pure: RRSIGs validated by dnspython, made the same by any node, on a grid in time."""

from __future__ import annotations

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from geodns.dnssec import denial, keys, sign
from geodns.dnssec.cache import SignatureCache

ZONE = "gslb.example.test"
NOW = 1_796_400_000  # a fixed instant: nothing here reads the clock
OWNER = b"\x03www\x04gslb\x07example\x04test\x00"


def rrset(name: str, rtype: int, ttl: int, rdatas: list[bytes]) -> dns.rrset.RRset:
    out = dns.rrset.RRset(dns.name.from_text(name), dns.rdataclass.IN, rtype)
    for r in rdatas:
        out.add(dns.rdata.from_wire(dns.rdataclass.IN, rtype, r, 0, len(r)), ttl)
    return out


def keyring(key: keys.Key) -> dict:
    dnskey = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, key.rdata, 0, len(key.rdata))
    return {dns.name.from_text(ZONE + "."): dns.rrset.from_rdata(ZONE + ".", 3600, dnskey)}


def rrsig_of(rdata: bytes, ttl: int) -> dns.rrset.RRset:
    sig = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.RRSIG, rdata, 0, len(rdata))
    return dns.rrset.from_rdata("www." + ZONE + ".", ttl, sig)


@pytest.mark.parametrize("algorithm", [13, 15])
def test_rrsig_validates_and_is_deterministic(algorithm: int) -> None:
    key = keys.generate(ZONE, algorithm)
    signer = key.signer()
    rdatas = [bytes([192, 0, 2, 30]), bytes([192, 0, 2, 31])]
    win = sign.window(NOW, sign.canonical_key(OWNER, 1, 30, rdatas))
    first = sign.rrsig_rdata(key, signer.sign, OWNER, 1, 30, rdatas, win)
    # Another node (its own Signer from the same key files), the RDATA in another order: the same bytes.
    again = sign.rrsig_rdata(key, keys.Signer(key).sign, OWNER.upper(), 1, 30, rdatas[::-1], win)
    assert again == first
    rrsig = rrsig_of(first, 30)
    assert rrsig[0].labels == 4 and rrsig[0].original_ttl == 30 and rrsig[0].key_tag == key.tag
    assert rrsig[0].inception <= NOW < rrsig[0].expiration
    dns.dnssec.validate(rrset("www." + ZONE + ".", 1, 30, rdatas), rrsig, keyring(key), now=NOW)
    with pytest.raises(dns.dnssec.ValidationFailure):
        dns.dnssec.validate(rrset("www." + ZONE + ".", 1, 30, [bytes([192, 0, 2, 66])]), rrsig, keyring(key), now=NOW)


def test_wildcard_label_count_signs_the_wildcard_owner() -> None:
    key = keys.generate(ZONE)
    owner = b"\x01x\x03cdn" + OWNER[4:]
    win = sign.window(NOW, b"x")
    data = sign.rrsig_rdata(key, key.signer().sign, owner, 1, 30, [bytes([192, 0, 2, 99])], win, labels=4)
    sig = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.RRSIG, data, 0, len(data))
    assert sig.labels == 4
    synthesized = rrset("x.cdn." + ZONE + ".", 1, 30, [bytes([192, 0, 2, 99])])
    dns.dnssec.validate(synthesized, dns.rrset.from_rdata("x.cdn." + ZONE + ".", 30, sig), keyring(key), now=NOW)


def test_window_is_a_grid_shifted_per_rrset() -> None:
    a, b = b"rrset-a", b"rrset-b"
    win = sign.window(NOW, a)
    assert win.expiration - win.inception == sign.LIFETIME + sign.SKEW
    assert win.inception + sign.SKEW <= NOW < win.renew == win.inception + sign.SKEW + sign.GRID
    # Constant until the RRset's own grid point, then the next day's window.
    assert sign.window(win.renew - 1, a) == win
    assert sign.window(win.renew, a).inception == win.inception + sign.GRID
    # Different RRsets renew at different times of the day (no flush of everything at once).
    renewals = {sign.window(NOW, f"rrset-{i}".encode()).renew for i in range(50)}
    assert len(renewals) > 40
    assert sign.window(NOW, b) != win


def test_signature_cache_signs_each_rrset_once_per_window() -> None:
    key = keys.generate(ZONE)
    cache = SignatureCache(max_entries=10)
    signers = [key.signer()]
    rdata = [bytes([192, 0, 2, 30])]
    sigs, renew = cache.rrsigs(signers, OWNER, 1, 30, rdata, 4, NOW)
    for _ in range(100):
        assert cache.rrsigs(signers, OWNER, 1, 30, rdata, 4, NOW + 60) == (sigs, renew)
    assert cache.made == 1 and cache.hits == 100
    # A different TTL (a health-capped answer) is another RRset: its own signature.
    capped, _ = cache.rrsigs(signers, OWNER, 1, 10, rdata, 4, NOW)
    assert capped != sigs and cache.made == 2
    # At its grid point the entry is renewed, not served stale.
    renewed, later = cache.rrsigs(signers, OWNER, 1, 30, rdata, 4, renew)
    assert renewed != sigs and later == renew + sign.GRID and cache.made == 3
    for i in range(30):
        cache.rrsigs(signers, OWNER, 1, 30, [bytes([10, 0, 0, i])], 4, NOW)
    assert len(cache) <= 10
    assert cache.earliest_expiration(NOW) is not None


def test_compact_denial_names_and_bitmaps() -> None:
    assert denial.successor(OWNER) == b"\x01\x00" + OWNER
    # The predecessor sorts before the name, with nothing plausible between.
    pred = denial.predecessor(b"\x01x\x03cdn\x04test\x00")
    assert pred == b"\x3f" + b"w" + b"\xff" * 62 + b"\x03cdn\x04test\x00"
    nsec = denial.nxname_rdata(OWNER)
    rd = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.NSEC, nsec, 0, len(nsec))
    assert rd.next == dns.name.from_text("\\000.www." + ZONE + ".")
    assert rd.to_text().split()[1:] == ["RRSIG", "NSEC", "NXNAME"]
    nodata = denial.nodata_rdata(OWNER, {1, 28}, 28)
    rd = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.NSEC, nodata, 0, len(nodata))
    assert rd.to_text().split()[1:] == ["A", "RRSIG", "NSEC"]
    # RFC 4034 4.1.2: window 0, 17 octets; A is bit 1, RRSIG and NSEC bits 46-47, NXNAME bit 128.
    assert sign.type_bitmap({1, 46, 47, 128}) == bytes([0, 17, 0x40, 0, 0, 0, 0, 0x03] + [0] * 10 + [0x80])
