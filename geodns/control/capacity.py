"""Region load from regional balancers, for the `capacity` step.

Polls each region's `capacity_url` (`geodns balance` /v1/load) or, without
one, the status page its `balancer:` check reads (HAProxy, nginx, Envoy:
`geodns.health.lbstatus`), and hands the control plane a map of region ->
utilisation (1 = full; above 1 when requests queue). A region whose report
cannot be read counts as not loaded: health is the health checks' business
(name the same URL as the region's `balancer:` check), and an unreachable
report must not by itself move traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp

from geodns.config.model import Check
from geodns.health.lbstatus import POOL_KINDS, StatusUnreadable, read_pool

log = logging.getLogger("geodns.capacity")


def capacity_sources(zones) -> dict[str, str | Check]:
    """Region -> its `capacity_url`, or else its `balancer:` check when that reads a status page."""
    sources: dict[str, str | Check] = {}
    for zone in zones:
        for name, region in zone.regions.items():
            if region.capacity_url:
                sources[name] = region.capacity_url
            elif region.balancer is not None and region.balancer.kind in POOL_KINDS:
                sources[name] = region.balancer
    return sources


def utilisation_of(report: object) -> float | None:
    """The utilisation in a /v1/load report, or None when the report is not one."""
    if not isinstance(report, dict):
        return None
    value = report.get("utilisation")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    if report.get("saturated") is True:
        value = max(float(value), float(report.get("saturation", 1.0) or 1.0))
    return min(max(float(value), 0.0), 10.0)


class CapacityPoller:
    def __init__(
        self,
        urls: Callable[[], Mapping[str, str | Check]],
        publish: Callable[[Mapping[str, float]], None],
        interval: float = 2.0,
        timeout: float = 1.0,
    ):
        self.urls = urls
        self.publish = publish
        self.interval = interval
        self.timeout = timeout
        self._failing: set[str] = set()
        self.notes: dict[str, str] = {}
        """Region -> what its latest report said, for the status page (updated in place)."""

    async def poll_once(self, session: aiohttp.ClientSession) -> dict[str, float]:
        urls = dict(self.urls())
        results = await asyncio.gather(*(self._fetch(session, r, u) for r, u in urls.items()))
        loads = {region: value for region, value in zip(urls, results, strict=True) if value is not None}
        for region in set(self.notes) - set(urls):
            del self.notes[region]
        self.publish(loads)
        return loads

    async def _fetch(self, session: aiohttp.ClientSession, region: str, source: str | Check) -> float | None:
        url = source if isinstance(source, str) else source.url
        try:
            if isinstance(source, str):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                    report = await response.json(content_type=None)
                value = utilisation_of(report)
                self.notes[region] = "/v1/load: unreadable" if value is None else f"/v1/load: utilisation {value:.0%}"
            else:
                status = await read_pool(source, session, timeout=self.timeout)
                value = status.utilisation
                value = None if value is None else min(max(value, 0.0), 10.0)
                self.notes[region] = f"{status.name()}: {status.load()}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # StatusUnreadable is a ValueError
            self.notes[region] = f"unavailable: {exc if isinstance(exc, StatusUnreadable) else exc or type(exc).__name__}"
            if region not in self._failing:
                log.warning("capacity report unavailable region=%s url=%s error=%s", region, url, exc or type(exc).__name__)
                self._failing.add(region)
            return None
        if value is None:
            if region not in self._failing:
                log.warning("capacity report unreadable region=%s url=%s detail=%r", region, url, self.notes.get(region))
                self._failing.add(region)
        elif region in self._failing:
            self._failing.discard(region)
            log.info("capacity report back region=%s utilisation=%.2f", region, value)
        return value

    async def run(self) -> None:
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                if self.urls():
                    try:
                        await self.poll_once(session)
                    except Exception:  # noqa: BLE001 - keep polling whatever one round did
                        log.exception("capacity poll failed")
                await asyncio.sleep(self.interval)
