"""The general path: find what a query asks for in a zone and build the answer.

Runs on an answer-cache miss only. Stages as in Knot: find the node (exact,
delegation, wildcard, empty non-terminal), ANSWER (RRsets, CNAME chain,
steering), AUTHORITY (SOA for negative answers, NS for referrals), ADDITIONAL
(glue). Messages are built with dnslib; the hot path patches the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import (
    AAAA,
    CAA,
    CNAME,
    MX,
    NS,
    QTYPE,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)

from geodns.config.model import Node, RRset
from geodns.dns.cache import Prepared, smooth_schedule
from geodns.dns.snapshot import CompiledZone, Snapshot
from geodns.dns.stats import AnswerLabel
from geodns.dns.wire import QType, Rcode
from geodns.steer import Client, Context, Decision, run_chain

MAX_CNAME_CHAIN = 8
log = logging.getLogger("geodns.steer")


@dataclass(slots=True)
class Resolution:
    """What the stages found, before it is turned into wire bytes."""

    rcode: int = Rcode.NOERROR
    aa: bool = True
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    decision: Decision | None = None
    """Set when a steered node answered: its branches replace the steered RRset."""
    steered_owner: str = ""
    steered_node: Node | None = None
    """The steered node that answered (the query name's own, or a wildcard's)."""
    steered_ttl: int = 0
    client: Client | None = None
    deadline: float | None = None
    """When the answer must be decided again (a verdict's time bound; Unix seconds, as `now`)."""


def labels_of(qname_wire: bytes) -> list[bytes]:
    labels, pos = [], 0
    while qname_wire[pos]:
        length = qname_wire[pos]
        labels.append(qname_wire[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return labels


def name_of(qname_wire: bytes) -> str:
    """Lower-case presentation form without the trailing dot; odd bytes escaped, so they match nothing."""
    parts = []
    for label in labels_of(qname_wire.lower()):
        if all(0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) for b in label):
            parts.append(label.decode("ascii"))
        else:
            parts.append("".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}" for b in label))
    return ".".join(parts)


def resolve(
    snap: Snapshot,
    czone: CompiledZone,
    name: str,
    qtype: int,
    locate: Callable[[], Client],
    now: float,
    explain: bool = False,
) -> Resolution:
    """What the zone says to `qtype` at `name` at `now` (Unix seconds: steering compares it with
    verdicts' time bounds); `explain` keeps the steering trace (`geodns query`)."""
    zone = czone.zone
    res = Resolution()
    if qtype in (QType.AXFR, QType.IXFR):
        res.rcode, res.aa = Rcode.REFUSED, False
        return res
    owner = name
    for _ in range(MAX_CNAME_CHAIN + 1):
        # Delegations below the apex: a referral, not an authoritative answer.
        cut = _cut_above(czone, owner)
        if cut is not None and not (owner == cut and qtype == QType.DS):
            if res.answer:
                return res  # a CNAME led out of our authority: the resolver follows it
            res.aa = False
            node = czone.nodes[cut]
            ns = next(r for r in node.rrsets if r.rtype == "NS")
            res.authority.extend(_rrs(cut, ns))
            _glue(czone, ns.values, res)
            return res
        node = czone.nodes.get(owner)
        if node is None and owner not in czone.existing:
            node = _wildcard(czone, owner)
        if node is None and owner == zone.origin:
            node = Node(name=zone.origin, ttl=zone.ttl)
        if node is None:
            # An empty non-terminal is NODATA; otherwise NXDOMAIN, also at the end of
            # a CNAME chain (the rcode speaks of the last name, RFC 6604).
            _negative(czone, res, Rcode.NOERROR if owner in czone.existing else Rcode.NXDOMAIN)
            return res
        cname = next((r for r in node.rrsets if r.rtype == "CNAME"), None)
        if cname is not None and qtype not in (QType.CNAME, QType.ANY):
            res.answer.extend(_rrs(owner, cname))
            target = cname.values[0]
            if not (target == zone.origin or target.endswith("." + zone.origin)):
                return res  # out of zone: the resolver follows it
            owner = target
            continue
        _answer_node(snap, czone, node, owner, qtype, res, locate, now, explain)
        return res
    # A CNAME loop or an overlong chain: answer what we have (RFC 1034 permits a partial chain).
    return res


def _cut_above(czone: CompiledZone, owner: str) -> str | None:
    if not czone.cuts:
        return None
    origin = czone.zone.origin
    name = owner
    while name and name != origin:
        if name in czone.cuts:
            return name
        name = name.split(".", 1)[1] if "." in name else ""
    return None


def _wildcard(czone: CompiledZone, owner: str) -> Node | None:
    """RFC 4592: the source of synthesis is `*.` + the closest encloser."""
    origin = czone.zone.origin
    name = owner
    while name != origin and "." in name:
        name = name.split(".", 1)[1]
        if name in czone.existing:
            return czone.nodes.get(f"*.{name}")
    return None


def _answer_node(
    snap: Snapshot,
    czone: CompiledZone,
    node: Node,
    owner: str,
    qtype: int,
    res: Resolution,
    locate: Callable[[], Client],
    now: float,
    explain: bool = False,
) -> None:
    zone = czone.zone
    apex = owner == zone.origin
    wanted = QTYPE.get(qtype) if qtype != QType.ANY else None
    if apex and qtype in (QType.SOA, QType.ANY):
        res.answer.append(_soa_rr(czone, zone.soa.ttl))
        if qtype == QType.ANY:
            return  # RFC 8482: one RRset is a minimal answer
        return
    if apex and qtype == QType.NS:
        ns = RRset("NS", zone.ns_ttl, tuple(n.name for n in zone.nameservers))
        res.answer.extend(_rrs(owner, ns))
        _glue(czone, ns.values, res)
        return
    if node.steered is not None and qtype in (QType.A, QType.AAAA, QType.ANY):
        if _steer(snap, czone, node, owner, qtype, locate(), res, now, explain):
            return
        if qtype != QType.ANY:
            _negative(czone, res, Rcode.NOERROR)
            return
    found = False
    for rrset in node.rrsets:
        if wanted is None or rrset.rtype == wanted:
            found = True
            res.answer.extend(_rrs(owner, rrset))
            if rrset.rtype in ("MX", "SRV"):
                _glue(czone, tuple(v[-1] for v in rrset.values), res, authoritative_only=True)
            if wanted is None:
                return  # ANY: the first RRset (RFC 8482)
    if not found:
        _negative(czone, res, Rcode.NOERROR)


def steer(snap: Snapshot, czone: CompiledZone, node: Node, owner: str, qtype: int, client: Client, now: float) -> Resolution:
    """What `resolve` answers to A or AAAA at a steered node, for a query name that is the
    node itself (no CNAME, no delegation): the answer path calls this on a new place."""
    res = Resolution()
    if not _steer(snap, czone, node, owner, qtype, client, res, now, False):
        _negative(czone, res, Rcode.NOERROR)
    return res


def _steer(
    snap: Snapshot,
    czone: CompiledZone,
    node: Node,
    owner: str,
    qtype: int,
    client: Client,
    res: Resolution,
    now: float,
    explain: bool,
) -> bool:
    """Run the node's chain for the client into `res`; False when no branch has an address of the family."""
    ctx = Context(
        client=client,
        regions=czone.regions,
        region_up=czone.region_up,
        verdicts=snap.verdicts,
        family=6 if qtype == QType.AAAA else 4,
        default=node.steered.default,
        latency=czone.latency,
        measured=snap.measured,
        utilisation=snap.utilisation,
        now=now,
        explain=explain,
        memo=snap.steering,
    )
    decision = run_chain(node.steered, ctx)
    if decision.failopen:
        # Once per cache entry (answers are cached per place and snapshot), not per query.
        log.warning(
            "FAIL-OPEN name=%s type=%s every candidate is down; answering %s",
            owner, QTYPE.get(qtype), " | ".join(",".join(b.regions) for b in decision.branches),
        )
    if not decision.branches:
        return False
    res.decision = decision
    res.client = client
    res.steered_owner = owner
    res.steered_node = node
    ttl = node.ttl
    if decision.degraded and node.steered.failover_ttl is not None:
        ttl = min(ttl, node.steered.failover_ttl)
    if decision.until is not None:
        remaining = decision.until - ctx.now
        ttl = max(1, min(ttl, int(remaining))) if remaining > 0 else min(ttl, 1)
        res.deadline = now + max(0.5, min(remaining, ttl))
    res.steered_ttl = ttl
    return True


def _negative(czone: CompiledZone, res: Resolution, rcode: int) -> None:
    """NXDOMAIN or NODATA with the SOA; its TTL is the lesser of the SOA's TTL and MINIMUM (RFC 2308 3)."""
    soa = czone.zone.soa
    res.rcode = rcode
    res.authority.append(_soa_rr(czone, min(soa.ttl, soa.minimum)))


def _soa_rr(czone: CompiledZone, ttl: int) -> RR:
    soa = czone.zone.soa
    return RR(
        czone.zone.origin + ".",
        QTYPE.SOA,
        ttl=ttl,
        rdata=SOA(soa.mname + ".", soa.rname + ".", (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)),
    )


def _glue(czone: CompiledZone, targets, res: Resolution, authoritative_only: bool = False) -> None:
    """A/AAAA for in-zone targets: NS glue from `nameservers`, or plain records of the target."""
    zone = czone.zone
    for target in targets:
        for ns in zone.nameservers:
            if ns.name == target and not authoritative_only:
                for address in ns.glue:
                    res.additional.append(_addr_rr(target, address, zone.ns_ttl))
        node = czone.nodes.get(target)
        if node is not None:
            for rrset in node.rrsets:
                if rrset.rtype in ("A", "AAAA"):
                    res.additional.extend(_rrs(target, rrset))


def _addr_rr(owner: str, address, ttl: int) -> RR:
    if address.version == 4:
        return RR(_label(owner), QTYPE.A, ttl=ttl, rdata=A(str(address)))
    return RR(_label(owner), QTYPE.AAAA, ttl=ttl, rdata=AAAA(str(address)))


def _txt_chunks(text: str) -> list[bytes]:
    data = text.encode("utf-8")
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


def _label(owner: str) -> str | DNSLabel:
    """An owner name for dnslib. Names from queries may hold any octet (RFC 2181 11); `name_of`
    escaped those as \\DDD, which we turn back into bytes rather than let dnslib re-parse text."""
    if "\\" not in owner:
        return owner + "."
    labels, current, i = [], bytearray(), 0
    while i < len(owner):
        char = owner[i]
        if char == "\\":
            current.append(int(owner[i + 1 : i + 4]))
            i += 4
            continue
        if char == ".":
            labels.append(bytes(current))
            current = bytearray()
        else:
            current.append(ord(char))
        i += 1
    labels.append(bytes(current))
    return DNSLabel(labels)


def _rrs(owner: str, rrset: RRset) -> list[RR]:
    name = _label(owner)
    ttl = rrset.ttl
    out = []
    for value in rrset.values:
        kind = rrset.rtype
        if kind in ("A", "AAAA"):
            out.append(_addr_rr(owner, value, ttl))
        elif kind == "CNAME":
            out.append(RR(name, QTYPE.CNAME, ttl=ttl, rdata=CNAME(value + ".")))
        elif kind == "NS":
            out.append(RR(name, QTYPE.NS, ttl=ttl, rdata=NS(value + ".")))
        elif kind == "TXT":
            out.append(RR(name, QTYPE.TXT, ttl=ttl, rdata=TXT(_txt_chunks(value))))
        elif kind == "MX":
            out.append(RR(name, QTYPE.MX, ttl=ttl, rdata=MX(value[1] + ".", value[0])))
        elif kind == "SRV":
            out.append(RR(name, QTYPE.SRV, ttl=ttl, rdata=SRV(value[0], value[1], value[2], value[3] + ".")))
        elif kind == "CAA":
            out.append(RR(name, QTYPE.CAA, ttl=ttl, rdata=CAA(value[0], value[1], value[2])))
    return out


def prepare(res: Resolution, qname_wire: bytes, qtype: int, qclass: int, zone: str = "") -> Prepared:
    """Turn a resolution into wire answers (one per weighted branch), ID 0, no OPT."""
    question = DNSQuestion(DNSLabel(labels_of(qname_wire.lower())), qtype, qclass)

    def build(extra: list[RR]) -> bytes:
        header = DNSHeader(id=0, qr=1, aa=1 if res.aa else 0, ra=0, rd=0, rcode=res.rcode)
        record = DNSRecord(header, q=question)
        for rr in res.answer + extra:
            record.add_answer(rr)
        for rr in res.authority:
            record.add_auth(rr)
        for rr in res.additional:
            record.add_ar(rr)
        return record.pack()

    decision = res.decision
    if decision is None:
        return Prepared([build([])], deadline=None, meta=[AnswerLabel(zone, int(res.rcode), "", "")])
    owner = res.steered_owner
    bodies, labels, weights = [], [], []
    for branch in decision.branches:
        rrs = [_addr_rr(owner, a, res.steered_ttl) for a in branch.addresses]
        bodies.append(build(rrs))
        labels.append(branch.regions)
        weights.append(branch.weight)
    client = res.client
    scope = client.prefix if client is not None and client.address is not None else None
    return Prepared(
        bodies,
        schedule=smooth_schedule(weights) if len(bodies) > 1 else None,
        scope=scope,
        deadline=res.deadline,
        labels=labels,
        client_dependent=True,
        meta=[AnswerLabel(zone, 0, ",".join(regions), decision.decided_by, decision.failopen) for regions in labels],
    )
