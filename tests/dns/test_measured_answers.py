"""Answers steered by measured RTTs: the example zone's `fast` name, over the real answer path."""

import ipaddress

from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption

from geodns.control.controller import Controller
from geodns.dns.answer import answer
from geodns.steer.measured import Measured, parse_network

LONDON_NET = "81.2.69.0/24"


def ask(c: Controller, name: str, subnet: str, prefix: int = 32) -> tuple[list[str], int]:
    q = DNSRecord.question(name, "A")
    address = ipaddress.ip_address(subnet)
    ecs = b"\x00\x01" + bytes([prefix, 0]) + address.packed[: (prefix + 7) // 8]
    q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(8, ecs)]))
    reply = DNSRecord.parse(answer(c.snapshot, q.pack(), "127.0.0.1", udp=True))
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
