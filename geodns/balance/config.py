"""`geodns balance` configuration: YAML in, frozen values out.

Every error names the file, the line and the field (`us-east.yaml:14:
pools.web.backends[1].weight: must be an integer >= 0, got -1`); unknown keys are
errors, so a typo never silently falls back to a default. A pool's `check:` is read
by the zone files' own check reader (`geodns.config.checks`), spelled as there
(`type:`, `expect:`). The schema is documented in README.md next to this file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from geodns.balance.choosers import ALGORITHMS
from geodns.config import ConfigInvalid, LineList, LineMap, read_yaml_file
from geodns.config.checks import POOL, read_check
from geodns.config.fields import Ctx
from geodns.config.model import Check

log = logging.getLogger("geodns.balance.config")


class ConfigError(ValueError):
    """The balancer's configuration file is wrong; the message says where."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    address: Address
    weight: int = 1
    max_conns: int = 1000
    """In-flight requests above which the backend takes no new ones; also its capacity."""
    drain: bool = False
    """Take no new requests; in-flight ones finish (set it and reload to drain)."""

    @property
    def key(self) -> str:
        return str(self.address)


@dataclass(frozen=True, slots=True)
class HashKey:
    source: str = "client"
    """`client` (the client's address), `header` or `cookie`."""
    name: str | None = None
    """Header or cookie name for those sources."""


@dataclass(frozen=True, slots=True)
class Passive:
    """Passive health: a circuit breaker fed by real traffic."""

    failures: int = 5
    """Consecutive connect errors or 5xx responses that open the breaker."""
    cool_off: float = 10.0
    """Seconds the backend stays out before it is tried again."""


@dataclass(frozen=True, slots=True)
class Sticky:
    cookie: str = "geodns_sticky"
    max_age: int | None = None
    """Cookie lifetime in seconds; None: a session cookie."""


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    backends: tuple[BackendConfig, ...]
    algorithm: str = "round_robin"
    hash_key: HashKey = HashKey()
    load_factor: float = 1.25
    """Bound for consistent_hash: no backend above load_factor x its fair share."""
    sticky: Sticky | None = None
    passive: Passive = Passive()
    check: Check | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    pool: str
    host: str | None = None
    """Exact host, `*.suffix`, or None for any host."""
    path: str = "/"
    """Path prefix, matched on segment boundaries (`/api` matches `/api` and `/api/x`)."""
    algorithm: str | None = None
    """Overrides the pool's algorithm for this route."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 3.0
    read: float = 30.0
    """Longest wait for the next bytes from a backend (headers or body)."""
    idle: float = 60.0
    """Keep-alive idle time for client and backend connections."""
    request_head: float = 10.0
    """A client's whole request head, from the connection's start or the first
    byte after a keep-alive pause (408 and close after it)."""
    request_body: float = 60.0
    """A client's whole request body, of any size, from the end of its head."""
    response_body: float = 300.0
    """A whole response body, backend to client, whichever side is slow."""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address | None = None
    token: str | None = None
    """Bearer token for write endpoints; None disables them."""


@dataclass(frozen=True, slots=True)
class BalancerConfig:
    source: str
    listen: tuple[Address, ...]
    pools: dict[str, PoolConfig] = field(hash=False)
    routes: tuple[RouteConfig, ...]
    region: str | None = None
    admin: AdminConfig = AdminConfig()
    timeouts: Timeouts = Timeouts()
    retries: int = 2
    """Extra attempts on other backends, for requests that are safe to repeat."""
    drain_timeout: float = 30.0
    saturation: float = 0.8
    """Utilisation above which /v1/load reports `saturated`."""
    capacity: int | None = None
    """Region capacity in concurrent requests; None: sum of healthy backends' max_conns."""
    sticky_secret: str | None = None
    via: str = "geodns"
    max_clients: int | None = None
    """Client connections per worker process; None: from the open-file limit (`max_clients()`)."""


# ---------------------------------------------------------------- validation


def _message(source: str, line: int | None, path: str, message: str) -> str:
    """`file:line: field: message`, or `file: field: message` for a document without lines."""
    return f"{source}:{line}: {path}: {message}" if line else f"{source}: {path}: {message}"


