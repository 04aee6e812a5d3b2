"""decide_all: every verdict of a recompute from views and drains, as data (no sockets, no clock)."""

from __future__ import annotations

import random

from geodns.health.decide import Policy, TargetViews, decide_all
from geodns.health.plan import RegionPlan
from geodns.health.quorum import Drain, ObserverView, decide_target
from geodns.health.risefall import State
from geodns.steer.verdict import Verdict, VerdictState, balancer_target

NOW = 1_000_000.0
STALE = 15.0
POLICY = Policy("n1")
EU = RegionPlan("eu", ("eu/10.0.0.1", "eu/10.0.0.2"), 1, None)


def ov(observer: str, state: State, *, heard: float = NOW - 1, until: float = NOW + 10, detail: str = "") -> ObserverView:
    return ObserverView(observer, state, NOW - 100, until, heard, detail)


def tv(*views: ObserverView, fallback: Verdict | None = None) -> TargetViews:
    return TargetViews(views, STALE, fallback)


def test_targets_by_quorum_and_region_by_its_endpoints():
    targets = {
        "eu/10.0.0.1": tv(ov("n1", State.DOWN, detail="HTTP 503"), ov("n2", State.DOWN), ov("n3", State.UP)),
        "eu/10.0.0.2": tv(ov("n1", State.UP), ov("n2", State.UP)),
    }
    d = decide_all(targets, {"eu": EU}, {}, NOW, POLICY)
    one, two, eu = d.verdicts["eu/10.0.0.1"], d.verdicts["eu/10.0.0.2"], d.verdicts["eu"]
    assert not one.up and one.state is VerdictState.DOWN and one.cause.startswith("2/3 observers say down")
    assert two.up and two.state is VerdictState.UP
    assert eu.up and eu.cause == "1/2 endpoints up (min_healthy 1)" and eu.until == NOW + 10
    assert d.settled == frozenset() and set(d.verdicts) == {"eu", *targets}


def test_same_inputs_same_verdicts():
    targets = {"eu/10.0.0.1": tv(ov("n1", State.DOWN), ov("n2", State.UP)), "eu/10.0.0.2": tv()}
    assert decide_all(targets, {"eu": EU}, {}, NOW, POLICY) == decide_all(targets, {"eu": EU}, {}, NOW, POLICY)


def test_unknown_then_fallback_then_settled():
    nothing = {"eu/10.0.0.1": tv(ov("n1", State.UNKNOWN)), "eu/10.0.0.2": tv(ov("n1", State.UNKNOWN))}
    d = decide_all(nothing, {"eu": EU}, {}, NOW, POLICY)
    assert d.verdicts["eu/10.0.0.1"].state is VerdictState.UNKNOWN and d.verdicts["eu"].up
    saved = Verdict(up=False, cause="saved state from 09:00:00Z: 1/1 observers say down")
    d = decide_all({t: tv(ov("n1", State.UNKNOWN), fallback=saved) for t in nothing}, {"eu": EU}, {}, NOW, POLICY)
    assert all(d.verdicts[t].state is VerdictState.FALLBACK and not d.verdicts[t].up for t in nothing)
    assert not d.verdicts["eu"].up and not d.settled  # the fallback still bridges the gap
    decided = {"eu/10.0.0.1": tv(ov("n1", State.UP), fallback=saved), "eu/10.0.0.2": tv(ov("n1", State.UNKNOWN), fallback=saved)}
    d = decide_all(decided, {"eu": EU}, {}, NOW, POLICY)
    assert d.settled == {"eu/10.0.0.1"} and d.verdicts["eu"].up


def test_drains_win_over_probes_for_targets_and_regions():
    drains = {
        "eu/10.0.0.1": Drain("eu/10.0.0.1", True, "kernel upgrade", NOW - 5, "n2"),
        "eu/10.0.0.2": Drain("eu/10.0.0.2", False, "", NOW - 5, "n2"),  # an undrain: probes decide
    }
    targets = {"eu/10.0.0.1": tv(ov("n1", State.UP)), "eu/10.0.0.2": tv(ov("n1", State.UP))}
    d = decide_all(targets, {"eu": EU}, drains, NOW, POLICY)
    one = d.verdicts["eu/10.0.0.1"]
    assert not one.up and one.state is VerdictState.DRAINED and "kernel upgrade" in one.cause
    assert d.verdicts["eu/10.0.0.2"].state is VerdictState.UP and d.verdicts["eu"].up
    drains["eu"] = Drain("eu", True, "move out", NOW - 1, "n1")
    eu = decide_all(targets, {"eu": EU}, drains, NOW, POLICY).verdicts["eu"]
    assert not eu.up and eu.forced and eu.state is VerdictState.DRAINED and "move out" in eu.cause


