"""run_chain: steps in order, weighted branches, fail-open, families, `until`."""

from __future__ import annotations

from collections import Counter

import pytest

from geodns.config.model import Step
from geodns.dns.cache import smooth_schedule
from geodns.steer import Verdict, run_chain
from geodns.steer.verdict import balancer_target

from .helpers import ALL, DOWN, LONDON, REGIONS, SAN_FRANCISCO, context, region, steered

GEO = ("healthy", "geo_proximity", Step("limit", 1))


def addresses(decision):
    return [[str(a) for a in b.addresses] for b in decision.branches]


def test_geo_chain_answers_the_nearest_region():
    decision = run_chain(steered(*GEO), context(LONDON))
    assert decision.regions == ("eu-west",)
    assert addresses(decision) == [["192.0.2.30"]]
    assert decision.decided_by == "geo_proximity"
    assert not decision.failopen and not decision.degraded
    assert [t.step for t in decision.trace] == ["healthy", "geo_proximity", "limit"]
    assert decision.trace[0].before == ALL
    assert decision.trace[2].after == (("eu-west",),)


def test_aaaa_answers_the_ipv6_endpoints():
    decision = run_chain(steered(*GEO), context(SAN_FRANCISCO, family=6))
    assert addresses(decision) == [["2001:db8::20"]]


def test_nearest_region_down_moves_to_the_next():
    decision = run_chain(steered(*GEO), context(LONDON, verdicts={"eu-west": DOWN}))
    assert decision.regions == ("us-east",)
    assert decision.degraded and not decision.failopen


def test_candidates_without_an_address_of_the_family_are_left_out():
    regions = dict(REGIONS, **{"eu-west": region("eu-west", 53.3, -6.3, "192.0.2.30")})  # IPv4 only
    v6 = run_chain(steered(*GEO), context(LONDON, family=6, regions=regions))
    assert v6.regions == ("us-east",)
    assert "eu-west" not in v6.trace[0].before
    v4 = run_chain(steered(*GEO), context(LONDON, family=4, regions=regions))
    assert v4.regions == ("eu-west",)


def test_no_candidate_of_the_family_is_nodata():
    regions = {"only-v4": region("only-v4", 0, 0, "192.0.2.1")}
    decision = run_chain(steered("healthy", candidates=["only-v4"]), context(LONDON, family=6, regions=regions))
    assert decision.branches == ()
    assert not decision.failopen


def test_fail_open_to_the_fallback():
    everything_down = dict.fromkeys(ALL, DOWN)
    decision = run_chain(steered(*GEO, fallback=["sa-east"]), context(LONDON, verdicts=everything_down))
    assert decision.failopen and decision.degraded
    assert decision.decided_by == "fail-open"
    assert decision.regions == ("sa-east",)
    assert addresses(decision) == [["192.0.2.50"]]
    assert decision.trace[-1].step == "fail-open"


def test_fail_open_to_every_candidate_without_a_fallback():
    everything_down = dict.fromkeys(ALL, DOWN)
    decision = run_chain(steered(*GEO), context(LONDON, verdicts=everything_down))
    assert decision.failopen
    assert decision.regions == ALL
    assert len(decision.branches[0].addresses) == 5


def test_fallback_without_the_family_fails_open_to_all_candidates():
    regions = dict(REGIONS, **{"sa-east": region("sa-east", -23.5, -46.6, "192.0.2.50")})
    decision = run_chain(
        steered(*GEO, fallback=["sa-east"]),
        context(LONDON, family=6, regions=regions, verdicts=dict.fromkeys(ALL, DOWN)),
    )
    assert decision.failopen
    assert decision.regions == ("us-east", "us-west", "eu-west", "ap-southeast")


@pytest.mark.parametrize(
    "chain",
    [
        ("healthy",),
        (Step("failover", ("us-east", "us-west")),),
        ("healthy", Step("weighted", (("us-east", 1), ("us-west", 0)))),
        ("healthy", Step("geolocation", ((), ())), "geo_proximity", Step("limit", 1)),
    ],
)
def test_never_empty(chain):
    for verdicts in ({}, {"us-east": DOWN}, dict.fromkeys(ALL, DOWN)):
        decision = run_chain(steered(*chain), context(LONDON, verdicts=verdicts))
        assert decision.branches
        assert all(b.addresses for b in decision.branches)


def test_down_endpoints_are_left_out_of_the_answer_unless_all_are_down():
    regions = dict(REGIONS, **{"eu-west": region("eu-west", 53.3, -6.3, "192.0.2.30", "192.0.2.31", min_healthy=1)})
    one = run_chain(steered(*GEO), context(LONDON, regions=regions, verdicts={"eu-west/192.0.2.30": DOWN}))
    assert addresses(one) == [["192.0.2.31"]]
    regions = dict(REGIONS, **{"eu-west": region("eu-west", 53.3, -6.3, "192.0.2.30", "192.0.2.31", min_healthy=0)})
    both = {"eu-west/192.0.2.30": DOWN, "eu-west/192.0.2.31": DOWN}
    decision = run_chain(steered(*GEO), context(LONDON, regions=regions, verdicts=both))
    assert addresses(decision) == [["192.0.2.30", "192.0.2.31"]]


