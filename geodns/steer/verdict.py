"""Health verdicts as the data plane sees them.

Like gdnsd's `gdnsd_sttl_t`, a verdict carries its state together with the
earliest moment it could change, so that an answer built from several verdicts
can take the minimum and never be cached by resolvers past that moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    """The agreed state of one target (a region name, or `region/address`)."""

    up: bool
    forced: bool = False
    """Set by an operator (drain) rather than by probes."""
    until: float | None = None
    """Wall-clock time (epoch seconds) before which this verdict cannot change; None: unbounded."""
    cause: str = ""
    """Why: which observers said what, or the drain's reason."""


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
