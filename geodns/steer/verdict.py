"""Health verdicts as the data plane sees them.

Like gdnsd's `gdnsd_sttl_t`, a verdict carries its state together with the
earliest moment it could change, so that an answer built from several verdicts
can take the minimum and never be cached by resolvers past that moment.

Code decides on a verdict's `state` (and `up`), never by reading its `cause`:
the cause is the explanation for people (logs, `geodns status`, the status page).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


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
    """The target name of a region's own balancer check (`Region.balancer`)."""
    return f"{region}/balancer"


def earliest_change(verdicts: Iterable[Verdict]) -> float | None:
    """The soonest moment any of these verdicts could change (None: never)."""
    times = [v.until for v in verdicts if v.until is not None]
    return min(times) if times else None
