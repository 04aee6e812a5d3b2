"""Active health checks for backends, written against the health package's interface.

The global tier's `geodns.health.probes` (`Check`, `probe(check, session) ->
ProbeResult`) and `geodns.health.risefall` are the intended implementation.
Until they land, this module carries a minimal stand-in with the same shapes
(http/https/tcp only); switching is a matter of replacing the three names
below with imports from `geodns.health`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class Check:
    """An active health check (same fields as `geodns.health.probes.Check`)."""

    kind: str = "http"
    """`http`, `https` or `tcp`."""
    host: str | None = None
    """Address to probe; None: the backend's own address."""
    port: int | None = None
    """Port to probe; None: the backend's own port."""
    path: str = "/"
    method: str = "GET"
    host_header: str | None = None
    expect_status: tuple[int, ...] = (200,)
    body_contains: str | None = None
    verify_tls: bool = True
    timeout: float = 2.0
    interval: float = 5.0
    fall: int = 3
    rise: int = 2
    jitter: float = 0.1


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str
    rtt: float


async def probe(check: Check, session: aiohttp.ClientSession | None = None) -> ProbeResult:
    """Run one probe; never raises for a failing target, only reports it."""
    start = time.monotonic()
    host = check.host or "127.0.0.1"
    port = check.port or (443 if check.kind == "https" else 80)
    try:
        if check.kind == "tcp":
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), check.timeout)
            writer.close()
            return ProbeResult(True, "connected", time.monotonic() - start)
        own = session is None
        if session is None:
            session = aiohttp.ClientSession()
        try:
            url = f"{check.kind}://{host}:{port}{check.path}"
            headers = {"Host": check.host_header} if check.host_header else None
            async with session.request(
                check.method,
                url,
                headers=headers,
                ssl=None if check.verify_tls else False,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=check.timeout),
            ) as resp:
                body = await resp.text(errors="replace") if check.body_contains else ""
        finally:
            if own:
                await session.close()
        rtt = time.monotonic() - start
        if resp.status not in check.expect_status:
            return ProbeResult(False, f"status {resp.status}", rtt)
        if check.body_contains and check.body_contains not in body:
            return ProbeResult(False, f"body lacks {check.body_contains!r}", rtt)
        return ProbeResult(True, f"status {resp.status}", rtt)
    except TimeoutError:
        return ProbeResult(False, f"timeout after {check.timeout}s", time.monotonic() - start)
    except (OSError, aiohttp.ClientError) as exc:
        return ProbeResult(False, f"{type(exc).__name__}: {exc}", time.monotonic() - start)


@dataclass(frozen=True, slots=True)
class RiseFall:
    """Rise/fall state: `fall` consecutive failures take a target down, `rise` successes bring it up."""

    up: bool = True
    streak: int = 0
    """Consecutive results that disagree with `up`."""

    def observe(self, ok: bool, rise: int, fall: int) -> RiseFall:
        if ok == self.up:
            return RiseFall(self.up, 0)
        streak = self.streak + 1
        if streak >= (rise if ok else fall):
            return RiseFall(ok, 0)
        return RiseFall(self.up, streak)
