"""The admin port: status page, JSON API, Prometheus /metrics.

One aiohttp application. Reads (status page, /v1/status, /v1/explain,
/metrics) are open to loopback clients; from anywhere else, and for every
write (reload, drain, undrain), the request needs `Authorization: Bearer
<token>`. Every one of them must name this server in its `Host` header (its
address, localhost, or an `--admin-host` name), so that a web page whose DNS
name is rebound to the node cannot read or write through a browser. With no token configured, writes are refused: an admin port
must never change answers for whoever can reach it. docs/openapi.yaml
documents every endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from geodns.control.controller import Controller, ReloadFailed, load_admin_state
from geodns.control.metrics import CONTENT_TYPE, StatsSource, node_registry, region_counts, render
from geodns.dns.explain import explain
from geodns.dns.snapshot import Snapshot
from geodns.health import strictjson
from geodns.health.drains import MAX_REASON, DrainRefused, DrainStore
from geodns.health.peers import ADMIN_TOKEN
from geodns.health.quorum import Drain
from geodns.serverlog import ServerLog
from geodns.steer.verdict import balancer_target, endpoint_target, region_verdict

log = logging.getLogger("geodns.admin")

STATIC = Path(__file__).with_name("static")
SHARE_WINDOW = 300.0
"""Answer shares are computed over the last five minutes."""
SAMPLE_EVERY = 2.0
CHANGES_KEPT = 200
MAX_BODY = 16 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]



class AdminState:
    """What the admin app remembers between requests: verdict changes and answer samples."""

    admin_hosts: frozenset[str] = frozenset()
    """Names the admin port answers to besides its addresses and localhost (`--admin-host`)."""
    listen_host: str | None = None
    zone_store: Any = None
    """`geodns.control.zonestore.ZoneStore`: each zone's content hash, and what peers serve."""

    def __init__(self, controller: Controller, token: str | None, stats: StatsSource | None, health: Any) -> None:
        self.controller = controller
        self.token = token
        self.stats = stats
        self.health = health
        self.changes: deque[dict[str, Any]] = deque(maxlen=CHANGES_KEPT)
        self.samples: deque[tuple[float, dict[str, int]]] = deque()
        self._last_up: dict[tuple[str, str], bool] = {}
        self._sampler: asyncio.Task[None] | None = None
        if controller.ref is not None:
            self._remember(controller.snapshot)

    # ---- verdict changes, from the controller's snapshots ------------------

    def _remember(self, snap: Snapshot) -> None:
        self._last_up = {
            (origin, region): up for origin, czone in snap.zones.items() for region, up in czone.region_up.items()
        }

    def on_snapshot(self, snap: Snapshot) -> None:
        now = time.time()
        for origin, czone in snap.zones.items():
            for region, up in czone.region_up.items():
                before = self._last_up.get((origin, region))
                if before is None or before == up:
                    continue
                cause = region_verdict(czone.regions[region], snap.verdicts).cause
                self.changes.appendleft(
                    {"at": now, "generation": snap.generation, "zone": origin, "region": region, "up": up, "cause": cause}
                )
                log.info("region verdict zone=%s region=%s up=%s cause=%r generation=%d", origin, region, up, cause, snap.generation)
        self._remember(snap)

    # ---- answer shares, from the data plane's counters --------------------

    def sample(self) -> None:
        if self.stats is None:
            return
        now = time.monotonic()
        self.samples.append((now, dict(region_counts(self.stats()))))
        while len(self.samples) > 2 and self.samples[1][0] < now - SHARE_WINDOW:
            self.samples.popleft()

    def shares(self) -> dict[str, Any]:
        if len(self.samples) < 2:
            return {"window_seconds": 0.0, "answers": 0, "regions": {}}
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        delta = {r: n - first.get(r, 0) for r, n in last.items()}
        delta = {r: n for r, n in delta.items() if n > 0}  # a restarted worker can make a delta negative
        total = sum(delta.values())
        return {
            "window_seconds": round(t1 - t0, 1),
            "answers": total,
            "regions": {r: round(n / total, 4) for r, n in sorted(delta.items())} if total else {},
        }

    async def sampling(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample must not end sampling
                log.exception("answer sample failed")
            await asyncio.sleep(SAMPLE_EVERY)


CONTROLLER = web.AppKey("controller", Controller)
STATE = web.AppKey("admin_state", AdminState)


# ---- access --------------------------------------------------------------------


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def _bearer_ok(request: web.Request, token: str | None) -> bool:
    if not token:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # aiohttp hands over header bytes that are not UTF-8 as surrogates: compare bytes, never raise.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())


def admin_host(text: str) -> str:
    """A name the admin port answers to (`--admin-host`): a DNS name or an IP address, no port."""
    name = text.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name))
    labels = name.split(".")
    if not name or len(name) > 253 or not all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() and label.isascii() for label in labels):
        raise ValueError(f"{text!r} is not a host name or IP address (give the name only, no scheme or port)")
    return name


