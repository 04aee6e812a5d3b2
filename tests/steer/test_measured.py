"""The `latency` step with measured RTTs: measurement first, then the table, then unchanged."""

import ipaddress

import pytest

from geodns.steer.latency import latency
from geodns.steer.measured import Measured, key_of, network_text, parse_network, prefix_of
from tests.steer.helpers import ALL, LONDON, NEW_YORK, context
from tests.steer.test_steps import TABLE


def measured(**rows):
    return Measured({parse_network(n.replace("_", "/")): r for n, r in rows.items()}, "10% or 5 ms")


def test_network_keys_are_24s_and_48s():
    k4 = key_of(ipaddress.ip_address("81.2.69.160"))
    assert network_text(k4) == "81.2.69.0/24" and prefix_of(k4) == 24
    k6 = key_of(ipaddress.ip_address("2001:db8:7:1::9"))
    assert network_text(k6) == "2001:db8:7::/48" and prefix_of(k6) == 48
    assert k4 != key_of(ipaddress.ip_address("81.2.70.1"))
    assert parse_network("81.2.69.0/24") == k4
    for bad in ("81.2.69.0/23", "81.2.69.1/24", "2001:db8::/32", "junk"):
        with pytest.raises(ValueError):
            parse_network(bad)


def test_measurement_wins_over_the_table():
    m = Measured({parse_network("81.2.69.0/24"): (("us-east", 4.0), ("eu-west", 30.0))}, "10% or 5 ms")
    ctx = context(LONDON, "81.2.69.10", latency=TABLE)
    ctx.measured = m
    kept = latency(ALL, ctx, (0.0, None))
    assert kept.candidates == ("us-east",)
    assert kept.note == "measured 81.2.69.0/24: us-east 4.0 ms, eu-west 30.0 ms (hysteresis 10% or 5 ms)"


def test_unmeasured_network_falls_to_the_table_then_unchanged():
    m = Measured({parse_network("81.2.69.0/24"): (("us-east", 4.0),)})
    ctx = context(NEW_YORK, "203.0.113.9", latency=TABLE)
    ctx.measured = m
    kept = latency(ALL, ctx, (0.0, None))
    assert (kept.candidates, kept.note.split(":")[0]) == (("us-east",), "country US")
    ctx = context(None, "203.0.113.9")
    ctx.measured = m
    kept = latency(ALL, ctx, (0.0, None))
    assert kept.candidates == ALL and "not in the latency table" not in kept.note


def test_measured_but_no_candidate_measured_falls_to_the_table():
    m = Measured({parse_network("81.2.69.0/24"): (("sa-east", 4.0),)})
    ctx = context(LONDON, "81.2.69.10", latency=TABLE)
    ctx.measured = m
    kept = latency(("eu-west", "us-east"), ctx, (0.0, None))
    assert kept.candidates == ("eu-west",) and kept.note.startswith("network 81.2.69.0/24")


def test_leader_first_and_tolerance_around_it():
    # The control plane kept us-west first by hysteresis though us-east is 2 ms faster.
    m = Measured({parse_network("81.2.69.0/24"): (("us-west", 12.0), ("us-east", 10.0), ("eu-west", 90.0))})
    ctx = context(LONDON, "81.2.69.10")
    ctx.measured = m
    assert latency(ALL, ctx, (0.0, None)).candidates == ("us-west",)
    assert latency(ALL, ctx, (3.0, None)).candidates == ("us-west", "us-east")
    # The leader is not a candidate (down): the next in the ranking.
    assert latency(("eu-west", "us-east"), ctx, (0.0, None)).candidates == ("us-east",)
