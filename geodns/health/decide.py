"""Every verdict of one recompute, from views and drains: `decide_all` (pure).

The service (`geodns.health.service`) gathers what this needs — each target's
views (its own probes' and its peers'), the drains, the fallbacks, whether it
is isolated — and keeps what is I/O: timers, sockets, files, logs, metrics,
publishing. Nothing here reads a clock or touches the service: `now` is an
argument, and the same inputs give the same verdicts.

Per target, `quorum.decide_target`; per region, the one region rule
(`geodns.steer.verdict.decide_region`) over the endpoints' new verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from geodns.health.plan import RegionPlan
from geodns.health.quorum import Drain, ObserverView, decide_target, drained
from geodns.steer.verdict import DECIDED, Verdict, VerdictState, decide_region

__all__ = ["TargetViews", "Policy", "Decisions", "decide_all"]

NO_CHECK = Verdict(up=True, state=VerdictState.UP, cause="no check configured")


@dataclass(frozen=True, slots=True)
class TargetViews:
    """What one endpoint or balancer target's verdict is made of."""

    views: Sequence[ObserverView] | None
    """Every observer's latest view of it, this node's own first when it probes
    the target; None: no check is configured (up unless drained)."""
    stale_after: float
    """Seconds after which an observer not heard of drops out (from its check)."""
    fallback: Verdict | None = None
    """What stands in until some observer decides (saved state, the last verdict
    kept while NATS is away, the verdict before a reconfiguration)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """How this node decides: the same for every target of a recompute."""

    node: str
    """This node's name: its own view, when it has one, comes first."""
    quorum: str | int = "majority"
    isolated: bool = False
    """No peer heard lately: the verdicts rest on this node's view only, and say so."""


@dataclass(frozen=True, slots=True)
class Decisions:
    verdicts: dict[str, Verdict]
    """`previous`, with every target and region asked for decided anew."""
    settled: frozenset[str]
    """Targets whose fallback has served its purpose (a real decision, or a drain)."""
    made: int
    """`decide_target` runs; the other checked targets shared a decision (`_Shared`)."""


def decide_all(
    targets: Mapping[str, TargetViews],
    regions: Mapping[str, RegionPlan],
    drains: Mapping[str, Drain],
    now: float,
    policy: Policy,
    previous: Mapping[str, Verdict] | None = None,
) -> Decisions:
    """The verdicts on `targets` and `regions` at `now`. A region's endpoints not
    in `targets` keep their verdict from `previous` (a recompute of a few)."""
    verdicts = dict(previous) if previous else {}
    shared = _Shared(now, policy)
    settled = []
    for target, tv in targets.items():
        drain = drains.get(target)
        if drain is not None and not drain.active:
            drain = None
        if tv.views is None:
            v = drained(drain) if drain is not None else NO_CHECK
        else:
            v = shared.decide(tv, drain)
            if policy.isolated and v.state in DECIDED:
                v = replace(v, cause=f"isolated, own view only: {v.cause}")
        # Fallbacks only bridge the gap to the first real decision.
        if tv.fallback is not None and v.state is not VerdictState.FALLBACK:
            settled.append(target)
        verdicts[target] = v
    for name, rp in regions.items():
        drain = drains.get(name)
        own = drained(drain) if drain is not None and drain.active else None
        verdicts[name] = decide_region(name, rp.endpoints, rp.min_healthy, verdicts, own=own)
    return Decisions(verdicts, frozenset(settled), shared.made)


class _Shared:
    """`decide_target`, shared between targets whose peers' views are the same
    objects (a group of a peer message) and whose own views read alike (state,
    second of `since`, detail, freshness): in an outage of 10,000 endpoints most
    verdicts are a few dozen decisions. Only `until`, which also depends on this
    node's own probe times, is made per target."""

    __slots__ = ("now", "policy", "cache", "made")

    def __init__(self, now: float, policy: Policy) -> None:
        self.now = now
        self.policy = policy
        self.cache: dict[tuple, tuple[Verdict, float, float]] = {}
        self.made = 0

    def decide(self, tv: TargetViews, drain: Drain | None) -> Verdict:
        now, rule, views, stale_after = self.now, self.policy.quorum, tv.views or (), tv.stale_after
        if drain is not None or tv.fallback is not None or not views or views[0].observer != self.policy.node:
            self.made += 1
            return decide_target(views, now, stale_after=stale_after, rule=rule, drain=drain, fallback=tv.fallback)
        own, peers = views[0], views[1:]
        own_fresh = now - own.heard <= stale_after
        key = (stale_after, own.state, int(own.since // 1), own.detail, own_fresh,
               None if own_fresh else f"{now - own.heard:.0f}", *map(id, peers))
        hit = self.cache.get(key)
        if hit is None:
            self.made += 1
            v = decide_target(views, now, stale_after=stale_after, rule=rule)
            if v.state is VerdictState.UNKNOWN:
                return v  # undecided: its bound rests on the own view's times; cheap anyway
            fresh = [p for p in peers if now - p.heard <= stale_after]
            self.cache[key] = (v, min((p.until for p in fresh), default=math.inf),
                               min((p.heard for p in fresh), default=math.inf))
            return v
        v, peer_until, peer_heard = hit
        # decide_target's bound, with this target's own view in it
        until_views = min(peer_until, own.until) if own_fresh else peer_until
        heard = min(peer_heard, own.heard) if own_fresh else peer_heard
        return replace(v, until=min(max(now, until_views), heard + stale_after))
