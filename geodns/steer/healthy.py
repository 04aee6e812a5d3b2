"""`healthy`: drop regions whose verdict is down (probes, drains, min_healthy)."""

from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept
from geodns.steer.verdict import VerdictState


def healthy(candidates: Candidates, ctx: Context, params: None = None) -> Kept:
    region_up = ctx.region_up
    kept = tuple([c for c in candidates if region_up.get(c, True)])
    if len(kept) == len(candidates):
        return Kept(candidates, "all up")
    removed = [c for c in candidates if c not in kept]
    reasons = []
    for region in removed:
        verdict = ctx.verdicts.get(region)
        if verdict is not None and verdict.state is VerdictState.DRAINED and verdict.cause:
            reasons.append(f"{region} ({verdict.cause})")  # a drain's cause says "drained" itself
            continue
        cause = verdict.cause if verdict and verdict.cause else "too few healthy endpoints"
        reasons.append(f"{region} ({'drained' if verdict and verdict.forced else 'down'}: {cause})")
    return Kept(kept, "removed " + "; ".join(reasons))
