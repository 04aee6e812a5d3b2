"""Each steering step as a pure function over hand-built contexts."""

from __future__ import annotations

import pytest

from geodns.config.model import GeoRule
from geodns.steer import Kept, LatencyTable, Split, Verdict, VerdictState
from geodns.steer.capacity import capacity
from geodns.steer.failover import failover
from geodns.steer.geo_proximity import geo_proximity
from geodns.steer.geolocation import geolocation
from geodns.steer.healthy import healthy
from geodns.steer.latency import latency
from geodns.steer.limit import limit
from geodns.steer.verdict import balancer_target
from geodns.steer.weighted import weighted

from .helpers import (
    ALL,
    BERLIN,
    COUNTRY_ONLY_US,
    DOWN,
    LONDON,
    NEW_YORK,
    REGIONS,
    SAN_FRANCISCO,
    SAO_PAULO,
    SINGAPORE,
    SYDNEY,
    context,
    net,
    region,
)

# --- geo_proximity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "nearest"),
    [
        (LONDON, ("eu-west", "us-east", "us-west")),
        (SAN_FRANCISCO, ("us-west", "us-east", "eu-west")),
        (NEW_YORK, ("us-east", "us-west", "eu-west")),
        (SAO_PAULO, ("sa-east", "us-east")),
        (SINGAPORE, ("ap-southeast",)),
        (SYDNEY, ("ap-southeast",)),
    ],
)
def test_geo_proximity_orders_nearest_first(location, nearest):
    kept = geo_proximity(ALL, context(location))
    assert isinstance(kept, Kept)
    assert kept.candidates[: len(nearest)] == nearest
    assert sorted(kept.candidates) == sorted(ALL)
    assert kept.note.startswith(f"nearest first: {nearest[0]} ")


def test_geo_proximity_only_orders_the_candidates_it_is_given():
    assert geo_proximity(("sa-east", "us-west"), context(LONDON)).candidates == ("us-west", "sa-east")


def test_bias_draws_clients_to_a_region():
    # London: eu-west ~ 460 km, us-east ~ 5,900 km. A 6,000 km bias makes us-east nearer.
    biased = dict(REGIONS, **{"us-east": region("us-east", 38.9, -77.0, "192.0.2.10", bias=6000)})
    assert geo_proximity(ALL, context(LONDON, regions=biased)).candidates[0] == "us-east"
    small = dict(REGIONS, **{"us-east": region("us-east", 38.9, -77.0, "192.0.2.10", bias=5000)})
    assert geo_proximity(ALL, context(LONDON, regions=small)).candidates[:2] == ("eu-west", "us-east")
    # A negative bias pushes clients away.
    repel = dict(REGIONS, **{"eu-west": region("eu-west", 53.3, -6.3, "192.0.2.30", bias=-6000)})
    assert geo_proximity(ALL, context(LONDON, regions=repel)).candidates[0] == "us-east"


def test_equal_distances_keep_configured_order():
    twins = {
        "a": region("a", 10.0, 10.0, "192.0.2.1"),
        "b": region("b", 10.0, 10.0, "192.0.2.2"),
    }
    assert geo_proximity(("b", "a"), context(LONDON, regions=twins)).candidates == ("b", "a")
    assert geo_proximity(("a", "b"), context(LONDON, regions=twins)).candidates == ("a", "b")


def test_unlocated_client_gets_the_record_default():
    kept = geo_proximity(ALL, context(None, "10.0.0.1", default=["us-east"]))
    assert kept.candidates == ("us-east",)
    assert "not located" in kept.note
    # A location without coordinates (a country-level record) counts as unlocated too.
    assert geo_proximity(ALL, context(COUNTRY_ONLY_US, default=["us-west", "us-east"])).candidates == ("us-west", "us-east")


def test_unlocated_client_when_the_default_is_down_keeps_what_is_left():
    ctx = context(None, default=["us-east"], verdicts={"us-east": DOWN})
    after_healthy = healthy(ALL, ctx).candidates
    assert "us-east" not in after_healthy
    kept = geo_proximity(after_healthy, ctx)
    assert kept.candidates == after_healthy
    assert "no default region left" in kept.note


def test_unlocated_client_without_a_default_keeps_all():
    assert geo_proximity(ALL, context(None)).candidates == ALL


# --- geolocation ----------------------------------------------------------------------------


