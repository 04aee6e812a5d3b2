"""Health verdicts as the data plane sees them.

Like gdnsd's `gdnsd_sttl_t`, a verdict carries its state together with the
earliest moment it could change, so that an answer built from several verdicts
can take the minimum and never be cached by resolvers past that moment.

Code decides on a verdict's `state` (and `up`), never by reading its `cause`:
the cause is the explanation for people (logs, `geodns status`, the status page).

The region rule ("is this region up, and why") is here too, once: the health
service decides regions with it, the snapshot computes `region_up` with it,
and the status page explains regions with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geodns.steer.context import RegionInfo


class VerdictState(StrEnum):
    """How a verdict was reached. Its value is what travels in JSON."""

    UP = "up"
    """Probes say up (a quorum of fresh views), or there is nothing to probe."""
    DOWN = "down"
    """Probes say down; for a region: too few endpoints up, or its balancer check down."""
    UNKNOWN = "unknown"
    """No observer has decided yet and nothing stands in: assumed up, for a short while."""
    FALLBACK = "fallback"
    """No fresh observation yet: an earlier verdict (saved state, the last one kept
    while NATS is away, the one before a reconfiguration) stands in."""
    DRAINED = "drained"
    """This very target is drained by an operator; the cause is the drain's."""
    FORCED = "forced"
    """Set by an operator other than by this target's own drain: the admin state
    file's `down`/`up` lists, or a region whose every down reason is a drain."""


DECIDED = frozenset({VerdictState.UP, VerdictState.DOWN})
"""The states that rest on probes' fresh views (what is worth saving or keeping)."""


def derive_state(up: bool, forced: bool) -> VerdictState:
    """The state of a verdict that does not say it: one made without it, or read
    from a document written before verdicts carried it (an older node's
    state.json). Those only ever held probes' decisions or operators' marks."""
    if forced:
        return VerdictState.FORCED
    return VerdictState.UP if up else VerdictState.DOWN


@dataclass(frozen=True, slots=True)
class Verdict:
    """The agreed state of one target (a region name, `region/address`, or `region#balancer`)."""

    up: bool
    forced: bool = False
    """Set by an operator (drain, admin state file) rather than by probes."""
    until: float | None = None
    """Wall-clock time (epoch seconds) before which this verdict cannot change; None: unbounded."""
    cause: str = ""
    """Why, for people: which observers said what, or the drain's reason."""
    state: VerdictState = None  # type: ignore[assignment]  # None: derived from up and forced
    """How it was reached (`VerdictState`); derived from `up`/`forced` when not given."""

    def __post_init__(self) -> None:
        if self.state is None:
            object.__setattr__(self, "state", derive_state(self.up, self.forced))

    def to_json(self) -> dict[str, Any]:
        return {"up": self.up, "forced": self.forced, "until": self.until, "cause": self.cause,
                "state": self.state.value}

    @classmethod
    def from_json(cls, doc: Any) -> Verdict:
        """A verdict from `to_json`'s form, or from an older node's (no `state`,
        maybe no `forced`/`until`). Raises ValueError for anything else."""
        if not isinstance(doc, dict) or not isinstance(doc.get("up"), bool):
            raise ValueError("a verdict is an object with up (true or false)")
        forced, until, cause = doc.get("forced", False), doc.get("until"), doc.get("cause", "")
        if not isinstance(forced, bool) or not isinstance(cause, str) \
                or not (until is None or (isinstance(until, int | float) and not isinstance(until, bool))):
            raise ValueError("a verdict's forced is a boolean, until a time or null, cause a string")
        raw = doc.get("state")
        try:
            state = VerdictState(raw) if raw is not None else None
        except ValueError:
            state = None  # a state a newer node knows and this one does not
        return cls(up=doc["up"], forced=forced, until=None if until is None else float(until), cause=cause,
                   state=state)


UP = Verdict(up=True)

Verdicts = Mapping[str, Verdict]
"""Target name -> verdict. A target missing from the mapping is up."""


def endpoint_target(region: str, address: object) -> str:
    """The target name of one endpoint of a region."""
    return f"{region}/{address}"


def balancer_target(region: str) -> str:
    """The target name of a region's own balancer check (`Region.balancer`).

    `#`, not `/`: it is no endpoint. The name is on disk (drains, state.json), in
    peer messages and in operators' `geodns drain` commands, so it stays as it is."""
    return f"{region}#balancer"


def earliest_change(verdicts: Iterable[Verdict]) -> float | None:
    """The soonest moment any of these verdicts could change (None: never)."""
    times = [v.until for v in verdicts if v.until is not None]
    return min(times) if times else None


def decide_region(
    name: str,
    endpoints: Sequence[str],
    min_healthy: int,
    verdicts: Verdicts,
    *,
    own: Verdict | None = None,
) -> Verdict:
    """Is region `name` up, and why: the one region rule.

    Down when its `own` verdict is down (a drain of the region, an operator's
    mark or, read from a snapshot, the health service's region verdict: it is
    returned as it is), when its balancer check (`balancer_target`) is down, or
    when fewer than `min_healthy` of its `endpoints` (target names) are up. A
    target missing from `verdicts` is up. A down region is `forced` when every
    down reason is an operator's; its `until` is the earliest of its parts'."""
    if own is not None and not own.up:
        return own
    ups = 0
    downs: list[tuple[str, Verdict]] = []
    untils = [own.until] if own is not None and own.until is not None else []
    for target in endpoints:
        v = verdicts.get(target)
        if v is None:
            ups += 1
            continue
        if v.until is not None:
            untils.append(v.until)
        if v.up:
            ups += 1
        else:
            downs.append((target, v))
    balancer = verdicts.get(balancer_target(name))
    if balancer is not None and balancer.until is not None:
        untils.append(balancer.until)
    until = min(untils) if untils else None
    total = len(endpoints)
    reasons = []
    forced = []
    if ups < min_healthy:
        listed = "; ".join(f"{t} down: {v.cause}" for t, v in downs[:4])
        more = f"; and {len(downs) - 4} more" if len(downs) > 4 else ""
        reasons.append(f"{ups}/{total} endpoints up, below min_healthy {min_healthy}: {listed}{more}")
        forced.append(bool(downs) and all(v.forced for _, v in downs))
    if balancer is not None and not balancer.up:
        reasons.append(f"balancer check down: {balancer.cause}")
        forced.append(balancer.forced)
    if reasons:
        by_hand = all(forced)
        return Verdict(up=False, forced=by_hand, until=until, cause="; ".join(reasons),
                       state=VerdictState.FORCED if by_hand else VerdictState.DOWN)
    cause = f"{ups}/{total} endpoints up (min_healthy {min_healthy})"
    if balancer is not None:
        cause += "; balancer check up"
    return Verdict(up=True, until=until, cause=cause, state=VerdictState.UP)


def region_verdict(info: RegionInfo, verdicts: Verdicts) -> Verdict:
    """`decide_region` for a configured region, from a snapshot's verdicts."""
    region = info.region
    return decide_region(region.name, tuple(info.endpoint_targets.values()), region.min_healthy, verdicts,
                         own=verdicts.get(region.name))


def region_is_up(info: RegionInfo, verdicts: Verdicts) -> bool:
    """Whether a configured region may be answered (`region_verdict`'s `up`)."""
    return region_verdict(info, verdicts).up