class _Fields:
    """Reads one mapping, remembering which keys were used, so leftovers are errors."""

    def __init__(self, source: str, where: str, data: Any, line: int | None = None) -> None:
        self.source = source
        self.where = where
        self.line = getattr(data, "line", None) or line
        """Of the mapping; None when the document came without lines (`parse` of a dict)."""
        self.data: dict[str, Any] = {} if data is None else data
        self.used: set[str] = set()
        if not isinstance(self.data, dict):
            raise self.error("", f"must be a mapping, got {type(data).__name__}")

    def path(self, key: str) -> str:
        if not key:
            return self.where or "(top level)"
        return f"{self.where}.{key}" if self.where else key

    def line_of(self, key: str) -> int | None:
        """The line of `key` (of `key[i]`: of that item)."""
        name, _, index = key.partition("[")
        value = self.data.get(name) if isinstance(self.data, dict) else None
        if index and isinstance(value, LineList):
            return value.line_of(int(index.rstrip("]")))
        if isinstance(self.data, LineMap) and name in self.data:
            return self.data.line_of(name)
        return self.line

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(_message(self.source, self.line_of(key), self.path(key), message))

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return default
        return self.data[key]

    def number(self, key: str, default: float, *, minimum: float = 0.0, exclusive: bool = False) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        if value < minimum or (exclusive and value == minimum):
            op = ">" if exclusive else ">="
            raise self.error(key, f"must be {op} {minimum}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int | None, *, minimum: int = 0) -> int | None:
        value = self.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.get(key, default, required=required)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, default: str | None, options: tuple[str, ...]) -> str | None:
        value = self.get(key, default)
        if value is not None and value not in options:
            raise self.error(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used, key=str)
        if unknown:
            raise self.error(str(unknown[0]), f"unknown key (known: {', '.join(sorted(self.used))})")


