"""`capacity`: steer around regions whose balancer reports saturation."""

from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept


def capacity(candidates: Candidates, ctx: Context, params: float = 0.8) -> Kept:
    threshold = params
    over = [c for c in candidates if ctx.utilisation.get(c, 0.0) > threshold]
    if not over:
        return Kept(candidates, f"none above {threshold:.0%} utilisation")
    kept = tuple(c for c in candidates if c not in over)
    shown = ", ".join(f"{c} {ctx.utilisation[c]:.0%}" for c in over)
    if not kept:
        return Kept(candidates, f"all saturated ({shown}): keeping all")
    return Kept(kept, f"removed saturated {shown}")
