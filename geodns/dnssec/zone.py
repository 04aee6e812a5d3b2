"""Signing a resolved answer: `Resolution` in, prepared wire bodies with RRSIGs out.

Called on an answer-cache miss for a query with DO set to a zone with
`dnssec:`; the result is cached like any other prepared answer, so a hot
signed query costs what an unsigned one does (parse, lookup, patch). The
stages follow `geodns.dns.resolve` and add, per RFC 4035 3.1:

- ANSWER: an RRSIG after each RRset (the owner's label count, or the
  wildcard's for a synthesized name, plus an NSEC proving the name itself is
  not there); DNSKEY, CDS and CDNSKEY at the apex come from the keys;
- AUTHORITY: for a negative answer the signed SOA and one compact NSEC
  (`denial`); for a referral the NS unsigned and a signed NSEC at the cut
  saying there is no DS;
- ADDITIONAL: signed when authoritative (not glue below a cut).

The RRSIG TTL is the RRset's own, the health-capped TTL of a steered answer
included. A body's deadline is the earliest renewal of the signatures in it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable

from dnslib import QTYPE, RD, RR, DNSBuffer, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from geodns.config.model import Node, Zone
from geodns.dns.cache import Prepared, smooth_schedule
from geodns.dns.resolve import Resolution, labels_of, name_of
from geodns.dns.stats import AnswerLabel
from geodns.dns.wire import FormErr, Rcode, read_name
from geodns.dnssec import denial
from geodns.dnssec.cache import SignatureCache
from geodns.dnssec.keys import Key, Signer, ds_rdata
from geodns.dnssec.sign import CDNSKEY, CDS, DNSKEY, NSEC, NXNAME, RRSIG
from geodns.dnssec.sign import labels_of as labels_of_owner

SIGNED = 1 << 16
"""Added to the qtype in answer-cache keys of DO queries to a signed zone: their answers differ."""
COMPACT_OK = 1 << 17
"""...and for DO queries that also set CO (RFC 9824 4): NXDOMAIN instead of NOERROR."""
CO_FLAG = 0x4000
"""The EDNS header flag CO, "compact answers OK", next to DO (0x8000)."""
_SOA, _NS, _CNAME = 6, 2, 5
_ADDRESS_TYPES = {4: QTYPE.A, 6: QTYPE.AAAA}

_caches: dict[tuple, tuple[SignatureCache, list[Signer]]] = {}
"""Signature caches and loaded private keys by zone and key set: a new snapshot (a reload,
a health change) that keeps the keys keeps the signatures."""


def signing_status(now: float | None = None) -> dict[str, tuple[int | None, int, int]]:
    """Per signed zone, this process's (earliest expiration of a signature still served, Unix
    time; signatures made; signature cache entries), for /metrics (`Stats.export`)."""
    now = time.time() if now is None else now
    out = {}
    for key, (cache, _signers) in _caches.items():
        out[key[0]] = (cache.earliest_expiration(now), cache.made, len(cache))  # the newest key set wins
    return out


class _Canonical(DNSBuffer):
    """A buffer that writes names uncompressed, in lower case (canonical RDATA: RFC 4034 6.2 as
    amended by RFC 6840 5.1 lowers the names of NS, CNAME, SOA, PTR, MX, SRV...; the other
    types we serve hold no names)."""

    def encode_name(self, name):
        if not isinstance(name, DNSLabel):
            name = DNSLabel(name)
        for label in name.label:
            self.pack("!B", len(label))
            self.append(label.lower())
        self.append(b"\x00")

    encode_name_nocompress = encode_name


def canonical_rdata(rr: RR) -> bytes:
    buffer = _Canonical()
    rr.rdata.pack(buffer)
    return bytes(buffer.data)


def _wire(label: DNSLabel) -> bytes:
    return b"".join(bytes((len(part),)) + part.lower() for part in label.label) + b"\x00"


class ZoneSigner:
    """What signing one zone needs: its keys (the signing ones loaded), the DNSKEY/CDS/CDNSKEY
    RRsets, the type sets per name for NODATA bitmaps, and the shared signature cache."""

    def __init__(self, zone: Zone, nodes: dict[str, Node], existing: frozenset[str], keys: tuple[Key, ...]):
        self.zone = zone
        self.nodes = nodes
        self.existing = existing
        self.keys = keys
        cache_key = (zone.origin, *((k.rdata, k.private, k.state) for k in keys))
        shared = _caches.get(cache_key)
        if shared is None:
            if len(_caches) >= 64:
                _caches.pop(next(iter(_caches)))
            shared = _caches[cache_key] = (SignatureCache(), [k.signer() for k in keys if k.signing])
        self.signatures, self.signers = shared
        self.origin = zone.origin
        self.ttl = zone.ns_ttl
        """DNSKEY, CDS and CDNSKEY TTL: the zone's NS TTL (3600 by default)."""
        published = [k for k in keys if k.published]
        active = [k for k in keys if k.signing]
        self.apex_sets = {
            DNSKEY: [k.rdata for k in published],
            CDNSKEY: [k.rdata for k in active],
            CDS: [ds_rdata(k) for k in active],
        }

    # --- what exists ---------------------------------------------------------------------

    def types_at(self, name: str) -> set[int]:
        """The RR types a name has (an empty non-terminal: none)."""
        types: set[int] = set()
        if name == self.origin:
            types |= {_SOA, _NS}
            types |= {t for t, values in self.apex_sets.items() if values}
        node = self.nodes.get(name)
        if node is None and name not in self.existing:
            node = self._wildcard_node(name)
        if node is None:
            return types
        for rrset in node.rrsets:
            code = getattr(QTYPE, rrset.rtype, None)
            if code is not None:
                types.add(code)
        if node.steered is not None:
            regions = self.zone.regions
            for region in node.steered.candidates:
                for endpoint in regions[region].endpoints if region in regions else ():
                    types.add(_ADDRESS_TYPES[endpoint.address.version])
        return types

    def _closest_encloser(self, name: str) -> str | None:
        origin = self.origin
        while name != origin and "." in name:
            name = name.split(".", 1)[1]
            if name in self.existing:
                return name
        return None

    def _wildcard_node(self, name: str) -> Node | None:
        encloser = self._closest_encloser(name)
        return self.nodes.get(f"*.{encloser}") if encloser is not None else None

    def wildcard_labels(self, name: str) -> int | None:
        """For a name answered from a wildcard, the RRSIG label count (the closest encloser's)."""
        if name in self.nodes or name in self.existing:
            return None
        encloser = self._closest_encloser(name)
        if encloser is None or f"*.{encloser}" not in self.nodes:
            return None
        return encloser.count(".") + 1 if encloser else 0

    # --- building ------------------------------------------------------------------------

    def apex_answer(self, qtype: int) -> Resolution | None:
        """DNSKEY, CDS or CDNSKEY at the apex (resolve knows nothing of them)."""
        values = self.apex_sets.get(qtype)
        if not values:
            return None
        res = Resolution()
        res.answer = [RR(self.origin + ".", qtype, ttl=self.ttl, rdata=RD(v)) for v in values]
        return res

    def prepare(self, res: Resolution, qname_wire: bytes, qtype: int, qclass: int, compact_ok: bool, now: float) -> Prepared:
        """`geodns.dns.resolve.prepare` for a DO query at `now` (Unix seconds): the same answer, signed."""
        name = name_of(qname_wire)
        if qtype == NXNAME:  # RFC 9824 3.5: an explicit query for NXNAME is a format error
            res = Resolution(rcode=Rcode.FORMERR, aa=False)
        elif name == self.origin and qtype in self.apex_sets:
            res = self.apex_answer(qtype) or res
        question = DNSQuestion(DNSLabel(labels_of(qname_wire.lower())), qtype, qclass)
        renew = [float("inf")]
        decision = res.decision
        if decision is None:
            body = self._build(res, question, [], qtype, compact_ok, now, renew)
            return Prepared([body], deadline=self._deadline(res, renew[0], now), meta=[AnswerLabel(self.origin, int(res.rcode), "", "")])
        owner = res.steered_owner
        bodies, labels, weights = [], [], []
        for branch in decision.branches:
            rrs = [
                RR(_owner_label(owner), _ADDRESS_TYPES[a.version], ttl=res.steered_ttl, rdata=_address_rdata(a))
                for a in branch.addresses
            ]
            bodies.append(self._build(res, question, rrs, qtype, compact_ok, now, renew))
            labels.append(branch.regions)
            weights.append(branch.weight)
        client = res.client
        return Prepared(
            bodies,
            schedule=smooth_schedule(weights) if len(bodies) > 1 else None,
            scope=client.prefix if client is not None and client.address is not None else None,
            deadline=self._deadline(res, renew[0], now),
            labels=labels,
            client_dependent=True,
            meta=[AnswerLabel(self.origin, 0, ",".join(r), decision.decided_by, decision.failopen) for r in labels],
        )

    @staticmethod
    def _deadline(res: Resolution, renew: float, now: float) -> float | None:
        """When (Unix seconds, as `now`) the body must be rebuilt: its first signature renewal,
        or the steering deadline when sooner."""
        deadline = now + max(1.0, renew - now) if renew != float("inf") else None
        if res.deadline is not None:
            deadline = res.deadline if deadline is None else min(deadline, res.deadline)
        return deadline

    def _build(self, res: Resolution, question: DNSQuestion, extra: list[RR], qtype: int, compact_ok: bool, now: float, renew: list[float]) -> bytes:
        answer = res.answer + extra
        authority = list(res.authority)
        rcode = int(res.rcode)
        referral = not res.aa and not rcode and authority and authority[0].rtype == _NS
        signed_answer = self._sign_section(answer, now, renew, wildcards=True)
        nsecs: list[RR] = []
        for rr in answer:
            if rr.rtype == RRSIG:
                continue
            owner_name = name_of(_wire(rr.rname))
            if self.wildcard_labels(owner_name) is not None:
                nsecs.extend(self._wildcard_proof(owner_name))
                break
        if referral:
            cut = authority[0].rname
            owner = _wire(cut)
            nsecs.append(RR(cut, NSEC, ttl=self._negative_ttl(), rdata=RD(denial.nsec_rdata(denial.successor(owner), {_NS}))))
        elif authority and authority[0].rtype == _SOA and not answer_has(answer, qtype):
            denied = _denied_name(question, answer)
            owner = _wire(denied)
            if rcode == 3:  # NXDOMAIN: compact answer (RFC 9824 3.1)
                rdata = denial.nxname_rdata(owner)
                if not compact_ok:
                    rcode = 0
            else:
                rdata = denial.nodata_rdata(owner, self.types_at(name_of(owner)), qtype)
            nsecs.append(RR(denied, NSEC, ttl=self._negative_ttl(), rdata=RD(rdata)))
            if qtype == NSEC and not answer:
                # An explicit NSEC query: the NSEC made for the name is the answer (its bitmap
                # lists NSEC, so a NODATA for NSEC would contradict itself).
                signed_answer, authority, nsecs, rcode = self._sign_section(nsecs, now, renew), [], [], 0
        if referral:
            signed_authority = authority + self._sign_section(nsecs, now, renew)
        else:
            signed_authority = self._sign_section(authority + nsecs, now, renew)
        additional = self._sign_section(res.additional, now, renew) if res.aa else list(res.additional)
        header = DNSHeader(id=0, qr=1, aa=1 if res.aa else 0, ra=0, rd=0, rcode=rcode)
        record = DNSRecord(header, q=question)
        for rr in signed_answer:
            record.add_answer(rr)
        for rr in signed_authority:
            record.add_auth(rr)
        for rr in additional:
            record.add_ar(rr)
        return record.pack()

    def _negative_ttl(self) -> int:
        soa = self.zone.soa
        return min(soa.ttl, soa.minimum)  # RFC 9077: the NSEC TTL is the negative TTL

    def _wildcard_proof(self, name: str) -> list[RR]:
        """An NSEC covering the next closer name of a wildcard answer (RFC 4035 3.1.3.3)."""
        encloser = self._closest_encloser(name)
        assert encloser is not None
        keep = encloser.count(".") + 2 if encloser else 1
        next_closer = ".".join(name.split(".")[-keep:])
        wire = _wire(_owner_label(next_closer))
        owner = denial.predecessor(wire)
        rdata = denial.nsec_rdata(denial.after_subtree(wire), set())
        return [RR(_label_of_wire(owner), NSEC, ttl=self._negative_ttl(), rdata=RD(rdata))]

    def _sign_section(self, rrs: list[RR], now: float, renew: list[float], wildcards: bool = False) -> list[RR]:
        """The RRs with an RRSIG after each RRset of one owner and type. With `wildcards` (the
        answer section), an RRset synthesized from a wildcard is signed with the wildcard's
        label count; the NSECs made here are never synthesized, whatever their owner."""
        out: list[RR] = []
        for group in _rrsets(rrs):
            out.extend(group)
            first = group[0]
            owner = _wire(first.rname)
            labels = self.wildcard_labels(name_of(owner)) if wildcards else None
            count = labels if labels is not None else labels_of_owner(owner)
            rdatas = [canonical_rdata(rr) for rr in group]
            sigs, renew_at = self.signatures.rrsigs(self.signers, owner, first.rtype, first.ttl, rdatas, count, now)
            if renew_at < renew[0]:
                renew[0] = renew_at
            out.extend(RR(first.rname, RRSIG, ttl=first.ttl, rdata=RD(sig)) for sig in sigs)
        return out


