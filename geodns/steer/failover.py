"""`failover`: priority order, the first region that is up wins."""

from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept


def failover(candidates: Candidates, ctx: Context, params: Candidates) -> Kept:
    passed = []
    for region in params:
        if region not in candidates:
            passed.append(f"{region} not a candidate")
        elif not ctx.is_up(region):
            passed.append(f"{region} down")
        else:
            note = f"{region} is the first up" + (f" ({'; '.join(passed)})" if passed else "")
            return Kept((region,), note)
    return Kept((), "every region in the failover order is down")