def rule(*matches: str, regions: tuple[str, ...], continents=(), countries=(), subdivisions=(), networks=()) -> GeoRule:
    return GeoRule(
        continents=frozenset(continents), countries=frozenset(countries), subdivisions=frozenset(subdivisions),
        networks=tuple(net(n) for n in networks), regions=regions, label=", ".join(matches) or "rule",
    )


RULES = (
    rule(networks=["198.51.100.0/24", "2001:db8:1::/48"], regions=("us-west",)),
    rule(subdivisions=["US-CA", "US-OR"], regions=("us-west",)),
    rule(countries=["BR"], regions=("sa-east",)),
    rule(continents=["NA", "SA"], regions=("us-east",)),
    rule(continents=["EU"], regions=("eu-west", "us-east")),
)


@pytest.mark.parametrize(
    ("location", "address", "expected"),
    [
        (NEW_YORK, "198.51.100.7", ("us-west",)),  # CIDR beats the continent rule below it
        (None, "198.51.100.7", ("us-west",)),  # CIDR matches without a location
        (None, "2001:db8:1:2::1", ("us-west",)),
        (SAN_FRANCISCO, "203.0.113.1", ("us-west",)),  # subdivision
        (SAO_PAULO, "203.0.113.1", ("sa-east",)),  # country before its continent
        (NEW_YORK, "203.0.113.1", ("us-east",)),  # continent
        (LONDON, "203.0.113.1", ("eu-west", "us-east")),  # every region of the rule, in order
        (BERLIN, None, ("eu-west", "us-east")),
    ],
)
def test_geolocation_first_matching_rule_wins(location, address, expected):
    kept = geolocation(ALL, context(location, address), (RULES, ("ap-southeast",)))
    assert kept.candidates == expected


def test_geolocation_rule_order_matters():
    rules = (rule(continents=["NA"], regions=("us-east",)), rule(subdivisions=["US-CA"], regions=("us-west",)))
    assert geolocation(ALL, context(SAN_FRANCISCO), (rules, ())).candidates == ("us-east",)
    assert geolocation(ALL, context(SAN_FRANCISCO), (rules[::-1], ())).candidates == ("us-west",)


def test_geolocation_skips_rules_whose_regions_are_all_gone():
    ctx = context(SAN_FRANCISCO, "203.0.113.1", verdicts={"us-west": DOWN})
    kept = geolocation(healthy(ALL, ctx).candidates, ctx, (RULES, ()))
    assert kept.candidates == ("us-east",)
    assert "skipped" in kept.note and "rule 1" in kept.note
    # A rule with one region left keeps that one.
    ctx = context(LONDON, verdicts={"eu-west": DOWN})
    assert geolocation(healthy(ALL, ctx).candidates, ctx, (RULES, ())).candidates == ("us-east",)


def test_geolocation_default_and_fallthrough():
    assert geolocation(ALL, context(SINGAPORE), (RULES, ("ap-southeast",))).candidates == ("ap-southeast",)
    # Default down too: keep every candidate.
    kept = geolocation(("us-east", "eu-west"), context(SINGAPORE), (RULES, ("ap-southeast",)))
    assert kept.candidates == ("us-east", "eu-west")
    # An unlocated client, no rule and no geolocation default: the record's default.
    assert geolocation(ALL, context(None, "10.0.0.1", default=["us-east"]), (RULES, ())).candidates == ("us-east",)


def test_geolocation_cidr_family_does_not_cross():
    v4only = (rule(networks=["0.0.0.0/0"], regions=("eu-west",)),)
    assert geolocation(ALL, context(None, "2001:db8::1"), (v4only, ("us-east",))).candidates == ("us-east",)


# --- latency --------------------------------------------------------------------------------

TABLE = LatencyTable(
    networks=(
        (net("81.2.69.128/25"), {"us-east": 70.0, "eu-west": 80.0}),
        (net("81.2.69.0/24"), {"eu-west": 11.0, "us-east": 76.0, "us-west": 140.0}),
    ),
    countries={"GB": {"eu-west": 12.0, "us-east": 78.0}, "US": {"us-east": 35.0, "us-west": 40.0, "eu-west": 90.0}},
    continents={"EU": {"eu-west": 30.0, "us-east": 95.0}, "SA": {"sa-east": 30.0, "us-east": 130.0}},
)