def parse_address(text: Any, error: Callable[[str], ConfigError]) -> Address:
    if not isinstance(text, str) or ":" not in text:
        raise error(f"must be 'host:port', got {text!r}")
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise error(f"port must be a number, got {port_text!r}") from None
    if not 0 < port < 65536:
        raise error(f"port must be 1..65535, got {port}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c.isspace() for c in host):
            raise error(f"bad host {host!r}") from None
    return Address(host, port)


def _check(source: str, where: str, data: Any) -> Check:
    """A pool's check, read as a zone file's is (`geodns.config.checks.POOL`)."""
    ctx = Ctx(source)
    check = read_check(ctx, data, where, POOL)
    for w in ctx.warnings:
        log.warning("%s", _message(source, w.line, w.field, w.message))
    if check is None or ctx.errors:
        raise ConfigError("\n".join(_message(source, e.line, e.field, e.message) for e in ctx.errors))
    return check


def _pool(source: str, name: str, data: Any) -> PoolConfig:
    f = _Fields(source, f"pools.{name}", data)
    algorithm = f.choice("algorithm", "round_robin", ALGORITHMS) or "round_robin"
    default_max = f.integer("max_conns", 1000, minimum=1) or 1000
    raw = f.get("backends", required=True)
    if not isinstance(raw, list) or not raw:
        raise f.error("backends", "must be a non-empty list")
    backends: list[BackendConfig] = []
    seen: set[Address] = set()
    for i, item in enumerate(raw):
        where = f"pools.{name}.backends[{i}]"
        line = raw.line_of(i) if isinstance(raw, LineList) else None
        if isinstance(item, str):
            item = {"address": item}
        b = _Fields(source, where, item, line)
        address = parse_address(b.get("address", required=True), lambda m, b=b: b.error("address", m))
        if address in seen:
            raise b.error("address", f"duplicate backend {address}")
        seen.add(address)
        backends.append(
            BackendConfig(
                address=address,
                weight=b.integer("weight", 1, minimum=0) or 0,
                max_conns=b.integer("max_conns", default_max, minimum=1) or default_max,
                drain=b.boolean("drain", False),
            )
        )
        b.done()
    if not any(b.weight for b in backends):
        raise f.error("backends", "at least one backend needs a weight above 0")

    hk = _Fields(source, f"pools.{name}.hash_key", f.get("hash_key"))
    hash_key = HashKey(
        source=hk.choice("source", "client", ("client", "header", "cookie")) or "client",
        name=hk.string("name"),
    )
    if hash_key.source != "client" and not hash_key.name:
        raise hk.error("name", f"is required when source is {hash_key.source}")
    hk.done()

    sticky = None
    raw_sticky = f.get("sticky")
    if raw_sticky is not None and raw_sticky is not False:
        s = _Fields(source, f"pools.{name}.sticky", {} if raw_sticky is True else raw_sticky)
        sticky = Sticky(cookie=s.string("cookie", "geodns_sticky") or "geodns_sticky", max_age=s.integer("max_age", None, minimum=1))
        s.done()

    p = _Fields(source, f"pools.{name}.passive", f.get("passive"))
    passive = Passive(
        failures=p.integer("failures", 5, minimum=1) or 5,
        cool_off=p.number("cool_off", 10.0, exclusive=True),
    )
    p.done()

    raw_check = f.get("check")
    check = _check(source, f"pools.{name}.check", raw_check) if raw_check is not None else None
    pool = PoolConfig(
        name=name,
        backends=tuple(backends),
        algorithm=algorithm,
        hash_key=hash_key,
        load_factor=f.number("load_factor", 1.25, minimum=1.0),
        sticky=sticky,
        passive=passive,
        check=check,
    )
    f.done()
    return pool


def _route(source: str, index: int, data: Any, pools: dict[str, PoolConfig]) -> RouteConfig:
    f = _Fields(source, f"routes[{index}]", data)
    pool = f.string("pool", required=True)
    if pool not in pools:
        raise f.error("pool", f"no pool named {pool!r} (pools: {', '.join(sorted(pools))})")
    host = f.string("host")
    if host in ("*", None):
        host = None
    else:
        host = host.lower().rstrip(".")
        if "*" in host and not (host.startswith("*.") and "*" not in host[2:]):
            raise f.error("host", f"wildcards only as a leading '*.', got {host!r}")
    path = f.string("path", "/") or "/"
    if not path.startswith("/"):
        raise f.error("path", f"must start with '/', got {path!r}")
    if path.endswith("*"):  # `/api/*` reads naturally; it means the prefix `/api`
        path = path[:-1]
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    route = RouteConfig(
        pool=pool, host=host, path=path, algorithm=f.choice("algorithm", None, ALGORITHMS)
    )
    f.done()
    return route


def parse(data: Any, source: str = "<config>") -> BalancerConfig:
    """Validate a decoded YAML document into a BalancerConfig."""
    f = _Fields(source, "", data)

    raw_listen = f.get("listen", required=True)
    if isinstance(raw_listen, str):
        raw_listen = [raw_listen]
    if not isinstance(raw_listen, list) or not raw_listen:
        raise f.error("listen", "must be an address or a list of addresses")
    listen = tuple(
        parse_address(a, lambda m, i=i: f.error(f"listen[{i}]", m)) for i, a in enumerate(raw_listen)
    )

    raw_pools = f.get("pools", required=True)
    if not isinstance(raw_pools, dict) or not raw_pools:
        raise f.error("pools", "must be a non-empty mapping of pool name to pool")
    pools = {str(name): _pool(source, str(name), body) for name, body in raw_pools.items()}

    raw_routes = f.get("routes")
    if raw_routes is None:
        if len(pools) != 1:
            raise f.error("routes", "is required when there is more than one pool")
        routes: tuple[RouteConfig, ...] = (RouteConfig(pool=next(iter(pools))),)
    else:
        if not isinstance(raw_routes, list) or not raw_routes:
            raise f.error("routes", "must be a non-empty list")
        routes = tuple(_route(source, i, r, pools) for i, r in enumerate(raw_routes))

    a = _Fields(source, "admin", f.get("admin"))
    admin_listen = a.get("listen")
    token = a.string("token")
    token_env = a.string("token_env")
    if token_env:
        token = os.environ.get(token_env) or None
        if token is None:
            raise a.error("token_env", f"environment variable {token_env} is not set")
    admin = AdminConfig(
        listen=parse_address(admin_listen, lambda m: a.error("listen", m)) if admin_listen else None,
        token=token,
    )
    a.done()

    t = _Fields(source, "timeouts", f.get("timeouts"))
    timeouts = Timeouts(
        connect=t.number("connect", 3.0, exclusive=True),
        read=t.number("read", 30.0, exclusive=True),
        idle=t.number("idle", 60.0, exclusive=True),
        request_head=t.number("request_head", 10.0, exclusive=True),
        request_body=t.number("request_body", 60.0, exclusive=True),
        response_body=t.number("response_body", 300.0, exclusive=True),
    )
    t.done()

    saturation = f.number("saturation", 0.8, exclusive=True)
    if saturation > 1.0:
        raise f.error("saturation", f"is a utilisation in (0, 1], got {saturation}")
    config = BalancerConfig(
        source=source,
        listen=listen,
        pools=pools,
        routes=routes,
        region=f.string("region"),
        admin=admin,
        timeouts=timeouts,
        retries=f.integer("retries", 2, minimum=0) or 0,
        drain_timeout=f.number("drain_timeout", 30.0),
        saturation=saturation,
        capacity=f.integer("capacity", None, minimum=1),
        sticky_secret=f.string("sticky_secret"),
        via=f.string("via", "geodns") or "geodns",
        max_clients=f.integer("max_clients", None, minimum=1),
    )
    f.done()
    return config


def load(path: str | os.PathLike[str]) -> BalancerConfig:
    """Read and validate a balancer config file; ConfigError says what is wrong where."""
    try:
        data = read_yaml_file(path)
    except ConfigInvalid as exc:  # unreadable, or not YAML: `file:line: ...`
        raise ConfigError(str(exc)) from None
    return parse(data, str(path))
