"""The answer path's steering memo (`Context.memo`) never changes a decision.

With a memo, steps that do not read the client run once per candidate tuple and
a Decision is built once per path through the chain; every client must still
get exactly the decision a run without the memo gives it."""

from __future__ import annotations

import pytest

from geodns.config.model import GeoRule, Step
from geodns.steer import run_chain

from .helpers import CLIENTS, DOWN, LONDON, context, net, steered

RULES = (
    GeoRule(frozenset(), frozenset(), frozenset(), (net("198.51.100.0/24"),), ("us-west",), "partner"),
    GeoRule(frozenset(), frozenset({"BR"}), frozenset(), (), ("sa-east",), "BR"),
    GeoRule(frozenset({"EU"}), frozenset(), frozenset(), (), ("eu-west", "us-east"), "EU"),
)

CHAINS = {
    "nearest": ("healthy", "geo_proximity", Step("limit", 1)),
    "nearest two": ("healthy", "geo_proximity", Step("limit", 2)),
    "weighted then nearest": ("healthy", Step("weighted", (("us-east", 3), ("us-west", 1), ("eu-west", 2))), "geo_proximity"),
    "failover": ("healthy", Step("failover", ("eu-west", "us-east", "us-west"))),
    "capacity": (Step("capacity", 0.8), "geo_proximity", Step("limit", 1)),
    "rules": ("healthy", Step("geolocation", (RULES, ("us-east",))), Step("limit", 1)),
}

VERDICTS = {
    "all up": {},
    "eu-west down": {"eu-west": DOWN},
    "everything down": {name: DOWN for name in ("us-east", "us-west", "eu-west", "ap-southeast", "sa-east")},
}


@pytest.mark.parametrize("verdicts", VERDICTS.values(), ids=VERDICTS.keys())
@pytest.mark.parametrize("chain", CHAINS.values(), ids=CHAINS.keys())
def test_the_memo_gives_every_client_the_decision_it_would_get_without(chain, verdicts):
    record = steered(*chain, default=("us-east",), fallback=("us-west",))
    for family in (4, 6):
        memo: dict = {}
        decisions = {}
        for location, address in CLIENTS * 2:  # the second round is all memo hits
            kwargs = dict(verdicts=verdicts, family=family, default=("us-east",), utilisation={"eu-west": 0.9})
            plain = context(location, address, **kwargs)
            plain.explain = False
            remembered = context(location, address, **kwargs)
            remembered.explain = False
            remembered.memo = memo
            decision = run_chain(record, remembered)
            assert decision == run_chain(record, plain), (location, address)
            # One Decision object per path through the chain, however many clients take it.
            assert decisions.setdefault((decision.decided_by, decision.branches), decision) is decision
        assert memo  # it was used


def test_explaining_ignores_the_memo():
    record = steered(*CHAINS["nearest"])
    memo: dict = {}
    ctx = context(LONDON, "81.2.69.1")
    ctx.memo = memo
    decision = run_chain(record, ctx)
    assert decision.trace and not memo
