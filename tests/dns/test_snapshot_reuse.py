"""A new snapshot keeps the answer cache only when no answer could differ."""

import time

from dnslib import EDNS0, DNSRecord, EDNSOption

from geodns.control.controller import Controller
from geodns.dns.answer import answer
from geodns.steer import Verdict


def started() -> Controller:
    controller = Controller("zones", "data/geoip-bundle.mmdb")
    controller.start()
    return controller


def test_moving_verdict_bounds_keeps_the_cache():
    c = started()
    c.set_health_verdicts({"us-east": Verdict(True, until=10.0)})
    before = c.snapshot
    c.set_health_verdicts({"us-east": Verdict(True, until=20.0, cause="probe ok")})
    assert c.snapshot.generation == before.generation + 1
    assert c.snapshot.cache is before.cache


def test_a_state_change_drops_the_cache():
    c = started()
    c.set_health_verdicts({"us-east": Verdict(True, until=10.0)})
    before = c.snapshot
    c.set_health_verdicts({"us-east": Verdict(False, until=10.0)})
    assert c.snapshot.cache is not before.cache
    before = c.snapshot
    c.set_health_verdicts({"us-east": Verdict(False, forced=True)})  # a drain: forced flips
    assert c.snapshot.cache is not before.cache


def test_utilisation_and_reload_drop_the_cache():
    c = started()
    before = c.snapshot
    c.set_utilisation({"us-east": 0.9})
    assert c.snapshot.cache is not before.cache
    before = c.snapshot
    c.reload()  # same files, but a reload also reopens the GeoIP file: a new reader, a new cache
    assert c.snapshot.cache is not before.cache


def test_a_kept_cache_serves_its_answers_until_their_own_deadline():
    """What a kept cache carries over: answers decided under the old time bounds, each until the
    deadline those bounds gave it (then decided again, under the new ones)."""
    c = started()
    regions = list(c.snapshot.zones["gslb.example.test"].regions)
    now = time.time()
    c.set_health_verdicts({r: Verdict(True, until=now + 10) for r in regions})
    query = DNSRecord.question("www.gslb.example.test", "A")
    query.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(8, b"\x00\x01\x18\x00" + bytes([81, 2, 69]))]))  # London /24
    data = query.pack()

    def ttl(at: float) -> int:
        return DNSRecord.parse(answer(c.snapshot, data, "127.0.0.1", at)).rr[0].ttl

    assert ttl(now) == 10  # capped by the bound
    (key, entry), = c.snapshot.cache.places.items()
    assert entry.deadline == now + 10
    before = c.snapshot
    c.set_health_verdicts({r: Verdict(True, until=now + 100) for r in regions})
    assert c.snapshot.cache is before.cache and c.snapshot.generation == before.generation + 1
    assert ttl(now + 5) == 10  # the kept answer, as decided under the old bound
    assert c.snapshot.cache.places[key] is entry
    assert ttl(now + 11) == 30  # past its deadline: decided again, under the new bound (TTL 30)
    assert c.snapshot.cache.places[key] is not entry
