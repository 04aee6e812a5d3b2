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
import json
import logging
import math
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


REPORT_LIMIT = 64 * 1024
"""Bytes of a /v1/load body read at most (geodns balance sends about 300)."""

MAX_UTILISATION = 10.0
"""Utilisation kept at most: a report may say a region runs over capacity, not how absurdly."""


class BadReport(ValueError):
    """A /v1/load body that is not a load report; the message says which field is wrong."""


def utilisation_of(report: object) -> float:
    """The utilisation in a /v1/load report (geodns balance's `LoadReport`), or BadReport.

    `utilisation` is a finite number >= 0 (kept at most `MAX_UTILISATION`); `saturated`, when
    present, a boolean; `saturation`, the balancer's own threshold, a finite number in (0, 1],
    required with `saturated: true` (a saturated region counts as at least its threshold: its
    balancer knows best) and checked whenever present.
    """
    if not isinstance(report, dict):
        raise BadReport(f"not a JSON object but {type(report).__name__}")
    value = _number(report, "utilisation")
    if value < 0.0:
        raise BadReport(f"utilisation {value!r} is negative")
    saturated = report.get("saturated", False)
    if not isinstance(saturated, bool):
        raise BadReport(f"saturated {_short(saturated)} is not true or false")
    if saturated or "saturation" in report:
        saturation = _number(report, "saturation")
        if not 0.0 < saturation <= 1.0:
            raise BadReport(f"saturation {saturation!r} is not in (0, 1]")
        if saturated:
            value = max(value, saturation)
    return min(value, MAX_UTILISATION)


def _number(report: dict, key: str) -> float:
    if key not in report:
        raise BadReport(f"{key} is missing")
    value = report[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReport(f"{key} {_short(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise BadReport(f"{key} {_short(value)} is out of range") from None
    if not math.isfinite(number):
        raise BadReport(f"{key} {_short(value)} is not finite")
    return number


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_report(body: bytes) -> float:
    """The utilisation in the raw body of a /v1/load answer, or BadReport."""
    if len(body) > REPORT_LIMIT:
        raise BadReport(f"body larger than {REPORT_LIMIT} bytes")
    try:
        report = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadReport(f"not JSON: {exc}") from None
    return utilisation_of(report)


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
        self._failing: dict[str, str] = {}
        """Regions whose last report failed, and how (unavailable, refused, failed): logged once."""
        self.notes: dict[str, str] = {}
        """Region -> what its latest report said, for the status page (updated in place)."""

    async def poll_once(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """One round: every region's report, fetched at once; one bad report costs only its region."""
        urls = dict(self.urls())
        results = await asyncio.gather(*(self._fetch(session, r, u) for r, u in urls.items()), return_exceptions=True)
        loads: dict[str, float] = {}
        for (region, source), value in zip(urls.items(), results, strict=True):
            if isinstance(value, BaseException):
                if not isinstance(value, Exception):
                    raise value  # cancellation: the poller is stopping
                self.notes[region] = f"failed: {type(value).__name__}"
                self._failed(region, source, "failed", f"{type(value).__name__}: {value}")
            elif value is not None:
                loads[region] = value
        for region in set(self.notes) - set(urls):
            del self.notes[region]
        self.publish(loads)
        return loads

    async def _fetch(self, session: aiohttp.ClientSession, region: str, source: str | Check) -> float | None:
        try:
            if isinstance(source, str):
                async with session.get(source, timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                    # Any status: geodns balance answers 503, with its report, when no backend is up.
                    body = await response.content.read(REPORT_LIMIT + 1)
            else:
                status = await read_pool(source, session, timeout=self.timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # StatusUnreadable is a ValueError
            self.notes[region] = f"unavailable: {exc if isinstance(exc, StatusUnreadable) else exc or type(exc).__name__}"
            self._failed(region, source, "unavailable", str(exc) or type(exc).__name__)
            return None
        if isinstance(source, str):
            try:
                value: float | None = parse_report(body)
            except BadReport as exc:
                self.notes[region] = f"/v1/load: refused: {exc}"
                self._failed(region, source, "refused", str(exc))
                return None
            self.notes[region] = f"/v1/load: utilisation {value:.0%}"
        else:
            value = status.utilisation
            value = None if value is None else min(max(value, 0.0), MAX_UTILISATION)
            self.notes[region] = f"{status.name()}: {status.load()}"
            if value is None:
                self._failed(region, source, "unreadable", self.notes[region])
                return None
        if self._failing.pop(region, None) is not None:
            log.info("capacity report back region=%s utilisation=%.2f", region, value)
        return value

    def _failed(self, region: str, source: str | Check, kind: str, why: str) -> None:
        """Log a region's failure once, and again only when it fails another way."""
        if self._failing.get(region) != kind:
            self._failing[region] = kind
            url = source if isinstance(source, str) else source.url
            log.warning("capacity report %s region=%s url=%s error=%s; the region counts as not loaded", kind, region, url, why)

    async def run(self) -> None:
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                if self.urls():
                    try:
                        await self.poll_once(session)
                    except Exception:  # noqa: BLE001 - keep polling whatever one round did
                        log.exception("capacity poll failed")
                await asyncio.sleep(self.interval)