def answer_has(answer: list[RR], qtype: int) -> bool:
    return any(rr.rtype == qtype for rr in answer)


def _denied_name(question: DNSQuestion, answer: list[RR]) -> DNSLabel:
    """The name a negative answer speaks of: the last CNAME target, else the query name."""
    name = question.qname
    for rr in answer:
        if rr.rtype == _CNAME:
            name = rr.rdata.label
    return name


def _rrsets(rrs: Iterable[RR]) -> list[list[RR]]:
    groups: dict[tuple, list[RR]] = {}
    for rr in rrs:
        groups.setdefault((_wire(rr.rname), rr.rtype), []).append(rr)
    return list(groups.values())


def _owner_label(name: str) -> DNSLabel:
    from geodns.dns.resolve import _label

    label = _label(name)
    return label if isinstance(label, DNSLabel) else DNSLabel(label)


def _label_of_wire(wire: bytes) -> DNSLabel:
    labels, pos = [], 0
    while wire[pos]:
        labels.append(wire[pos + 1 : pos + 1 + wire[pos]])
        pos += wire[pos] + 1
    return DNSLabel(labels)


def _address_rdata(address):
    from dnslib import AAAA, A

    return A(str(address)) if address.version == 4 else AAAA(str(address))


def query_flags(data: bytes, question_end: int) -> int:
    """The EDNS flags of a query whose OPT record follows the question (the common shape;
    otherwise 0: CO is then not seen, and the answer is the plain compact one)."""
    if len(data) >= question_end + 11 and data[question_end] == 0 and data[question_end + 1 : question_end + 3] == b"\x00\x29":
        return struct.unpack_from("!H", data, question_end + 7)[0]
    return 0


def signed_key(key: tuple, data: bytes, query) -> tuple:
    """The answer-cache key of a DO query to a signed zone: the qtype with SIGNED (and
    COMPACT_OK when the query set CO) added, so signed and plain answers never mix."""
    flags = SIGNED
    if query_flags(data, query.question_end) & CO_FLAG:
        flags |= COMPACT_OK
    return (key[0], key[1] | flags)


def echo_co(response: bytes) -> bytes:
    """Set CO in the response's OPT record (RFC 9824 4: the responder echoes CO)."""
    try:
        an, ns, ar = struct.unpack_from("!HHH", response, 6)
        pos = read_name(response, 12, allow_pointers=True) + 4
        for i in range(an + ns + ar):
            pos = read_name(response, pos, allow_pointers=True)
            rtype, rdlen = struct.unpack_from("!H", response, pos)[0], struct.unpack_from("!H", response, pos + 8)[0]
            if rtype == 41 and i >= an + ns:
                at = pos + 6  # the high byte of the EDNS flags (DO is 0x80, CO 0x40)
                return response[:at] + bytes((response[at] | CO_FLAG >> 8,)) + response[at + 1 :]
            pos += 10 + rdlen
    except (struct.error, FormErr, IndexError):
        pass
    return response
