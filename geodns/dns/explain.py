"""Explain an answer: where the client was placed and what each step did.

`explain` serves `geodns query` and the admin API's /v1/explain; `reason` and
`QueryLog` the query log (`--query-log`), one line per query with why it got
its answer. They run the same code as the data plane (`answer()` for the wire
answer, `resolve()` and the chain for the reasoning) on the same snapshot, so
the explanation cannot drift from what the server actually answers. Off the
answer path: each explanation resolves again.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption

from geodns.dns.answer import answer, client_address, locate, narrowing_of, sender_address
from geodns.dns.resolve import name_of, resolve
from geodns.dns.snapshot import Snapshot
from geodns.dns.wire import CLASS_IN, Query, Rcode, parse_query

querylog = logging.getLogger("geodns.query")


@dataclass(frozen=True, slots=True)
class Explanation:
    name: str
    qtype: str
    client: str
    placed: str
    network: str | None
    zone: str | None
    steps: tuple[dict, ...]
    rcode: str
    records: tuple[str, ...]
    regions: tuple[str, ...]
    failopen: bool
    decided_by: str | None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.qtype,
            "client": self.client,
            "placed": self.placed,
            "network": self.network,
            "zone": self.zone,
            "steps": list(self.steps),
            "rcode": self.rcode,
            "answer": list(self.records),
            "regions": list(self.regions),
            "failopen": self.failopen,
            "decided_by": self.decided_by,
        }

    @classmethod
    def from_dict(cls, doc: dict) -> Explanation:
        """The inverse of `as_dict` (an admin API's /v1/explain answer)."""
        return cls(
            name=doc["name"], qtype=doc["type"], client=doc["client"], placed=doc["placed"],
            network=doc.get("network"), zone=doc.get("zone"), steps=tuple(doc.get("steps") or ()),
            rcode=doc["rcode"], records=tuple(doc.get("answer") or ()), regions=tuple(doc.get("regions") or ()),
            failopen=bool(doc.get("failopen")), decided_by=doc.get("decided_by"),
        )

    def text(self) -> str:
        lines = [f"{self.name} {self.qtype} for client {self.client}"]
        lines.append(f"  client placed: {self.placed}")
        if self.network:
            lines.append(f"  GeoIP network: {self.network} (the ECS scope of the answer)")
        if self.zone is None:
            lines.append("  not in any of our zones: REFUSED")
        else:
            lines.append(f"  zone: {self.zone}")
        for i, step in enumerate(self.steps, 1):
            after = " | ".join(", ".join(branch) or "(none)" for branch in step["after"])
            lines.append(f"  {i}. {step['step']}: {', '.join(step['before']) or '-'} -> {after}")
            lines.append(f"       {step['note']}")
        if self.failopen:
            lines.append("  every candidate was down: failing open")
        lines.append(f"  answer ({self.rcode}):")
        for record in self.records or ("(no records)",):
            lines.append(f"    {record}")
        if self.regions:
            lines.append(f"  regions: {', '.join(self.regions)}")
        return "\n".join(lines)


def explain(snap: Snapshot, name: str, qtype: str, client: str, now: float) -> Explanation:
    """The answer to `name` for `client` at `now` (Unix seconds) and why. Raises ValueError for
    a client that is not an IP address or an unknown type."""
    address = ipaddress.ip_address(client)
    qtype = qtype.upper()
    if qtype not in QTYPE.reverse:
        raise ValueError(f"unknown query type {qtype!r}")
    name = name.rstrip(".").lower()
    # The wire answer, exactly as a resolver sending this client's /32 (/128) as ECS would get it.
    query = DNSRecord.question(name + ".", qtype)
    query.header.rd = 0
    family = 1 if address.version == 4 else 2
    ecs = family.to_bytes(2, "big") + bytes([address.max_prefixlen, 0]) + address.packed
    query.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(8, ecs)]))
    query.header.id = random.randrange(65536)
    wire = answer(snap, query.pack(), "127.0.0.1", now, udp=False)
    reply = DNSRecord.parse(wire)
    records = tuple(str(rr) for rr in reply.rr)
    rcode = Rcode(reply.header.rcode).name if reply.header.rcode in Rcode._value2member_map_ else str(reply.header.rcode)
    czone = snap.find_zone(name)
    placed, network, steps, regions, failopen, decided_by = "not needed (the answer does not depend on the client)", None, (), (), False, None
    if czone is not None:
        number = QTYPE.reverse[qtype]
        located, _ = locate(snap, czone, address, "ECS", narrowing_of(snap, czone, name, number, now), name)
        res = resolve(snap, czone, name, number, lambda: located, now, explain=True)
        if res.decision is not None:
            loc = located.location
            placed = f"{address}: {loc.describe()}" if loc else f"{address}: no GeoIP record (the record's default applies)"
            network = str(located.network)
            steps = tuple(
                {"step": t.step, "before": list(t.before), "after": [list(a) for a in t.after], "note": t.note}
                for t in res.decision.trace
            )
            regions = res.decision.regions
            failopen = res.decision.failopen
            decided_by = res.decision.decided_by
    return Explanation(
        name=name,
        qtype=qtype,
        client=str(address),
        placed=placed,
        network=network,
        zone=czone.zone.origin if czone else None,
        steps=steps,
        rcode=rcode,
        records=records,
        regions=regions,
        failopen=failopen,
        decided_by=decided_by,
    )


