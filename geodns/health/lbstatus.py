"""The status of a region's own balancer pool, read from HAProxy, nginx or Envoy.

A region fronted by a balancer the operator already runs is judged from that
balancer's own view (as F5's global tier reads its local tier): how many of
the pool's servers it holds UP, and how full they are. The readers here are
pure: status-page bytes in, a `PoolStatus` out, or `StatusUnreadable` saying
why not. `read_pool` is the one piece of I/O (one GET), shared by the health
probe (`balancer:` checks of type haproxy, nginx, envoy) and the capacity
poller that feeds the `capacity` step.

- HAProxy: the stats page as CSV (`stats uri /stats` read as `/stats;csv`),
  fields named by its header line (management.txt, "CSV format"), or the
  built-in Prometheus exporter (`haproxy_server_status{state=...}`).
- nginx: `stub_status` (Active connections, accepts/handled/requests,
  Reading/Writing/Waiting). Open-source nginx publishes no upstream state, so
  it reports load only; the check is down when the page cannot be read.
- Envoy: the admin API's `/clusters?format=json` (envoy.admin.v3.Clusters).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass

import aiohttp
from yarl import URL

from geodns.config.model import BALANCER_STATUS_KINDS, Check

__all__ = [
    "POOL_KINDS",
    "PoolStatus",
    "StatusUnreadable",
    "parse_haproxy",
    "parse_haproxy_csv",
    "parse_haproxy_prometheus",
    "parse_nginx_stub_status",
    "parse_envoy_clusters",
    "parse_status",
    "pool_verdict",
    "read_pool",
    "probe_pool",
]

POOL_KINDS = BALANCER_STATUS_KINDS
"""`balancer:` check types that read a balancer's own status page."""

# A large HAProxy (thousands of servers) or Envoy mesh has a big status page;
# past this we refuse rather than buffer without bound.
BODY_LIMIT = 16 * 1024 * 1024


class StatusUnreadable(ValueError):
    """The page is not the balancer's status, or lacks the named pool."""


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One reading of a balancer's pool."""

    balancer: str
    """`haproxy`, `nginx` or `envoy`."""
    pool: str | None
    """The HAProxy backend or Envoy cluster read; None for nginx (the whole server)."""
    up: int | None
    """Servers the balancer would send traffic to; None when it does not say (nginx)."""
    total: int | None
    """Servers in the pool; None when it does not say (nginx)."""
    not_up: tuple[str, ...] = ()
    """`name STATE` of each server that is not up, for the explanation."""
    in_use: float | None = None
    """Sessions, connections or requests in flight (queued ones included)."""
    queued: float = 0.0
    """Of `in_use`, those waiting in the balancer's queue (HAProxy)."""
    limit: float | None = None
    """What `in_use` is measured against; None or 0: utilisation unknown."""
    unit: str = "sessions"
    """What `in_use` counts, for the explanation."""

    @property
    def utilisation(self) -> float | None:
        """`in_use / limit` (above 1 when requests queue), None when no limit is known."""
        if self.in_use is None or not self.limit:
            return None
        return self.in_use / self.limit

    def with_capacity(self, capacity: int | None) -> PoolStatus:
        """The same reading measured against an operator-stated capacity."""
        if capacity is None:
            return self
        return PoolStatus(self.balancer, self.pool, self.up, self.total, self.not_up,
                          self.in_use, self.queued, float(capacity), self.unit)

    def name(self) -> str:
        return self.balancer if self.pool is None else f"{self.balancer} {self.pool}"

    def servers(self, min_up: int) -> str:
        """`1/3 servers up (min_up 2): s2 DOWN, s3 MAINT`."""
        if self.up is None or self.total is None:
            return "no server states reported"
        text = f"{self.up}/{self.total} servers up (min_up {min_up})"
        if self.not_up:
            shown = ", ".join(self.not_up[:5]) + (f", +{len(self.not_up) - 5} more" if len(self.not_up) > 5 else "")
            text += f": {shown}"
        return text

    def load(self) -> str:
        """`5 sessions + 2 queued of 4 (175%)`, or why there is no figure."""
        if self.in_use is None:
            return "no load figure"
        used = _num(self.in_use - self.queued)
        queued = f" + {_num(self.queued)} queued" if self.queued else ""
        if self.up == 0:
            return f"{used} {self.unit}{queued}, no server up to take them"
        if not self.limit:
            return f"{used} {self.unit}{queued}, no limit known (set capacity:)"
        return f"{used} {self.unit}{queued} of {_num(self.limit)} ({self.utilisation:.0%})"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def pool_verdict(status: PoolStatus, min_up: int) -> tuple[bool, str]:
    """Up unless fewer than `min_up` servers are up; the detail explains either way."""
    head = status.name()
    if status.up is None:
        return True, f"{head}: {status.load()}"
    ok = status.up >= min_up
    return ok, f"{head}: {status.servers(min_up)}; {status.load()}"