def test_latency_network_beats_country_beats_continent():
    kept = latency(ALL, context(LONDON, "81.2.69.10", latency=TABLE), (0.0, None))
    assert kept.candidates == ("eu-west",)
    assert kept.note.startswith("network 81.2.69.0/24: eu-west 11 ms")
    # Most specific network first.
    assert latency(ALL, context(LONDON, "81.2.69.200", latency=TABLE), (0.0, None)).candidates == ("us-east",)
    kept = latency(ALL, context(NEW_YORK, "203.0.113.9", latency=TABLE), (0.0, None))
    assert (kept.candidates, kept.note.split(":")[0]) == (("us-east",), "country US")
    kept = latency(ALL, context(SAO_PAULO, "203.0.113.9", latency=TABLE), (0.0, None))
    assert (kept.candidates, kept.note.split(":")[0]) == (("sa-east",), "continent SA")


def test_latency_tolerance_keeps_near_ties_in_rtt_order():
    ctx = context(NEW_YORK, "203.0.113.9", latency=TABLE)
    assert latency(ALL, ctx, (5.0, None)).candidates == ("us-east", "us-west")
    assert latency(ALL, ctx, (4.9, None)).candidates == ("us-east",)
    assert latency(ALL, ctx, (1000.0, None)).candidates == ("us-east", "us-west", "eu-west")


def test_latency_only_among_candidates():
    ctx = context(NEW_YORK, "203.0.113.9", latency=TABLE)
    assert latency(("eu-west", "us-west"), ctx, (0.0, None)).candidates == ("us-west",)


@pytest.mark.parametrize(
    ("ctx", "why"),
    [
        (context(SINGAPORE, "203.0.113.9", latency=TABLE), "not in the latency table"),
        (context(LONDON, "81.2.69.10"), "no latency table"),
    ],
)
def test_latency_without_data_keeps_all(ctx, why):
    kept = latency(ALL, ctx, (0.0, None))
    assert kept.candidates == ALL
    assert why in kept.note


def test_latency_row_without_any_candidate_keeps_all():
    kept = latency(("ap-southeast", "sa-east"), context(NEW_YORK, "203.0.113.9", latency=TABLE), (0.0, None))
    assert kept.candidates == ("ap-southeast", "sa-east")


# --- weighted -------------------------------------------------------------------------------


def test_weighted_splits_by_step_weights():
    out = weighted(("us-east", "us-west", "eu-west"), context(), (("us-east", 3), ("us-west", 1), ("eu-west", 0)))
    assert isinstance(out, Split)
    assert out.branches == ((3, ("us-east",)), (1, ("us-west",)))
    assert out.note == "us-east 75%, us-west 25%"


def test_regions_the_step_does_not_list_are_standbys():
    out = weighted(("us-east", "us-west", "eu-west", "sa-east"), context(), (("us-east", 3), ("us-west", 1)))
    assert out.branches == ((3, ("us-east",)), (1, ("us-west",)))
    assert weighted(("eu-west", "sa-east"), context(), (("us-east", 3), ("us-west", 1))).note == "only standbys left: equal split"


def test_weighted_falls_back_to_region_weights():
    regions = dict(REGIONS, **{"us-west": region("us-west", 45.6, -121.2, "192.0.2.20", weight=4)})
    out = weighted(("us-east", "us-west"), context(regions=regions), None)
    assert out.branches == ((1, ("us-east",)), (4, ("us-west",)))


def test_weight_zero_is_standby_while_any_active_is_left():
    params = (("us-east", 3), ("us-west", 1), ("eu-west", 0))
    assert weighted(("us-west", "eu-west"), context(), params) == Kept(("us-west",), "us-west is the only weighted candidate")
    # Every active region gone: the standby answers.
    assert weighted(("eu-west",), context(), params).candidates == ("eu-west",)
    two_standbys = (("us-east", 0), ("eu-west", 0))
    out = weighted(("us-east", "eu-west"), context(), two_standbys)
    assert out.branches == ((1, ("us-east",)), (1, ("eu-west",)))


def test_weighted_without_candidates():
    assert weighted((), context(), None).candidates == ()


# --- failover -------------------------------------------------------------------------------


def test_failover_first_up_in_priority_order():
    order = ("us-east", "us-west", "eu-west")
    assert failover(ALL, context(), order).candidates == ("us-east",)
    kept = failover(ALL, context(verdicts={"us-east": DOWN}), order)
    assert kept.candidates == ("us-west",)
    assert kept.note == "us-west is the first up (us-east down)"
    assert failover(ALL, context(verdicts={"us-east": DOWN, "us-west": DOWN}), order).candidates == ("eu-west",)
    assert failover(ALL, context(verdicts=dict.fromkeys(order, DOWN)), order).candidates == ()


