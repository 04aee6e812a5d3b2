"""`geo_proximity`: nearest region first, by great-circle distance minus bias."""

from geodns.geo import distance_km, unit_vector
from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept


def geo_proximity(candidates: Candidates, ctx: Context, params: None = None) -> Kept:
    location = ctx.client.location
    if location is None or not location.has_coordinates:
        return unlocated(candidates, ctx)
    client = unit_vector(location.latitude, location.longitude)
    regions = ctx.regions
    scored = []
    for position, name in enumerate(candidates):
        info = regions[name]
        scored.append((distance_km(client, info.vector) - info.region.bias_km, position, name))
    scored.sort()
    ordered = tuple([name for _, _, name in scored])
    if not ctx.explain:
        return Kept(ordered, "")
    note = ", ".join(f"{name} {km:.0f} km" for km, _, name in scored[:3])
    return Kept(ordered, f"nearest first: {note}")


def unlocated(candidates: Candidates, ctx: Context) -> Kept:
    """A client without a location gets the record's default regions, while any is a candidate."""
    default = tuple(c for c in ctx.default if c in candidates)
    if default:
        return Kept(default, f"client not located: default {', '.join(default)}")
    if ctx.default:
        return Kept(candidates, "client not located and no default region left: keeping all")
    return Kept(candidates, "client not located: keeping all")
