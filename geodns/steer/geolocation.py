"""`geolocation`: ordered rules by CIDR, continent, country and subdivision, then a default.

The first rule that matches the client and still has a candidate region wins
(a matching rule whose regions are all down is skipped, so clients move on to
the next rule rather than to a fail-open answer).
"""

from geodns.config.model import GeoRule
from geodns.steer.context import Candidates, Context
from geodns.steer.geo_proximity import unlocated
from geodns.steer.latency_table import address_in
from geodns.steer.outcome import Kept


def rule_matches(rule: GeoRule, ctx: Context) -> bool:
    client = ctx.client
    if client.address is not None and any(address_in(client.address, n) for n in rule.networks):
        return True
    loc = client.location
    if loc is None:
        return False
    return (
        (loc.subdivision is not None and loc.subdivision in rule.subdivisions)
        or (loc.country is not None and loc.country in rule.countries)
        or (loc.continent is not None and loc.continent in rule.continents)
    )


def geolocation(candidates: Candidates, ctx: Context, params: tuple[tuple[GeoRule, ...], Candidates]) -> Kept:
    rules, default = params
    skipped = []
    for index, rule in enumerate(rules):
        if not rule_matches(rule, ctx):
            continue
        kept = tuple(r for r in rule.regions if r in candidates)
        if kept:
            note = f"rule {index} ({rule.label}) -> {', '.join(kept)}"
            if skipped:
                note += f" (skipped, no candidate left: {'; '.join(skipped)})"
            return Kept(kept, note)
        skipped.append(f"rule {index} ({rule.label})")
    kept = tuple(r for r in default if r in candidates)
    if kept:
        return Kept(kept, f"no rule matched: default {', '.join(kept)}")
    if ctx.client.location is None:
        return unlocated(candidates, ctx)
    return Kept(candidates, "no rule matched and no default left: keeping all")