def test_failover_skips_regions_removed_earlier():
    kept = failover(("us-west", "eu-west"), context(), ("us-east", "us-west"))
    assert kept.candidates == ("us-west",)
    assert "us-east not a candidate" in kept.note


# --- healthy --------------------------------------------------------------------------------


def test_healthy_drops_regions_whose_verdict_is_down():
    kept = healthy(ALL, context(verdicts={"eu-west": DOWN}))
    assert kept.candidates == ("us-east", "us-west", "ap-southeast", "sa-east")
    assert kept.note == "removed eu-west (down: 3 of 3 observers: connect refused)"
    assert healthy(ALL, context()) == Kept(ALL, "all up")


def test_healthy_reports_drains():
    drain = Verdict(up=False, forced=True, cause="maintenance")
    kept = healthy(ALL, context(verdicts={"us-west": drain}))
    assert "us-west" not in kept.candidates
    assert kept.note == "removed us-west (drained: maintenance)"
    # A drain of the region itself: its cause already says "drained", and is not said twice.
    drain = Verdict(up=False, forced=True, cause="drained by operator via n1 at 10:00:00Z: move",
                    state=VerdictState.DRAINED)
    kept = healthy(ALL, context(verdicts={"us-west": drain}))
    assert kept.note == "removed us-west (drained by operator via n1 at 10:00:00Z: move)"


def test_healthy_counts_endpoints_against_min_healthy():
    regions = dict(REGIONS, **{
        "us-east": region("us-east", 38.9, -77.0, "192.0.2.10", "192.0.2.11", "192.0.2.12", min_healthy=2),
    })
    one_down = {"us-east/192.0.2.10": DOWN}
    assert "us-east" in healthy(ALL, context(regions=regions, verdicts=one_down)).candidates
    two_down = {"us-east/192.0.2.10": DOWN, "us-east/192.0.2.11": DOWN}
    kept = healthy(ALL, context(regions=regions, verdicts=two_down))
    assert "us-east" not in kept.candidates
    assert "too few healthy endpoints" in kept.note
    # A drained endpoint counts as down too.
    drained = {"us-east/192.0.2.10": Verdict(up=False, forced=True), "us-east/192.0.2.12": DOWN}
    assert "us-east" not in healthy(ALL, context(regions=regions, verdicts=drained)).candidates


def test_balancer_verdict_takes_the_region_down():
    assert "eu-west" not in healthy(ALL, context(verdicts={balancer_target("eu-west"): DOWN})).candidates


def test_min_healthy_zero_keeps_a_region_with_every_endpoint_down():
    regions = dict(REGIONS, **{"us-east": region("us-east", 38.9, -77.0, "192.0.2.10", min_healthy=0)})
    ctx = context(regions=regions, verdicts={"us-east/192.0.2.10": DOWN})
    assert "us-east" in healthy(ALL, ctx).candidates
    ctx = context(regions=regions, verdicts={"us-east": DOWN})
    assert "us-east" not in healthy(ALL, ctx).candidates


# --- capacity and limit ----------------------------------------------------------------------


def test_capacity_removes_regions_over_the_threshold():
    ctx = context(utilisation={"eu-west": 0.95, "us-east": 0.8, "us-west": 0.2})
    kept = capacity(ALL, ctx, 0.8)
    assert kept.candidates == ("us-east", "us-west", "ap-southeast", "sa-east")  # 0.8 is not over 0.8
    assert kept.note == "removed saturated eu-west 95%"
    assert capacity(ALL, ctx, 0.5).candidates == ("us-west", "ap-southeast", "sa-east")
    assert capacity(ALL, ctx, 0.99).candidates == ALL


def test_capacity_all_saturated_keeps_all():
    ctx = context(utilisation={"eu-west": 0.95, "us-east": 0.9})
    kept = capacity(("eu-west", "us-east"), ctx, 0.8)
    assert kept.candidates == ("eu-west", "us-east")
    assert kept.note.startswith("all saturated")


def test_limit():
    assert limit(ALL, context(), 2) == Kept(("us-east", "us-west"), "first 2")
    assert limit(("eu-west",), context(), 2) == Kept(("eu-west",), "nothing to cut")