# --- HAProxy --------------------------------------------------------------------------

def _haproxy_up(state: str) -> bool:
    """HAProxy sends traffic to UP (and `UP 1/3`, still up while going down) and to
    servers without a check (`no check`); DOWN, MAINT, DRAIN and NOLB take none."""
    word = state.strip().split(" ", 1)[0].upper()
    return word == "UP" or state.strip().lower() == "no check"


def _int_field(row: dict[str, str], key: str) -> int | None:
    value = (row.get(key) or "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise StatusUnreadable(f"haproxy: field {key}={value[:20]!r} is not a count")
    return number


def _haproxy_status(pool: str, servers: list[tuple[str, str, int, int | None, int]],
                    backend: tuple[int, int | None, int] | None) -> PoolStatus:
    """servers: (name, state, sessions, limit, queued); backend: (sessions, limit, queued)."""
    up = [s for s in servers if _haproxy_up(s[1])]
    not_up = tuple(f"{name} {state}" for name, state, *_ in servers if not _haproxy_up(state))
    sessions = sum(s[2] for s in servers)
    queued = sum(s[4] for s in servers) + (backend[2] if backend else 0)
    limits = [s[3] for s in up]
    if servers and not up:
        limit: float | None = None  # a pool with nothing up has no room, whatever fullconn says
    elif up and all(limit for limit in limits):
        limit = float(sum(limits))  # type: ignore[arg-type]
    elif backend is not None and backend[1]:
        # Servers without maxconn: the backend's own limit (fullconn) is what is left.
        limit = float(backend[1])
        sessions = max(sessions, backend[0])
    else:
        limit = None
    return PoolStatus("haproxy", pool, len(up), len(servers), not_up,
                      float(sessions + queued), float(queued), limit, "sessions")


def parse_haproxy_csv(text: str, backend: str) -> PoolStatus:
    """The named backend's servers from HAProxy's CSV stats (`/stats;csv`)."""
    lines = text.lstrip().splitlines()
    if not lines or not lines[0].startswith("# pxname,svname,"):
        raise StatusUnreadable("haproxy: not CSV stats (expected a '# pxname,svname,...' header)")
    header = lines[0][2:].split(",")
    for needed in ("status", "scur", "slim", "qcur"):
        if needed not in header:
            raise StatusUnreadable(f"haproxy: CSV stats without a {needed} column")
    servers: list[tuple[str, str, int, int | None, int]] = []
    row_backend: tuple[int, int | None, int] | None = None
    names: set[str] = set()
    for row in csv.DictReader(io.StringIO("\n".join(lines[1:])), fieldnames=header):
        px, sv = row.get("pxname") or "", row.get("svname") or ""
        if sv == "FRONTEND" or not px:
            continue
        names.add(px)
        if px != backend:
            continue
        if sv == "BACKEND":
            row_backend = (_int_field(row, "scur") or 0, _int_field(row, "slim"), _int_field(row, "qcur") or 0)
        else:
            servers.append((sv, row.get("status") or "", _int_field(row, "scur") or 0,
                            _int_field(row, "slim"), _int_field(row, "qcur") or 0))
    if row_backend is None and not servers:
        raise StatusUnreadable(_missing("haproxy", "backend", backend, names))
    return _haproxy_status(backend, servers, row_backend)


_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_PROM_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Before HAProxy 2.4 the exporter gave haproxy_server_status one series, its value the state.
_PROM_STATES = {0: "DOWN", 1: "UP", 2: "MAINT", 3: "DRAIN", 4: "NOLB"}


def parse_haproxy_prometheus(text: str, backend: str) -> PoolStatus:
    """The named backend's servers from HAProxy's Prometheus exporter."""
    state: dict[str, str] = {}
    sessions: dict[str, float] = {}
    limits: dict[str, float] = {}
    queues: dict[str, float] = {}
    be: dict[str, float] = {}
    proxies: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("haproxy_"):
            continue
        m = _PROM_LINE.match(line)
        if m is None:
            continue
        name, labels_text, raw = m.groups()
        labels = dict(_PROM_LABEL.findall(labels_text or ""))
        proxy = labels.get("proxy")
        if proxy is None:
            continue
        if name.startswith(("haproxy_server_", "haproxy_backend_")):
            proxies.add(proxy)
        if proxy != backend:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if not math.isfinite(value) or value < 0:
            continue
        server = labels.get("server")
        if name == "haproxy_server_status" and server is not None:
            if "state" in labels:
                if value == 1:
                    state[server] = labels["state"]
                else:
                    state.setdefault(server, "")
            else:
                state[server] = _PROM_STATES.get(int(value), f"state {int(value)}")
        elif name == "haproxy_server_current_sessions" and server is not None:
            sessions[server] = value
        elif name == "haproxy_server_limit_sessions" and server is not None:
            limits[server] = value
        elif name == "haproxy_server_current_queue" and server is not None:
            queues[server] = value
        elif name in ("haproxy_backend_current_sessions", "haproxy_backend_limit_sessions", "haproxy_backend_current_queue"):
            be[name.removeprefix("haproxy_backend_")] = value
    if not state and not be:
        if not proxies and "haproxy_" not in text:
            raise StatusUnreadable("haproxy: not Prometheus metrics from HAProxy's exporter")
        raise StatusUnreadable(_missing("haproxy", "backend", backend, proxies))
    servers = [
        (name, st or "?", int(sessions.get(name, 0)), int(limits[name]) if limits.get(name) else None, int(queues.get(name, 0)))
        for name, st in sorted(state.items())
    ]
    backend_row = (int(be.get("current_sessions", 0)), int(be["limit_sessions"]) if be.get("limit_sessions") else None,
                   int(be.get("current_queue", 0))) if be else None
    return _haproxy_status(backend, servers, backend_row)


def parse_haproxy(text: str, backend: str) -> PoolStatus:
    """CSV stats or Prometheus metrics, whichever the page is."""
    if text.lstrip().startswith("# pxname,"):
        return parse_haproxy_csv(text, backend)
    return parse_haproxy_prometheus(text, backend)


# --- nginx ----------------------------------------------------------------------------

_STUB = re.compile(
    r"Active connections:\s*(\d+)\s+server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)\s+"
    r"Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)"
)


def parse_nginx_stub_status(text: str) -> PoolStatus:
    """nginx's stub_status page: active connections (the limit is the operator's `capacity`)."""
    m = _STUB.search(text)
    if m is None:
        raise StatusUnreadable("nginx: not a stub_status page (expected 'Active connections: N ...')")
    active = int(m.group(1))
    return PoolStatus("nginx", None, None, None, (), float(active), 0.0, None, "active connections")


# --- Envoy ----------------------------------------------------------------------------

# HostHealthStatus flags (envoy/admin/v3/clusters.proto) under which Envoy sends a
# host no traffic. failed_active_degraded_check only marks it degraded: still used.
_ENVOY_EXCLUDING = (
    "failed_active_health_check",
    "failed_outlier_check",
    "failed_eds_health",
    "pending_dynamic_removal",
    "pending_active_hc",
    "excluded_via_immediate_hc_fail",
    "active_hc_timeout",
)
_ENVOY_BAD_EDS = ("UNHEALTHY", "DRAINING", "TIMEOUT")


def _envoy_host_state(host: dict) -> str | None:
    """None when Envoy would use the host, else what keeps it out."""
    health = host.get("health_status") or {}
    if not isinstance(health, dict):
        return "health_status unreadable"
    reasons = [flag for flag in _ENVOY_EXCLUDING if health.get(flag) is True]
    eds = health.get("eds_health_status")
    if isinstance(eds, str) and eds.upper() in _ENVOY_BAD_EDS:
        reasons.append(f"eds {eds.upper()}")
    return "/".join(reasons) if reasons else None


def _envoy_address(host: dict, index: int) -> str:
    addr = host.get("address") or {}
    sock = addr.get("socket_address") if isinstance(addr, dict) else None
    if isinstance(sock, dict) and sock.get("address"):
        port = sock.get("port_value", sock.get("port"))
        return f"{sock['address']}:{port}" if port is not None else str(sock["address"])
    pipe = addr.get("pipe") if isinstance(addr, dict) else None
    if isinstance(pipe, dict) and pipe.get("path"):
        return str(pipe["path"])
    return str(host.get("hostname") or f"host {index}")


def _envoy_stat(host: dict, name: str) -> float:
    # proto3 JSON leaves a zero value out, and older Envoys send numbers as strings.
    for stat in host.get("stats") or ():
        if isinstance(stat, dict) and stat.get("name") == name:
            try:
                value = float(stat.get("value", 0) or 0)
            except (TypeError, ValueError):
                return 0.0
            return value if math.isfinite(value) and value >= 0 else 0.0
    return 0.0


def _envoy_limits(cluster: dict) -> dict[str, float]:
    """The DEFAULT priority's circuit breaker thresholds."""
    breakers = cluster.get("circuit_breakers") or {}
    for t in (breakers.get("thresholds") or ()) if isinstance(breakers, dict) else ():
        if isinstance(t, dict) and t.get("priority", "DEFAULT") == "DEFAULT":
            out = {}
            for key in ("max_connections", "max_requests"):
                try:
                    value = float(t.get(key) or 0)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value) and value > 0:
                    out[key] = value
            return out
    return {}