def test_every_endpoint_drained_makes_a_forced_region():
    drains = {t: Drain(t, True, "", NOW - 5, "n1") for t in EU.endpoints}
    eu = decide_all({t: tv(ov("n1", State.UP)) for t in EU.endpoints}, {"eu": EU}, drains, NOW, POLICY).verdicts["eu"]
    assert not eu.up and eu.forced and eu.state is VerdictState.FORCED


def test_target_without_check_is_up_unless_drained():
    targets = {"eu/10.0.0.1": TargetViews(None, STALE), "eu/10.0.0.2": TargetViews(None, STALE)}
    d = decide_all(targets, {"eu": EU}, {}, NOW, POLICY)
    assert d.verdicts["eu/10.0.0.1"] == Verdict(up=True, cause="no check configured", state=VerdictState.UP)
    drains = {"eu/10.0.0.2": Drain("eu/10.0.0.2", True, "", NOW, "n1")}
    assert d.made == 0
    assert decide_all(targets, {"eu": EU}, drains, NOW, POLICY).verdicts["eu/10.0.0.2"].state is VerdictState.DRAINED


def test_isolated_node_says_its_verdicts_rest_on_its_own_view():
    targets = {"eu/10.0.0.1": tv(ov("n1", State.DOWN)), "eu/10.0.0.2": tv(ov("n1", State.UNKNOWN))}
    d = decide_all(targets, {}, {}, NOW, Policy("n1", isolated=True))
    assert d.verdicts["eu/10.0.0.1"].cause.startswith("isolated, own view only: 1/1 observers say down")
    assert d.verdicts["eu/10.0.0.1"].state is VerdictState.DOWN
    # Nothing decided: nothing to qualify.
    assert d.verdicts["eu/10.0.0.2"].cause.startswith("unknown")


def test_a_few_targets_recomputed_keep_the_rest_from_previous():
    balanced = RegionPlan("eu", EU.endpoints, 2, balancer_target("eu"))
    full = {t: tv(ov("n1", State.UP)) for t in EU.endpoints}
    full[balancer_target("eu")] = tv(ov("n1", State.UP))
    before = decide_all(full, {"eu": balanced}, {}, NOW, POLICY).verdicts
    assert before["eu"].up and before["eu"].cause.endswith("balancer check up")
    d = decide_all({"eu/10.0.0.2": tv(ov("n1", State.DOWN))}, {"eu": balanced}, {}, NOW, POLICY, previous=before)
    assert d.verdicts["eu/10.0.0.1"] is before["eu/10.0.0.1"]
    assert not d.verdicts["eu"].up and "1/2 endpoints up, below min_healthy 2" in d.verdicts["eu"].cause
    assert before["eu"].up  # previous is not changed
    d = decide_all({balancer_target("eu"): tv(ov("n1", State.DOWN, detail="HTTP 503"))}, {"eu": balanced}, {},
                   NOW, POLICY, previous=before)
    assert not d.verdicts["eu"].up and "balancer check down: 1/1 observers say down" in d.verdicts["eu"].cause


def test_shared_decisions_equal_one_decision_per_target():
    """Targets whose peers' views are the same group objects share one decide_target;
    every verdict must equal the one made alone, bound (`until`) included."""
    rnd = random.Random(7)
    states = [State.UP, State.DOWN, State.UNKNOWN]
    groups = {p: [ObserverView(p, rnd.choice(states), NOW - rnd.choice([3, 40, 900]), NOW + rnd.choice([-1, 0.5, 2]),
                               NOW - rnd.choice([0.1, 0.9, 30]), rnd.choice(["", "HTTP 503", "timeout"]))
                  for _ in range(2)] for p in ("n2", "n3", "n4")}
    targets = {}
    for i in range(600):
        own = ObserverView("n1", rnd.choice(states[:2]), NOW - rnd.choice([3.2, 50]), NOW + rnd.choice([0.3, 4.0]),
                           NOW - rnd.choice([0.2, 0.6]), "HTTP 503")
        targets[f"eu/10.9.{i // 200}.{i % 200 + 1}"] = tv(own, *(rnd.choice(g) for g in groups.values()))
    d = decide_all(targets, {}, {}, NOW, POLICY)
    decided = 0
    for target, t in targets.items():
        alone = decide_target(t.views, NOW, stale_after=STALE)
        assert d.verdicts[target] == alone, (target, d.verdicts[target], alone)
        decided += alone.state is not VerdictState.UNKNOWN
    assert decided > 300 and d.made * 5 < decided  # most decisions were shared