def test_weighted_branches_then_limit_on_each():
    chain = ("healthy", Step("weighted", (("us-east", 3), ("us-west", 1), ("eu-west", 0))))
    decision = run_chain(steered(*chain, candidates=["us-east", "us-west", "eu-west"]), context(LONDON))
    assert [(b.weight, b.regions) for b in decision.branches] == [(3, ("us-east",)), (1, ("us-west",))]
    assert decision.decided_by == "weighted"
    down = run_chain(
        steered(*chain, candidates=["us-east", "us-west", "eu-west"]),
        context(LONDON, verdicts={"us-east": DOWN, "us-west": DOWN}),
    )
    assert [(b.weight, b.regions) for b in down.branches] == [(1, ("eu-west",))]
    assert not down.failopen


def test_each_branch_fails_open_and_alike_branches_merge():
    # Both weighted branches lose their only region to the failover step; each fails open
    # to the same fallback, and the two become one branch with the summed weight.
    chain = (Step("weighted", (("us-east", 3), ("us-west", 1))), Step("failover", ("eu-west",)))
    decision = run_chain(steered(*chain, candidates=["us-east", "us-west"], fallback=["sa-east"]), context(LONDON))
    assert [(b.weight, b.regions) for b in decision.branches] == [(4, ("sa-east",))]
    assert decision.failopen


# --- until: the earliest moment a verdict involved could change --------------------------------


def test_until_is_the_earliest_verdict_change_of_the_candidates():
    verdicts = {
        "eu-west": Verdict(up=True, until=1500.0),
        "us-east/192.0.2.10": Verdict(up=True, until=1200.0),
        "ap-southeast": Verdict(up=True, until=None),
    }
    decision = run_chain(steered(*GEO), context(LONDON, verdicts=verdicts))
    assert decision.until == 1200.0
    assert run_chain(steered(*GEO), context(LONDON)).until is None


def test_until_ignores_regions_that_are_not_candidates():
    verdicts = {"sa-east": Verdict(up=True, until=1100.0), "eu-west": Verdict(up=True, until=1900.0)}
    decision = run_chain(steered(*GEO, candidates=["eu-west", "us-east"]), context(LONDON, verdicts=verdicts))
    assert decision.until == 1900.0


def test_until_counts_the_balancer_verdict():
    # The region rule reads the balancer check's verdict: when it could change, the region could.
    verdicts = {balancer_target("eu-west"): Verdict(up=True, until=1300.0)}
    assert run_chain(steered(*GEO), context(LONDON, verdicts=verdicts)).until == 1300.0


def test_until_counts_endpoints_of_the_other_family():
    # min_healthy counts every endpoint, so an IPv6 endpoint's verdict can take the region
    # (and its A answer) down.
    regions = dict(REGIONS, **{
        "eu-west": region("eu-west", 53.3, -6.3, "192.0.2.30", "2001:db8::30", min_healthy=2),
    })
    verdicts = {"eu-west/2001:db8::30": Verdict(up=True, until=1400.0)}
    decision = run_chain(steered(*GEO), context(LONDON, regions=regions, verdicts=verdicts, family=4))
    assert decision.until == 1400.0


def test_until_counts_the_fallback_it_answers():
    verdicts = dict.fromkeys(("us-east", "us-west"), DOWN)
    verdicts["sa-east/192.0.2.50"] = Verdict(up=True, until=1600.0)
    decision = run_chain(
        steered("healthy", candidates=["us-east", "us-west"], fallback=["sa-east"]),
        context(LONDON, verdicts=verdicts),
    )
    assert decision.failopen
    assert decision.until == 1600.0


# --- the weighted branch schedule --------------------------------------------------------------


@pytest.mark.parametrize("weights", [[3, 1], [1, 1], [5, 3, 2], [1, 0, 1], [7], [100, 1]])
def test_smooth_schedule_proportions(weights):
    schedule = smooth_schedule(weights)
    counts = Counter(schedule)
    total = sum(weights)
    assert len(schedule) == total // _gcd(weights)  # one period, reduced by the common divisor
    for i, w in enumerate(weights):
        assert counts[i] / len(schedule) == pytest.approx(w / total)


def _gcd(weights):
    from math import gcd

    g = 0
    for w in weights:
        g = gcd(g, w)
    return g


def test_smooth_schedule_interleaves():
    assert smooth_schedule([3, 1]) == [0, 0, 1, 0]
    assert smooth_schedule([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]
    assert smooth_schedule([]) == []


def test_smooth_schedule_bounds_its_period():
    schedule = smooth_schedule([997, 1009, 3], max_length=100)
    assert len(schedule) <= 110
    counts = Counter(schedule)
    assert counts[2] >= 1  # a small weight is never rounded away
    assert counts[0] == pytest.approx(counts[1], abs=2)
