"""Answers steered by measured RTTs: the example zone's `fast` name, over the real answer path."""

import time

from dnsclient import query
from dnslib import QTYPE, DNSRecord

from geodns.control.controller import Controller
from geodns.dns.answer import answer
from geodns.steer.measured import Measured, parse_network

LONDON_NET = "81.2.69.0/24"


def ask(c: Controller, name: str, subnet: str, prefix: int = 32, source: str = "127.0.0.1") -> tuple[list[str], int]:
    # The same bytes from every source (ID 7): level 0 must not mix them up.
    q = query(name, "A", ecs=f"{subnet}/{prefix}", qid=7).to_wire()
    reply = DNSRecord.parse(answer(c.snapshot, q, source, time.time(), udp=True))
    scope = next(opt.data[3] for rr in reply.ar if rr.rtype == QTYPE.OPT for opt in rr.rdata if opt.code == 8)
    return [str(rr.rdata) for rr in reply.rr], scope


def test_fast_steers_by_measurement_when_present_and_by_table_otherwise():
    c = Controller("zones", "data/geoip-bundle.mmdb")
    c.start()
    # The table puts London's 81.2.69.0/24 in eu-west (192.0.2.30).
    assert ask(c, "fast.gslb.example.test", "81.2.69.160")[0] == ["192.0.2.30"]
    c.set_measured(Measured({parse_network(LONDON_NET): (("us-east", 3.0), ("eu-west", 40.0))}, "10% or 5 ms"))
    addresses, scope = ask(c, "fast.gslb.example.test", "81.2.69.160")
    assert addresses == ["192.0.2.10"] and scope >= 24
    # Another /24 of the same place is not measured: the table again, and not from the cache.
    assert ask(c, "fast.gslb.example.test", "81.2.68.1")[0] == ["192.0.2.30"]
    assert ask(c, "fast.gslb.example.test", "81.2.69.1")[0] == ["192.0.2.10"]
    # A name without a latency step is untouched by measurement.
    assert ask(c, "www.gslb.example.test", "81.2.69.160")[0] == ["192.0.2.30"]
    c.set_measured(None)
    assert ask(c, "fast.gslb.example.test", "81.2.69.160")[0] == ["192.0.2.30"]


def test_same_ranking_keeps_the_cache_and_a_new_one_drops_it():
    c = Controller("zones", "data/geoip-bundle.mmdb")
    c.start()
    m = Measured({parse_network(LONDON_NET): (("us-east", 3.0),)})
    c.set_measured(m)
    before = c.snapshot
    c.set_measured(Measured({parse_network(LONDON_NET): (("us-east", 3.0),)}))
    assert c.snapshot is before
    c.set_health_verdicts({})
    c.set_measured(Measured({parse_network(LONDON_NET): (("eu-west", 3.0),)}))
    assert c.snapshot.cache is not before.cache


def test_an_unmeasured_ecs_network_is_steered_by_its_measured_resolver():
    c = Controller("zones", "data/geoip-bundle.mmdb")
    c.start()
    c.set_measured(Measured({
        parse_network("198.51.100.0/24"): (("us-west", 4.0), ("eu-west", 90.0)),  # a resolver's network
        parse_network(LONDON_NET): (("us-east", 3.0), ("eu-west", 40.0)),
    }))
    for _ in range(2):  # the second time from the caches
        # London's 81.2.68.0/24 is not measured: its resolver's network decides ...
        assert ask(c, "fast.gslb.example.test", "81.2.68.1", source="198.51.100.53")[0] == ["192.0.2.20"]
        # ... and the same query bytes from an unmeasured resolver get the table's answer.
        assert ask(c, "fast.gslb.example.test", "81.2.68.1", source="203.0.113.53")[0] == ["192.0.2.30"]
        # A measured ECS network wins over its resolver's.
        assert ask(c, "fast.gslb.example.test", "81.2.69.160", source="198.51.100.53")[0] == ["192.0.2.10"]
    # The query log says which decided.
    from geodns.dns.explain import reason
    from geodns.dns.wire import parse_query

    q = query("fast.gslb.example.test", "A", ecs="81.2.68.0/24").to_wire()
    why = reason(c.snapshot, parse_query(q), "198.51.100.53", time.time())
    assert 'latency="measured resolver 198.51.100.0/24: us-west 4.0 ms' in why, why