def _host_name(header: str) -> str | None:
    """The name in a Host header (`name`, `name:port`, `[v6]:port`), canonical; None when malformed."""
    host = header.strip()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    else:
        name, sep, port = host.rpartition(":")
        if not sep:
            name = host
        elif not port.isdigit():
            return None
    try:
        return admin_host(name)
    except ValueError:
        return None


def _host_allowed(request: web.Request, state: AdminState) -> bool:
    """DNS rebinding defence: a browser on a page of `evil.example` whose name now points at
    this node sends `Host: evil.example`. Allowed: the names configured with --admin-host,
    the address the request came in on or the admin listen address, a loopback address and
    `localhost` (names a page elsewhere cannot rebind). A client sending no Host is no browser."""
    header = request.headers.get("Host")
    if header is None:
        return True
    name = _host_name(header)
    if name is None:
        return False
    if name in state.admin_hosts or name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address in _local_addresses(request, state)


def _local_addresses(request: web.Request, state: AdminState) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = set()
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    for text in (sockname[0] if sockname else None, state.listen_host):
        with contextlib.suppress(TypeError, ValueError):
            address = ipaddress.ip_address(text.split("%", 1)[0])
            address = address.ipv4_mapped or address if address.version == 6 else address
            if not address.is_unspecified:  # a wildcard listen address is no name of ours
                found.add(address)
    return found


def _misdirected(request: web.Request, state: AdminState) -> web.Response:
    names = ", ".join(["localhost", *sorted(state.admin_hosts)])
    return error(
        421,
        f"Host {request.headers.get('Host', '')[:100]!r} is not a name of this admin server (DNS rebinding defence): "
        f"use its IP address or one of {names}; more names with geodns serve --admin-host NAME",
    )


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def read(handler: Handler) -> Handler:
    """Open on loopback; from elsewhere, the bearer token."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state: AdminState = request.app[STATE]
        if not _host_allowed(request, state):
            return _misdirected(request, state)
        if not _loopback(request) and not _bearer_ok(request, state.token):
            return error(401, "reads from outside loopback need Authorization: Bearer <token>")
        return await handler(request)

    return wrapped


def write(handler: Handler) -> Handler:
    """Always the bearer token; refused outright when none is configured."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state: AdminState = request.app[STATE]
        if not _host_allowed(request, state):
            return _misdirected(request, state)
        if not state.token:
            return error(403, "admin writes are disabled: start geodns serve with --admin-token or $GEODNS_ADMIN_TOKEN")
        if not _bearer_ok(request, state.token):
            return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        return await handler(request)

    return wrapped


# ---- handlers ------------------------------------------------------------------


@read
async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers=_page_headers())


def _page_headers() -> dict[str, str]:
    # Everything ships with the package: nothing may load from elsewhere.
    return {
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


@read
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = STATIC / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=_page_headers())


@read
async def metrics(request: web.Request) -> web.Response:
    registry: CollectorRegistry = request.app[REGISTRY_KEY]
    return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE})


