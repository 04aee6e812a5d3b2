"""The balancer of one process: listeners, health checkers, reload, drain, shutdown.

One `Balancer` per process. Its listeners hand client connections to the data
path (`proxy.py`: llhttp, the current `Routes`, swapped whole on reload, and
the lean upstream client); its admin API is `admin.py` over the `Service`
methods at the end of this class. Everything slow (probes, reloads, drains)
runs beside the data path as tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from geodns.balance import config as config_mod
from geodns.balance.active import (
    Check,
    Rules,
    View,
    backend_check,
    next_delay,
    observe,
    probe,
    probe_session,
    takes_traffic,
)
from geodns.balance.admin import admin_app
from geodns.balance.config import Address, BalancerConfig
from geodns.balance.edge import Edge, default_max_clients
from geodns.balance.metrics import Family, Metrics, families
from geodns.balance.pool import Backend, LoadReport, build, load_report
from geodns.balance.proxy import Proxy
from geodns.balance.rate import RateWindow
from geodns.balance.upstream import Client
from geodns.serverlog import ServerLog

log = logging.getLogger("geodns.balance")


def _log(event: str, **fields: object) -> None:
    log.info(" ".join([f"event={event}", *(f"{k}={v}" for k, v in fields.items())]))


class Balancer:
    def __init__(
        self,
        config: BalancerConfig,
        config_path: str | Path | None = None,
        *,
        reuse_port: bool = False,
        sticky_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.reuse_port = reuse_port
        """Bind listeners with SO_REUSEPORT, so that worker processes each own a socket."""
        self.config_path = str(config_path) if config_path else None
        self.metrics = Metrics()
        self.generation = 1
        self.pools, self.routes, self.backends = build(config)
        # Without a configured secret, the key comes from the parent process (one
        # per balancer, so every worker honours every cookie), or is made here.
        self.sticky_key = sticky_key or secrets.token_hex(32).encode()
        self.secret = config.sticky_secret.encode() if config.sticky_secret else self.sticky_key
        self.rate = RateWindow(10)
        self.active_requests = 0
        self.closing = False
        self.addresses: list[Address] = []
        self.admin_address: Address | None = None
        self.upstream: Client | None = None
        """The lean client every request goes through."""
        self.proxy: Proxy | None = None
        self._check_session: aiohttp.ClientSession | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._runners: list[web.BaseRunner] = []
        self._checkers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.edge: Edge | None = None
        """Client connections, their cap and deadlines (made in start())."""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        t = cfg.timeouts
        self._check_session = probe_session()
        self.upstream = Client(t.connect, t.read, t.idle)
        self.edge = Edge(cfg.max_clients or default_max_clients(), t.request_head, t.response_body, t.idle)
        self.edge.start()
        self.proxy = Proxy(self)
        loop = asyncio.get_running_loop()
        for address in cfg.listen:
            server = await loop.create_server(
                self.proxy.connection, address.host, address.port, backlog=1024, reuse_address=True,
                reuse_port=self.reuse_port or None,
            )
            self._servers.append(server)
            self.addresses.append(address)
        if cfg.admin.listen is not None:
            admin_runner = web.AppRunner(admin_app(self), access_log=None, logger=ServerLog(log))
            await admin_runner.setup()
            site = web.TCPSite(admin_runner, cfg.admin.listen.host, cfg.admin.listen.port)
            await site.start()
            self._runners.append(admin_runner)
            self.admin_address = cfg.admin.listen
        self._start_checkers()
        _log(
            "started",
            listen=",".join(map(str, self.addresses)),
            admin=self.admin_address,
            pools=len(self.pools),
            backends=len(self.backends),
        )

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, let in-flight requests finish within drain_timeout."""
        self.closing = True
        _log("stopping", in_flight=self.active_requests, drain_timeout=self.config.drain_timeout)
        for server in self._servers:
            server.close()
        if self.edge is not None:
            # Idle keep-alive connections close now, busy ones after their response;
            # a WebSocket tunnel has no request to finish: it closes now.
            for conn in self.edge.connections:
                if conn.tunnel is not None:
                    conn.tunnel.close()
            deadline = time.monotonic() + self.config.drain_timeout
            while True:
                busy = [c for c in self.edge.connections if c.current is not None]
                for conn in self.edge.connections:
                    if conn.current is None and conn.transport is not None:
                        conn.transport.close()
                if not busy or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
            for conn in list(self.edge.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        for task in self._checkers.values():
            task.cancel()
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._checkers.values(), *self._retiring, return_exceptions=True)
        if self.edge is not None:
            self.edge.stop()
        if self.proxy is not None:
            self.proxy.stop()
        for runner in self._runners:
            await runner.cleanup()
        if self.upstream is not None:
            self.upstream.close()
        if self._check_session is not None:
            await self._check_session.close()
        self._runners.clear()
        _log("stopped")

    # ------------------------------------------------------------ health checks

    def _start_checkers(self) -> None:
        """(Re)start one probe loop per checked backend; views survive a reload."""
        for task in self._checkers.values():
            task.cancel()
        self._checkers.clear()
        for pool in self.pools.values():
            check = pool.config.check
            for b in pool.backends:
                if check is None:
                    b.active = View()  # unchecked: only passive checks apply
                    continue
                task = asyncio.create_task(self._check_loop(b, backend_check(check, b.port)))
                self._checkers[(pool.name, b.key)] = task

    async def _check_loop(self, backend: Backend, check: Check) -> None:
        rules = Rules.from_check(check)
        rng = random.Random()
        while True:
            at = time.monotonic()
            result = await probe(check, backend.host, self._check_session)
            before = takes_traffic(backend.active)
            backend.active = observe(backend.active, result.ok, at, result.detail, rules)
            after = takes_traffic(backend.active)
            if after != before:
                _log(
                    "backend_up" if after else "backend_down",
                    pool=backend.pool, backend=backend.key, cause="active", detail=repr(result.detail),
                )
            await asyncio.sleep(next_delay(check, rng))

    # ------------------------------------------------------------ operations

    def drain(self, pool: str, key: str, on: bool = True) -> Backend:
        backend = self.backends.get((pool, key))
        if backend is None:
            raise KeyError(f"no backend {key} in pool {pool}")
        backend.drain_admin = on
        _log("drain" if on else "undrain", pool=pool, backend=key, in_flight=backend.in_flight, cause="admin")
        return backend

    async def reload(self) -> bool:
        """Re-read the config file; keep running on the old one if it is invalid."""
        if self.config_path is None:
            return False
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            self.metrics.reloads.labels("error").inc()
            log.error("event=reload_failed error=%r", str(exc))
            return False
        self.apply(new)
        self.metrics.reloads.labels("ok").inc()
        return True

    def apply(self, new: BalancerConfig) -> None:
        """Switch to a new configuration; backends that left it are drained, then dropped."""
        if new.listen != self.config.listen or new.admin.listen != self.config.admin.listen:
            log.warning("event=reload_listen_unchanged detail='listen addresses change only on restart'")
        pools, routes, live = build(new, self.backends)
        gone = [b for k, b in self.backends.items() if k not in live]
        self.config = replace(new, listen=self.config.listen, admin=replace(new.admin, listen=self.config.admin.listen))
        self.secret = new.sticky_secret.encode() if new.sticky_secret else self.sticky_key
        t = new.timeouts
        if self.upstream is not None:
            self.upstream.connect_timeout, self.upstream.read_timeout, self.upstream.idle_timeout = (
                t.connect, t.read, t.idle
            )
        if self.edge is not None:
            self.edge.head_timeout, self.edge.write_timeout, self.edge.idle_timeout = (
                t.request_head, t.response_body, t.idle
            )
            self.edge.max_clients = new.max_clients or default_max_clients()
        if self.proxy is not None:
            self.proxy.reset()
        self.pools, self.routes, self.backends = pools, routes, live
        self.generation += 1
        for backend in gone:
            backend.removed = True
            backend.drain_config = True
            task = asyncio.create_task(self._retire(backend))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._start_checkers()
        _log("reloaded", generation=self.generation, backends=len(live), removed=len(gone))

    async def _retire(self, backend: Backend) -> None:
        deadline = time.monotonic() + self.config.drain_timeout
        while backend.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = backend.in_flight
        for task in list(backend.tasks):
            task.cancel()
        _log("retired", pool=backend.pool, backend=backend.key, cut=left)

    def load(self) -> LoadReport:
        backends = list(self.backends.values())
        now = time.monotonic()
        return load_report(
            backends,
            now,
            self.rate.rate(now),
            sum(b.in_flight for b in backends),
            self.config.saturation,
            self.config.capacity,
            self.config.region,
            self.generation,
        )

    def failed(self, backend: Backend) -> None:
        """A request to `backend` failed (passive check)."""
        if backend.breaker.record(False, time.monotonic()):
            self.metrics.trips.labels(backend.pool, backend.key).inc()
            _log("circuit_open", pool=backend.pool, backend=backend.key, cool_off=backend.breaker.cool_off)

    # ------------------------------------------------------------ admin API (admin.Service)

    @property
    def admin_token(self) -> str | None:
        return self.config.admin.token

    def backend_rows(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {
                "pool": b.pool, "backend": b.key, "state": b.state(now), "weight": b.weight,
                "in_flight": b.in_flight, "max_conns": b.max_conns, "trips": b.breaker.trips,
            }
            for b in self.backends.values()
        ]

    def _collect(self) -> CollectorRegistry:
        """The registry, with the gauges read from live state first."""
        now = time.monotonic()
        total = 0
        for b in self.backends.values():
            self.metrics.backend_up.labels(b.pool, b.key).set(1 if b.available(now) else 0)
            total += b.in_flight
        self.metrics.in_flight.set(total)
        return self.metrics.registry

    def metric_families(self) -> list[Family]:
        return families(self._collect())

    async def load_json(self) -> dict[str, Any]:
        return self.load().as_json()

    async def workers_json(self) -> dict[str, Any]:
        report = self.load()
        return {"workers": [{"worker": 0, "pid": os.getpid(), "in_flight": report.in_flight,
                             "request_rate": report.request_rate}]}

    async def backends_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "backends": self.backend_rows()}

    async def metrics_text(self) -> bytes:
        return generate_latest(self._collect())

    async def drain_json(self, pool: str, backend: str, on: bool) -> dict[str, Any]:
        b = self.drain(pool, backend, on)
        return {"pool": b.pool, "backend": b.key, "state": b.state(time.monotonic()), "in_flight": b.in_flight}

    async def reload_json(self) -> dict[str, Any]:
        ok = await self.reload()
        return {"reloaded": ok, "generation": self.generation}
