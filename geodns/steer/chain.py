"""The chain runner: candidates flow through a record's steps, then fail open.

A weighted step splits the flow into branches; later steps run on each
branch. The result is a `Decision` whose branches the DNS layer turns into
one prebuilt answer each, picked per query in proportion to the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from geodns.config.model import IPAddress, Steered
from geodns.steer.capacity import capacity
from geodns.steer.context import Candidates, Context, RegionInfo, weighted_first
from geodns.steer.failover import failover
from geodns.steer.geo_proximity import geo_proximity
from geodns.steer.geolocation import geolocation
from geodns.steer.healthy import healthy
from geodns.steer.latency import latency
from geodns.steer.limit import limit
from geodns.steer.outcome import Kept, Outcome
from geodns.steer.picks import weighted_picks
from geodns.steer.verdict import earliest_change
from geodns.steer.weighted import weighted

STEPS: dict[str, Callable[[Candidates, Context, Any], Outcome]] = {
    "healthy": healthy,
    "geo_proximity": geo_proximity,
    "geolocation": geolocation,
    "latency": latency,
    "weighted": weighted,
    "failover": failover,
    "capacity": capacity,
    "limit": limit,
}


@dataclass(frozen=True, slots=True)
class TraceStep:
    step: str
    before: Candidates
    after: tuple[Candidates, ...]
    note: str


@dataclass(frozen=True, slots=True)
class Branch:
    weight: int
    regions: Candidates
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    branches: tuple[Branch, ...]
    """Empty when no candidate has an address of the asked family (NODATA)."""
    failopen: bool
    degraded: bool
    """Some candidate of the name is down: the name is in failover."""
    until: float | None
    """Earliest moment one of the verdicts involved could change."""
    decided_by: str
    trace: tuple[TraceStep, ...]

    @property
    def regions(self) -> Candidates:
        seen: dict[str, None] = {}
        for branch in self.branches:
            seen.update(dict.fromkeys(branch.regions))
        return tuple(seen)


CLIENT_STEPS = frozenset({"geo_proximity", "geolocation", "latency"})
"""The steps that read the client. What the others return depends only on their candidates
and the snapshot (verdicts, utilisation, the zone), so `run_chain` may remember it."""

MEMO_LIMIT = 10_000
"""Entries in a `Context.memo` before it starts afresh (a chain has a few distinct paths;
this bounds a pathological one)."""


def run_chain(steered: Steered, ctx: Context) -> Decision:
    """Run a steered record's chain for one client. The trace is kept only when `ctx.explain`
    (a new location in a miss storm costs the chain run, not its description).

    With `ctx.memo` (the answer path's, one per snapshot), the steps that do not read the
    client run once per set of candidates, and the decision is built once per path through
    the chain: a new place then costs its client-reading steps and a few dict lookups.
    """
    family = ctx.family
    regions = ctx.regions
    start = tuple([c for c in steered.candidates if regions[c].addresses[family]])
    explain = ctx.explain
    memo = None if explain else ctx.memo
    trace: list[TraceStep] = []
    if not start:
        return Decision((), False, False, None, "no address of this family", ())
    branches: list[tuple[int, Candidates]] = [(1, start)]
    decided_by = "candidates"
    for step in steered.chain:
        kind = step.kind
        run = STEPS[kind]
        before = branches[0][1]
        new: list[tuple[int, Candidates]] = []
        notes = []
        reuse = memo is not None and kind not in CLIENT_STEPS
        for weight, cands in branches:
            if reuse:
                # Keyed by id, holding the step itself: the id cannot be reused while the entry lives.
                key = (id(step), cands)
                hit = memo.get(key)
                if hit is not None and hit[0] is step:
                    outcome = hit[1]
                else:
                    outcome = run(cands, ctx, step.params)
                    remember(memo, key, (step, outcome))
            else:
                outcome = run(cands, ctx, step.params)
            notes.append(outcome.note)
            if type(outcome) is Kept:
                new.append((weight, outcome.candidates))
            else:
                new.extend((weight * w, c) for w, c in outcome.branches)
        branches = new
        changed = len(new) != 1 or new[0][1] != before
        if changed and kind != "limit":
            decided_by = kind  # limit only cuts what an earlier step ordered
        if explain:
            after = tuple(c for _, c in branches)
            trace.append(TraceStep(kind, before, after, notes[0] if len(set(notes)) == 1 else " | ".join(notes)))
    if memo is not None:
        path = (id(steered), family, decided_by, tuple(branches))
        hit = memo.get(path)
        if hit is not None and hit[0] is steered:
            return hit[1]
        decision = _decide(steered, ctx, start, branches, decided_by, trace)
        remember(memo, path, (steered, decision))
        return decision
    return _decide(steered, ctx, start, branches, decided_by, trace)


def remember(memo: dict, key: tuple, value: tuple) -> None:
    """Store in a `Context.memo`, starting afresh at MEMO_LIMIT entries. Keys hold ids; each
    value holds the object whose id is in its key, so that id is not reused while it lives."""
    if len(memo) >= MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def _decide(
    steered: Steered, ctx: Context, start: Candidates, branches: list[tuple[int, Candidates]], decided_by: str, trace: list[TraceStep]
) -> Decision:
    """The decision the chain's outcome makes: fail open where nothing is left, addresses, TTL bounds."""
    family = ctx.family
    failopen = False
    final: list[tuple[int, Candidates]] = []
    for weight, cands in branches:
        if not cands:
            failopen = True
            fallback = tuple(c for c in steered.fallback if ctx.regions[c].addresses[family])
            cands = fallback or start
        final.append((weight, cands))
    if failopen:
        decided_by = "fail-open"
        trace.append(TraceStep("fail-open", (), tuple(c for _, c in final), "no candidate left: answering the fallback" if steered.fallback else "no candidate left: answering every candidate"))
    merged: dict[Candidates, int] = {}
    for weight, cands in final:
        merged[cands] = merged.get(cands, 0) + weight
    result = tuple([Branch(w * share, cands, addresses) for cands, w in merged.items()
                    for share, addresses in _picks(cands, ctx, trace)])
    verdicts = ctx.verdicts
    until = None
    if verdicts:
        answered = start + tuple(c for _, cands in final for c in cands if c not in start)
        until = earliest_change([verdicts[t] for t in _targets(answered, ctx) if t in verdicts])
    region_up = ctx.region_up
    degraded = failopen or not all([region_up.get(c, True) for c in start])
    return Decision(result, failopen, degraded, until, decided_by, tuple(trace))


def _targets(regions: Candidates, ctx: Context) -> list[str]:
    """Every verdict a region's state reads (see `geodns.steer.verdict.decide_region`): its own,
    its balancer's and all its endpoints', of both families, since min_healthy counts them all."""
    return [t for name in regions for t in ctx.regions[name].targets]


def _picks(regions: Candidates, ctx: Context, trace: list[TraceStep]) -> list[tuple[int, tuple[IPAddress, ...]]]:
    """The addresses answers for these regions carry, as (share, addresses) alternatives:
    one, unless a region's `answers` picks among more endpoints (`geodns.steer.picks`)."""
    if len(regions) == 1 and not ctx.verdicts and ctx.regions[regions[0]].region.answers is None:
        return [(1, ctx.regions[regions[0]].serving[ctx.family])]
    options: list[tuple[int, tuple[IPAddress, ...]]] = [(1, ())]
    notes = []
    for name in regions:
        pool = _serving(ctx.regions[name], ctx)
        n = ctx.regions[name].region.answers
        if n is None or len(pool) <= n or len(options) * len(pool) > MAX_PICKS:
            options = [(s, (*a, *(x for x in pool if x not in a))) for s, a in options]
            continue
        weights = [ctx.regions[name].weights[a] for a in pool]
        standby = not any(weights)
        if standby:  # only standbys are left: they share alike
            weights = [1] * len(pool)
        picks = weighted_picks(weights, n)
        if ctx.explain:
            total = sum(weights)
            shares = ", ".join(f"{a} {min(1.0, n * w / total):.0%}" for a, w in zip(pool, weights, strict=True))
            kind = "standby addresses (no weighted one up)" if standby else "addresses"
            notes.append(f"{name}: {n} of {len(pool)} {kind} per answer, by weight ({shares})")
        options = [(s * max(1, round(share * PICK_SCALE)), (*a, *(x for x in (pool[i] for i in subset) if x not in a)))
                   for s, a in options for share, subset in picks]
    if notes:
        trace.append(TraceStep("answers", regions, (regions,), "; ".join(notes)))
    return options


MAX_PICKS = 256
"""Alternative answers of one branch at most; a region whose picks would pass it answers all its addresses."""
PICK_SCALE = 1000
"""Shares become integer weights for the answer schedule (which keeps a period of at most 1,000)."""


def _serving(info: RegionInfo, ctx: Context) -> tuple[IPAddress, ...]:
    """A region's addresses an answer may carry: those up, the weighted ones among them
    (standbys when none is); when every one is down, all of them, weighted first."""
    verdicts = ctx.verdicts
    if not verdicts:
        return info.serving[ctx.family]
    addresses = info.addresses[ctx.family]
    up = [a for a in addresses if _up(verdicts.get(info.endpoint_targets[a]))]
    return weighted_first(up, info.weights) if up else info.serving[ctx.family]


def _up(verdict) -> bool:
    return verdict is None or verdict.up