@read
async def status(request: web.Request) -> web.Response:
    state: AdminState = request.app[STATE]
    return web.json_response(status_document(state), dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def status_document(state: AdminState) -> dict[str, Any]:
    c = state.controller
    snap = c.snapshot
    drains = current_drains(state)
    shares = state.shares()
    regions: dict[str, dict[str, Any]] = {}
    zones = []
    hashes = state.zone_store.hashes() if state.zone_store is not None else {}
    for origin, czone in sorted(snap.zones.items()):
        stale = state.zone_store.stale_peers.get(origin, []) if state.zone_store is not None else []
        zones.append({"zone": origin, "regions": sorted(czone.regions), "hash": hashes.get(origin), "stale_peers": stale})
        for name, info in czone.regions.items():
            region = info.region
            entry = regions.setdefault(
                name,
                {
                    "name": name,
                    "latitude": region.latitude,
                    "longitude": region.longitude,
                    "zones": {},
                    "endpoints": [],
                    "min_healthy": region.min_healthy,
                },
            )
            entry["zones"][origin] = czone.region_up[name]
            if not entry["endpoints"]:
                for e in region.endpoints:
                    target = endpoint_target(name, e.address)
                    v = snap.verdicts.get(target)
                    entry["endpoints"].append(
                        {"target": target, "address": str(e.address), "up": v is None or v.up, "cause": v.cause if v else "",
                         "state": v.state.value if v else "up", "drained": target in drains}
                    )
    for name, entry in regions.items():
        entry["up"] = all(entry["zones"].values())
        v = snap.verdicts.get(name)
        entry["verdict"] = None if v is None else v.to_json()
        entry["drained"] = drains.get(name)
        entry["share"] = shares["regions"].get(name, 0.0)
        any_zone = next(z for z in snap.zones.values() if name in z.regions)
        rv = region_verdict(any_zone.regions[name], snap.verdicts)
        entry["cause"], entry["state"] = rv.cause, rv.state.value
        entry["capacity"] = {"utilisation": c.utilisation.get(name), "detail": c.capacity_notes.get(name)}
        b = snap.verdicts.get(balancer_target(name))
        entry["balancer"] = None if b is None else {"up": b.up, "cause": b.cause, "state": b.state.value}
    geo = c.geo
    doc: dict[str, Any] = {
        "now": time.time(),
        "generation": snap.generation,
        "snapshot_created": snap.created,
        "node": getattr(getattr(state.health, "node", None), "name", None),
        "zones": zones,
        "regions": regions,
        "drains": drains,
        "changes": list(state.changes)[:50],
        "shares": shares,
        "reload": {"failures": c.reload_failures, "last_error": list(c.last_reload_error)},
        "geoip": None
        if geo is None
        else {"path": str(geo.path), "type": geo.database_type, "build_epoch": geo.build_epoch, "age_seconds": round(time.time() - geo.build_epoch)},
        "observers": {},
        "health": None,
        "drain_history": {},
    }
    if state.health is not None:
        health = state.health.status()
        doc["health"] = {k: health.get(k) for k in ("node", "isolated", "peers", "regions")}
        # Over NATS: the drains and undrains of each target the bucket kept, oldest first.
        doc["drain_history"] = (health.get("exchange") or {}).get("drain_history") or {}
        doc["observers"] = {
            target: {"region": t.get("region"), "verdict": t.get("verdict"), "observers": t.get("observers", {})}
            for target, t in health.get("targets", {}).items()
        }
        for name, entry in regions.items():
            # The live verdict: its cause says what the balancer reports now, while a
            # snapshot is only republished when some up/down state changes.
            live = (health.get("targets", {}).get(balancer_target(name)) or {}).get("verdict")
            if live:
                entry["balancer"] = {"up": live.get("up", True), "cause": live.get("cause", ""), "state": live.get("state")}
    return doc


def current_drains(state: AdminState) -> dict[str, str]:
    if state.health is not None:
        return {t: getattr(d, "reason", "") or "" for t, d in state.health.drains().items()}
    return {t: d.reason for t, d in _state_file_store(state.controller.state_path).load(_state_file_drain).items()}


# ---- drains without a health service: the admin state file ---------------------
#
# A node has one drain store. With a health service it is the service's
# (`state_dir/drains.json`, signed, sent to peers); without one it is the
# `drains` of the admin state file, which the controller reads. Both are a
# `geodns.health.drains.DrainStore`, the only code that writes drains.


def _state_file_store(path: str | None) -> DrainStore:
    return DrainStore(path, reasons=True)


def _state_file_drain(raw: Any) -> Drain:
    """An entry of the admin state file's `{target: reason}`, checked as it is read."""
    target, reason = raw.get("target"), raw.get("reason")
    if not isinstance(target, str) or not target or len(target) > 300:
        raise DrainRefused("target must be a region or endpoint name")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise DrainRefused(f"reason must be a string of at most {MAX_REASON} characters")
    return Drain(target, True, reason, 0.0, "admin")


def adopt_state_file_drains(controller: Controller, health: Any) -> None:
    """With a health service, drains left in the admin state file (by an older
    geodns, or by hand) move into the service's store, and out of the file."""
    store = _state_file_store(controller.state_path)
    found = store.load(_state_file_drain)
    if not found:
        return
    for target, d in found.items():
        if target in health.drains():
            continue
        try:
            health.drain(target, d.reason)
        except (KeyError, ValueError) as exc:
            log.error("admin state drain not adopted target=%s error=%s", target, exc)
            continue
        log.warning("admin state drain adopted by the health service target=%s reason=%r", target, d.reason)
    try:
        store.save([])
    except OSError as exc:
        log.error("cannot remove the adopted drains from the admin state file %s: %s", controller.state_path, exc)
        return
    apply_state_file(controller)


@read
async def explain_handler(request: web.Request) -> web.Response:
    state: AdminState = request.app[STATE]
    q = request.query
    name, client, qtype = q.get("name", "").strip(), q.get("client", "").strip(), q.get("type", "A").strip() or "A"
    if not name or not client:
        return error(400, "name and client are required, e.g. /v1/explain?name=www.example.com&client=192.0.2.1&type=A")
    if len(name) > 255:
        return error(400, "name is longer than 255 characters")
    try:
        result = explain(state.controller.snapshot, name, qtype, client, time.time())
    except ValueError as exc:
        return error(400, str(exc))
    return web.json_response(result.as_dict())


@write
async def reload(request: web.Request) -> web.Response:
    state: AdminState = request.app[STATE]
    try:
        snap = state.controller.reload()
    except ReloadFailed as exc:
        return error(422, "reload refused; still serving the previous configuration", errors=exc.errors, generation=state.controller.generation)
    log.info("reload via admin API by=%s generation=%d", request.remote, snap.generation)
    return web.json_response({"generation": snap.generation, "zones": sorted(snap.zones)})


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY:
        return error(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return error(413, f"body larger than {MAX_BODY} bytes")
    try:
        body = strictjson.loads(raw or b"null")
    except (ValueError, RecursionError):
        return error(400, 'body must be JSON, e.g. {"target": "eu-west", "reason": "maintenance"}')
    if not isinstance(body, dict):
        return error(400, 'body must be a JSON object, e.g. {"target": "eu-west", "reason": "maintenance"}')
    return body


def known_targets(snap: Snapshot) -> set[str]:
    targets = set()
    for czone in snap.zones.values():
        for name, info in czone.regions.items():
            targets.add(name)
            targets.update(endpoint_target(name, e.address) for e in info.region.endpoints)
    return targets


def _target(body: dict[str, Any], snap: Snapshot) -> str | web.Response:
    target = body.get("target")
    if not isinstance(target, str) or not target.strip():
        return error(400, "target is required: a region name or REGION/ADDRESS")
    target = target.strip()
    known = known_targets(snap)
    if target not in known:
        return error(400, f"unknown target {target!r}: not a region or endpoint of any zone", known=sorted(known))
    return target


async def _target_request(request: web.Request, state: AdminState) -> tuple[dict, str] | web.Response:
    """The JSON body of a drain/undrain and the known target it names, or the 4xx to answer."""
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    target = _target(body, state.controller.snapshot)
    if isinstance(target, web.Response):
        return target
    return body, target


@write
async def drain(request: web.Request) -> web.Response:
    state: AdminState = request.app[STATE]
    parsed = await _target_request(request, state)
    if isinstance(parsed, web.Response):
        return parsed
    body, target = parsed
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        return error(400, f"reason must be a string of at most {MAX_REASON} characters")
    reason = " ".join(reason.split()) or f"drained via admin API at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    return await _apply(request, state, target, reason)


@write
async def undrain(request: web.Request) -> web.Response:
    state: AdminState = request.app[STATE]
    parsed = await _target_request(request, state)
    if isinstance(parsed, web.Response):
        return parsed
    return await _apply(request, state, parsed[1], None)


async def _apply(request: web.Request, state: AdminState, target: str, reason: str | None) -> web.Response:
    """Drain (reason given) or undrain (None) through the health service or the state file."""
    was = current_drains(state)
    if state.health is not None:
        try:
            state.health.drain(target, reason) if reason is not None else state.health.undrain(target)
        except KeyError as exc:
            return error(400, f"unknown target {target!r}: {exc}")
        except ValueError as exc:
            return error(400, str(exc))
    else:
        path = state.controller.state_path
        if not path:
            return error(409, "no admin state file: start geodns serve with --state FILE so drains survive a restart")
        try:
            write_drain(path, target, reason)
        except (OSError, ValueError) as exc:
            return error(500, f"cannot write the admin state file {path}: {exc}")
        apply_state_file(state.controller)
    action = "drain" if reason is not None else "undrain"
    changed = (target in was) != (reason is not None) or (reason is not None and was.get(target) != reason)
    log.info("%s target=%s reason=%r by=%s changed=%s generation=%d", action, target, reason or "", request.remote, changed, state.controller.generation)
    return web.json_response(
        {"target": target, "drained": reason is not None, "reason": reason, "changed": changed, "generation": state.controller.generation, "drains": current_drains(state)}
    )


def write_drain(path: str, target: str, reason: str | None) -> None:
    """Set or clear one drain in the admin state file, keeping its other keys; atomic replace."""
    store = _state_file_store(path)
    drains = store.load(_state_file_drain)
    if reason is None:
        drains.pop(target, None)
    else:
        drains[target] = Drain(target, True, reason, time.time(), "admin")
    store.save(drains.values())


def apply_state_file(controller: Controller) -> None:
    """Have the controller take the state file now, not at its next watch tick."""
    controller.check_files()
    # Two writes within one file-system timestamp tick leave the mtime unchanged:
    # compare contents so that the second one is not missed.
    wanted = load_admin_state(controller.state_path)
    if wanted != controller.admin_verdicts:
        controller.admin_verdicts = wanted
        controller.publish()


# ---- the application -----------------------------------------------------------

REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


def make_admin_app(
    controller: Controller,
    token: str | None,
    stats: StatsSource | None = None,
    health: Any = None,
    include_registries: Sequence[CollectorRegistry] = (REGISTRY,),
    hosts: Sequence[str] = (),
) -> web.Application:
    """The admin application. `controller` must be started before requests come in;
    `stats` returns `Stats.export()` summed over workers; `health` is a HealthService
    (its peer routes are the caller's to mount: `health.add_routes(app)`)."""
    app = web.Application(client_max_size=MAX_BODY)
    state = AdminState(controller, token or None, stats, health)
    state.admin_hosts = frozenset(admin_host(name) for name in hosts)
    app[STATE] = state
    app[CONTROLLER] = controller
    if token:
        app[ADMIN_TOKEN] = token  # GET /v1/health (mounted by the health service) takes it too
    if health is not None and controller.state_path:
        adopt_state_file_drains(controller, health)
    app[REGISTRY_KEY] = node_registry(controller, stats, include_registries)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/explain", explain_handler)
    app.router.add_post("/v1/reload", reload)
    app.router.add_post("/v1/drain", drain)
    app.router.add_post("/v1/undrain", undrain)
    from geodns.control import zones_api, zonestore  # they use this module's access rules

    state.zone_store = zonestore.ZoneStore(controller)
    zones_api.add_routes(app, state.zone_store)

    async def startup(app: web.Application) -> None:
        if state.controller.ref is not None and not state._last_up:
            state._remember(state.controller.snapshot)
        controller.subscribers.append(state.on_snapshot)
        state._sampler = asyncio.create_task(state.sampling(), name="admin-answer-samples")

    async def cleanup(app: web.Application) -> None:
        with contextlib.suppress(ValueError):
            controller.subscribers.remove(state.on_snapshot)
        if state._sampler is not None:
            state._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state._sampler

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


async def start_admin(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve the admin app on host:port; `await runner.cleanup()` to stop."""
    app[STATE].listen_host = host
    runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=ServerLog(log))
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("admin listening on http://%s:%d/ (writes %s)", host, port, "need the bearer token" if app[STATE].token else "disabled: no token")
    return runner
