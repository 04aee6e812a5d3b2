"""Explain an answer: where the client was placed and what each step did.

Used by `geodns query` and the status page. It runs the same code as the data
plane (`answer()` for the wire answer, `resolve()` and the chain for the
reasoning) on the same snapshot, so the explanation cannot drift from what
the server actually answers.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption

from geodns.dns.answer import answer, locate, narrowing_of
from geodns.dns.resolve import resolve
from geodns.dns.snapshot import Snapshot
from geodns.dns.wire import Rcode


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


def explain(snap: Snapshot, name: str, qtype: str, client: str) -> Explanation:
    """Raises ValueError for a client that is not an IP address or an unknown type."""
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
    wire = answer(snap, query.pack(), "127.0.0.1", udp=False)
    reply = DNSRecord.parse(wire)
    records = tuple(str(rr) for rr in reply.rr)
    rcode = Rcode(reply.header.rcode).name if reply.header.rcode in Rcode._value2member_map_ else str(reply.header.rcode)
    czone = snap.find_zone(name)
    placed, network, steps, regions, failopen, decided_by = "not needed (the answer does not depend on the client)", None, (), (), False, None
    if czone is not None:
        located, _ = locate(snap, czone, address, "ECS", narrowing_of(snap, czone, name, QTYPE.reverse[qtype]), name)
        res = resolve(snap, czone, name, QTYPE.reverse[qtype], lambda: located, explain=True)
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
