"""Live state of pools and backends, routing, and the load report.

`Backend` is the one mutable object per (pool, address): in-flight count,
breaker, active-check state, drain flag. It survives reloads when the
address stays in the pool, so counts and health are not reset by a SIGHUP.
`Routes` is rebuilt on every reload and swapped in one assignment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from geodns.balance.active import View, takes_traffic
from geodns.balance.choosers import Chooser, Member, make_chooser
from geodns.balance.config import BackendConfig, BalancerConfig, PoolConfig, RouteConfig
from geodns.balance.passive import CircuitBreaker


class Backend:
    """One backend of one pool, with everything the proxy learns about it."""

    __slots__ = (
        "pool", "key", "host", "port", "weight", "max_conns", "base_url",
        "host_line", "in_flight", "drain_admin", "drain_config", "removed", "active", "breaker", "tasks",
    )

    def __init__(self, pool: str, config: BackendConfig, breaker: CircuitBreaker) -> None:
        self.pool = pool
        self.key = config.key
        self.host = config.address.host
        self.port = config.address.port
        self.weight = config.weight
        self.max_conns = config.max_conns
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}"
        self.host_line = f"Host: {host}:{self.port}\r\n".encode()
        """The Host header for a client that sent none (HTTP/1.0)."""
        self.in_flight = 0
        self.drain_admin = False
        """Drained through the admin API; survives reloads."""
        self.drain_config = config.drain
        """Drained by the config file (`drain: true`) or by leaving it."""
        self.removed = False
        self.active = View()
        """Active-check view (rise/fall of the health package); unknown takes traffic."""
        self.breaker = breaker
        self.tasks: set[asyncio.Task[object]] = set()
        """Requests in flight to this backend, cancelled if a drain times out."""

    def take(self) -> asyncio.Task[object] | None:
        """Count a request in flight here; its task is cancelled if a drain of this backend times out."""
        self.in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        return task

    def give(self, task: asyncio.Task[object] | None) -> None:
        """The request `take()` counted is over."""
        self.in_flight -= 1
        if task is not None:
            self.tasks.discard(task)

    def update(self, config: BackendConfig) -> None:
        self.weight = config.weight
        self.max_conns = config.max_conns
        self.drain_config = config.drain

    @property
    def draining(self) -> bool:
        return self.drain_admin or self.drain_config

    def healthy(self, now: float) -> bool:
        """Up by active checks and not tripped by passive ones (drain aside)."""
        return takes_traffic(self.active) and not self.breaker.is_open(now)

    def available(self, now: float) -> bool:
        """May take a new request now."""
        return (
            not self.draining
            and self.weight > 0
            and self.in_flight < self.max_conns
            and takes_traffic(self.active)
            and not self.breaker.is_open(now)
        )

    def state(self, now: float) -> str:
        if self.removed:
            return "removed"
        if self.draining:
            return "draining" if self.in_flight else "drained"
        if not takes_traffic(self.active):
            return "down"
        if self.breaker.is_open(now):
            return "tripped"
        return "up"


@dataclass(frozen=True, slots=True)
class Pool:
    config: PoolConfig
    backends: tuple[Backend, ...]
    by_key: dict[str, Backend]

    @property
    def name(self) -> str:
        return self.config.name

    def available(self, now: float, exclude: Iterable[str] = ()) -> list[Backend]:
        if not exclude:
            return [b for b in self.backends if b.available(now)]
        skip = set(exclude)
        return [b for b in self.backends if b.key not in skip and b.available(now)]


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    pool: Pool
    chooser: Chooser
    algorithm: str
    label: str
    """Route name for metrics: `host/path`."""


def _host_rank(host: str | None) -> int:
    if host is None:
        return 0
    return 1 if host.startswith("*.") else 2


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        return host[: host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0] if host.count(":") == 1 else host


class Routes:
    """Host and path-prefix routing.

    Most specific wins, as in nginx: an exact host beats a `*.suffix`, which
    beats any host; within those, the longest path prefix. Prefixes match on
    segment boundaries, so `/api` takes `/api` and `/api/v1` but not `/apix`.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = sorted(
            routes, key=lambda r: (-_host_rank(r.config.host), -len(r.config.path))
        )
        only = self.routes[0] if len(self.routes) == 1 else None
        self.catch_all = only if only and only.config.host is None and only.config.path == "/" else None
        """The one route when a single route takes every request: no host or path to look at."""

    def match(self, host: str, path: str) -> Route | None:
        host = host.lower()
        name = _strip_port(host)
        for route in self.routes:
            h = route.config.host
            if h is not None and h != name and not (h.startswith("*.") and name.endswith(h[1:])):
                continue
            prefix = route.config.path
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return route
        return None


def build(
    config: BalancerConfig, previous: dict[tuple[str, str], Backend] | None = None
) -> tuple[dict[str, Pool], Routes, dict[tuple[str, str], Backend]]:
    """Pools and routes for `config`, reusing live Backends from `previous`."""
    previous = previous or {}
    pools: dict[str, Pool] = {}
    live: dict[tuple[str, str], Backend] = {}
    for name, pc in config.pools.items():
        backends = []
        for bc in pc.backends:
            backend = previous.get((name, bc.key))
            if backend is None or backend.removed:
                backend = Backend(name, bc, CircuitBreaker(pc.passive.failures, pc.passive.cool_off))
            else:
                backend.update(bc)
                backend.breaker.failures = pc.passive.failures
                backend.breaker.cool_off = pc.passive.cool_off
            backends.append(backend)
            live[(name, bc.key)] = backend
        pools[name] = Pool(pc, tuple(backends), {b.key: b for b in backends})
    routes = []
    for rc in config.routes:
        pool = pools[rc.pool]
        algorithm = rc.algorithm or pool.config.algorithm
        members = [Member(b.key, b.weight) for b in pool.config.backends]
        chooser = make_chooser(algorithm, members, load_factor=pool.config.load_factor)
        label = f"{rc.host or '*'}{rc.path}"
        routes.append(Route(rc, pool, chooser, algorithm, label))
    return pools, Routes(routes), live


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What `GET /v1/load` says; documented field by field in README.md."""

    region: str | None
    healthy_backends: int
    total_backends: int
    draining_backends: int
    capacity: int
    in_flight: int
    utilisation: float
    request_rate: float
    saturated: bool
    saturation: float
    generation: int

    def as_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


def load_report(
    backends: Sequence[Backend],
    now: float,
    request_rate: float,
    in_flight: int,
    saturation: float,
    capacity: int | None,
    region: str | None,
    generation: int,
) -> LoadReport:
    """Region load from backend states; a pure function of its arguments."""
    serving = [b for b in backends if not b.draining and not b.removed and b.weight > 0]
    healthy = [b for b in serving if b.healthy(now)]
    cap = capacity if capacity is not None else sum(b.max_conns for b in healthy)
    if not healthy:
        cap = 0
    utilisation = 1.0 if cap == 0 else min(1.0, in_flight / cap)
    return LoadReport(
        region=region,
        healthy_backends=len(healthy),
        total_backends=len(backends),
        draining_backends=sum(1 for b in backends if b.draining),
        capacity=cap,
        in_flight=in_flight,
        utilisation=round(utilisation, 4),
        request_rate=round(request_rate, 3),
        saturated=utilisation > saturation,
        saturation=saturation,
        generation=generation,
    )
