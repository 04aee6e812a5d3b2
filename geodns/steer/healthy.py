"""`healthy`: drop regions whose verdict is down (probes, drains, min_healthy)."""

from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept


def healthy(candidates: Candidates, ctx: Context, params: None = None) -> Kept:
    region_up = ctx.region_up
    kept = tuple([c for c in candidates if region_up.get(c, True)])
    if len(kept) == len(candidates):
        return Kept(candidates, "all up")
    removed = [c for c in candidates if c not in kept]
    reasons = []
    for region in removed:
        verdict = ctx.verdicts.get(region)
        cause = verdict.cause if verdict and verdict.cause else "too few healthy endpoints"
        state = "drained" if verdict and verdict.forced else "down"
        reasons.append(f"{region} ({cause})" if cause.startswith(state) else f"{region} ({state}: {cause})")
    return Kept(kept, "removed " + "; ".join(reasons))