def parse_envoy_clusters(text: str, cluster: str) -> PoolStatus:
    """The named cluster's hosts from Envoy's admin `/clusters?format=json`."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise StatusUnreadable("envoy: not JSON (ask the admin API for /clusters?format=json)") from None
    statuses = doc.get("cluster_statuses") if isinstance(doc, dict) else None
    if not isinstance(statuses, list):
        raise StatusUnreadable("envoy: no cluster_statuses (expected /clusters?format=json)")
    found = next((c for c in statuses if isinstance(c, dict) and c.get("name") == cluster), None)
    if found is None:
        names = {str(c.get("name")) for c in statuses if isinstance(c, dict)}
        raise StatusUnreadable(_missing("envoy", "cluster", cluster, names))
    hosts = [h for h in (found.get("host_statuses") or ()) if isinstance(h, dict)]
    not_up = []
    for i, host in enumerate(hosts):
        reason = _envoy_host_state(host)
        if reason is not None:
            not_up.append(f"{_envoy_address(host, i)} {reason}")
    requests = sum(_envoy_stat(h, "rq_active") for h in hosts)
    connections = sum(_envoy_stat(h, "cx_active") for h in hosts)
    limits = _envoy_limits(found)
    # Whichever circuit breaker is nearer to tripping is the one that matters.
    choices = []
    if "max_requests" in limits:
        choices.append((requests / limits["max_requests"], requests, limits["max_requests"], "active requests"))
    if "max_connections" in limits:
        choices.append((connections / limits["max_connections"], connections, limits["max_connections"], "active connections"))
    if choices:
        _, in_use, limit, unit = max(choices)
    else:
        in_use, limit, unit = requests, None, "active requests"
    return PoolStatus("envoy", cluster, len(hosts) - len(not_up), len(hosts), tuple(not_up),
                      in_use, 0.0, limit, unit)


def _missing(balancer: str, what: str, name: str, known: set[str]) -> str:
    shown = ", ".join(sorted(known)[:10]) or "none"
    return f"{balancer}: no {what} {name!r} in the status (found: {shown})"


# --- the reading, and the probe -------------------------------------------------------

def parse_status(check: Check, text: str) -> PoolStatus:
    """The pool a `balancer:` check of type haproxy, nginx or envoy names, from its page.
    Whatever the page holds, the outcome is a PoolStatus or StatusUnreadable."""
    try:
        if check.kind == "haproxy":
            status = parse_haproxy(text, check.pool or "")
        elif check.kind == "envoy":
            status = parse_envoy_clusters(text, check.pool or "")
        elif check.kind == "nginx":
            status = parse_nginx_stub_status(text)
        else:
            raise StatusUnreadable(f"{check.kind!r} is not a balancer status check")
    except StatusUnreadable:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError, OverflowError, csv.Error) as exc:
        # A page of the right kind in a shape nobody documented (a field of the wrong type).
        raise StatusUnreadable(f"{check.kind}: unreadable status page ({type(exc).__name__}: {str(exc)[:80]})") from None
    return status.with_capacity(check.capacity)


async def read_pool(check: Check, session: aiohttp.ClientSession, timeout: float | None = None) -> PoolStatus:
    """GET the check's status URL once and read it. Raises StatusUnreadable, aiohttp.ClientError,
    TimeoutError."""
    if not check.url:
        raise StatusUnreadable(f"{check.kind} check without a url")
    kwargs: dict = {"headers": {"User-Agent": "geodns-health/1", "Accept": "*/*"}, "allow_redirects": False}
    if check.url.startswith("https:") and not check.verify_tls:
        kwargs["ssl"] = False
    if timeout is not None:
        kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
    # encoded=True: HAProxy's `;csv` must reach it as written, not as %3Bcsv.
    async with session.get(URL(check.url, encoded=True), **kwargs) as resp:
        if resp.status != 200:
            raise StatusUnreadable(f"{check.kind}: HTTP {resp.status} from {check.url}")
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > BODY_LIMIT:
                raise StatusUnreadable(f"{check.kind}: status page larger than {BODY_LIMIT} bytes")
            chunks.append(chunk)
    return parse_status(check, b"".join(chunks).decode("utf-8", errors="replace"))


async def probe_pool(
    check: Check, address: str, session: aiohttp.ClientSession | None, source: str | None
) -> tuple[bool, str]:
    """The probe runner for haproxy, nginx and envoy checks (see `geodns.health.probes`)."""
    own = session is None
    if own:
        from geodns.health.probes import probe_session

        session = probe_session(source=source)
    assert session is not None
    try:
        status = await read_pool(check, session)
    except StatusUnreadable as exc:
        return False, str(exc)
    finally:
        if own:
            await session.close()
    return pool_verdict(status, check.min_up)