def reason(snap: Snapshot, query: Query, client: str, now: float) -> str:
    """Why a query got its answer, as key=value pairs: for a steered name the deciding step, the
    regions of each branch, fail-open, the client's place and the network the answer covers;
    otherwise what kind of answer it is. Resolves again (off the answer path, sampled)."""
    if query.qclass != CLASS_IN:
        return "reason=refused"
    name = name_of(query.qname)
    czone = snap.find_zone(name)
    if czone is None:
        return "reason=not-our-zone"
    address, origin = client_address(query, client)
    located, _ = locate(snap, czone, address, origin, narrowing_of(snap, czone, name, query.qtype, now), name)
    if origin == "ECS" and snap.measured is not None:
        located.resolver = sender_address(client)  # as the answer path: the resolver's RTTs may steer
    res = resolve(snap, czone, name, query.qtype, lambda: located, now, explain=True)
    decision = res.decision
    if decision is None:
        if res.rcode == Rcode.REFUSED:
            return "reason=refused"
        if not res.aa:
            return "reason=referral"
        if res.rcode == Rcode.NXDOMAIN:
            return "reason=nxdomain"
        return "reason=static" if res.answer else "reason=nodata"
    regions = "|".join(",".join(b.regions) for b in decision.branches)
    place = located.location.describe() if located.location is not None else "unknown"
    # The latency step's note says which source decided (measured or the table) and the RTTs.
    rtts = "".join(f' latency="{t.note}"' for t in decision.trace if t.step == "latency" and t.note)
    return (
        f"reason={decision.decided_by} regions={regions} failopen={str(decision.failopen).lower()} "
        f'by={origin.replace(" ", "-")} network={located.network} place="{place}"{rtts}'
    )


@dataclass(frozen=True, slots=True)
class QueryLog:
    """`--query-log`: one line per query, or per `sample` share of them (`--query-log-sample`).

    The server builds it from its options and hands it to its transports and, pickled, to
    its workers' (it is plain data)."""

    sample: float = 1.0
    """Share of queries logged, in (0, 1]."""

    def log(self, snap: Snapshot, client: str, data: bytes, response: bytes | None, transport: str, now: float) -> None:
        """Who asked what, what they got, and why (`reason`: the step that decided a steered
        answer, the regions, the place)."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        try:
            query = parse_query(data)
        except Exception:  # noqa: BLE001 - logging must not fail on junk
            query = None
        what, why = "malformed", ""
        if query is not None:
            what = f"name={name_of(query.qname)} type={query.qtype}"
            if query.edns is not None and query.edns.ecs is not None:
                ecs = query.edns.ecs
                fam = socket.AF_INET if ecs.family == 1 else socket.AF_INET6
                what += f" subnet={socket.inet_ntop(fam, ecs.address)}/{ecs.source}"
            try:
                why = " " + reason(snap, query, client, now)
            except Exception:  # noqa: BLE001 - as above
                why = " reason=unknown"
        rcode = response[3] & 0xF if response and len(response) > 3 else -1
        answer_text = "-"
        if response:
            try:
                answer_text = ",".join(str(rr.rdata) for rr in DNSRecord.parse(response).rr) or "-"
            except Exception:  # noqa: BLE001 - as above
                answer_text = "unparsed"
        querylog.info(
            "query client=%s transport=%s %s rcode=%d answer=%s size=%d%s",
            client, transport, what, rcode, answer_text, len(response or b""), why,
        )
