"""`geodns webhook`: an ExternalDNS webhook provider in front of a node's zone API.

ExternalDNS (`--provider=webhook`) talks to this sidecar on localhost
(media type `application/external.dns.webhook+json;version=1`):

    GET  /                 the domain filter: the zones this node serves (or --zone)
    GET  /records          every record of those zones, as ExternalDNS endpoints
    POST /records          apply {create, updateOld, updateNew, delete}: 204
    POST /adjustendpoints  desired endpoints in the form /records gives them back
    GET  /healthz          200 while the node's admin API answers

Each change rewrites the zones it touches through `PUT /v1/zones/{zone}` on
the node, which validates and applies them (and, with zone sync, passes them
to its peers). A/AAAA endpoints that share a name and carry a
`setIdentifier` become one steered name, one region per set identifier:

    external-dns.alpha.kubernetes.io/set-identifier: eu
    external-dns.alpha.kubernetes.io/webhook-geodns-region: eu-west   # coordinates and check from the zone's region eu-west
    external-dns.alpha.kubernetes.io/webhook-geodns-weight: "3"       # the region's weight (weighted), or priority (failover)
    external-dns.alpha.kubernetes.io/webhook-geodns-policy: geo_proximity   # or weighted, failover

The region is `NAME.REGION.SETID` (NAME: the owner, dots as `--`), so that
`GET /records` gives back exactly what was sent. Its coordinates and check
come from the zone's own region named by `geodns-region` (the operator
defines the places once), or from `geodns-coordinates: "lat,lon"`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
from typing import Any

import aiohttp
from aiohttp import web

from geodns.health import strictjson
from geodns.serverlog import ServerLog

log = logging.getLogger("geodns.webhook")

MEDIA_TYPE = "application/external.dns.webhook+json;version=1"
MAX_BODY = 4 * 1024 * 1024
TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "CAA", "NS")
POLICIES = ("geo_proximity", "weighted", "failover")
PROPERTIES = ("geodns-region", "geodns-weight", "geodns-policy", "geodns-coordinates")
_SET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class Invalid(ValueError):
    """A request ExternalDNS should not retry (answered 400)."""


# ---- endpoints: the ExternalDNS side ------------------------------------------------


def _keys_lower(obj: Any, what: str) -> dict[str, Any]:
    # Go's encoding/json matches field names case-insensitively: "Create" and "create" are one.
    if not isinstance(obj, dict):
        raise Invalid(f"{what} must be a JSON object")
    return {str(k).lower(): v for k, v in obj.items()}


def endpoint(raw: Any) -> dict[str, Any]:
    """An ExternalDNS endpoint, checked, with canonical keys and provider-specific properties
    as a dict (`webhook/` prefix removed)."""
    e = _keys_lower(raw, "an endpoint")
    name = e.get("dnsname")
    if not isinstance(name, str) or not name.strip(".") or len(name) > 253:
        raise Invalid(f"dnsName must be a domain name, got {name!r:.80}")
    rtype = e.get("recordtype") or "A"
    if rtype not in TYPES:
        raise Invalid(f"{name}: recordType {rtype!r:.20} is not one of {', '.join(TYPES)}")
    targets = e.get("targets") or []
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise Invalid(f"{name}: targets must be a list of strings")
    ttl = e.get("recordttl") or 0
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 2**31 - 1:
        raise Invalid(f"{name}: recordTTL must be a number of seconds")
    set_id = e.get("setidentifier") or ""
    if not isinstance(set_id, str):
        raise Invalid(f"{name}: setIdentifier must be a string")
    props: dict[str, str] = {}
    for p in e.get("providerspecific") or []:
        p = _keys_lower(p, "a providerSpecific property")
        key, value = p.get("name"), p.get("value")
        if not isinstance(key, str) or not isinstance(value, str):
            raise Invalid(f"{name}: providerSpecific entries are {{name, value}} strings")
        props[key.removeprefix("webhook/")] = value
    labels = e.get("labels") or {}
    return {"dnsName": name.lower().rstrip("."), "recordType": rtype, "targets": list(targets), "recordTTL": ttl,
            "setIdentifier": set_id, "labels": labels if isinstance(labels, dict) else {}, "props": props}


def wire(e: dict[str, Any]) -> dict[str, Any]:
    """An endpoint as ExternalDNS reads it."""
    out: dict[str, Any] = {"dnsName": e["dnsName"], "targets": e["targets"], "recordType": e["recordType"]}
    if e["setIdentifier"]:
        out["setIdentifier"] = e["setIdentifier"]
    if e["recordTTL"]:
        out["recordTTL"] = e["recordTTL"]
    if e.get("labels"):
        out["labels"] = e["labels"]
    if e["props"]:
        out["providerSpecific"] = [{"name": f"webhook/{k}", "value": v} for k, v in sorted(e["props"].items())]
    return out


def adjust(e: dict[str, Any]) -> dict[str, Any]:
    """What `GET /records` will give back for this endpoint: defaults filled in, TXT quoted,
    names without the trailing dot."""
    e = dict(e, props=dict(e["props"]))
    if e["recordType"] == "TXT":
        e["targets"] = [t if len(t) >= 2 and t[0] == t[-1] == '"' else f'"{t}"' for t in e["targets"]]
    elif e["recordType"] in ("CNAME", "NS"):
        e["targets"] = [t.lower().rstrip(".") for t in e["targets"]]
    if e["setIdentifier"] and e["recordType"] in ("A", "AAAA"):
        e["props"].setdefault("geodns-weight", "1")
        e["props"].setdefault("geodns-policy", "geo_proximity")
        e["props"].setdefault("geodns-region", e["setIdentifier"])
    return e


# ---- endpoints <-> a geodns zone document -------------------------------------------


def _slug(owner: str) -> str:
    return "apex" if owner == "@" else owner.replace("*", "star").replace(".", "--")


def _owner(name: str, origin: str) -> str:
    if name == origin:
        return "@"
    if not name.endswith("." + origin):
        raise Invalid(f"{name} is not in zone {origin}")
    return name[: -len(origin) - 1]


def _absolute(name: str, origin: str) -> str:
    key = str(name).lower()
    if key == "@":
        return origin
    return key[:-1] if key.endswith(".") else f"{key}.{origin}"


def _addresses(region: dict[str, Any]) -> list[str]:
    return [str(e["address"] if isinstance(e, dict) else e) for e in region.get("endpoints") or []]


def endpoints_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The ExternalDNS endpoints of a zone (steered names not written by this webhook are left out:
    they stay as they are)."""
    origin = str(doc["zone"]).lower().rstrip(".")
    regions = doc.get("regions") or {}
    out = []
    for owner, spec in (doc.get("records") or {}).items():
        name = _absolute(owner, origin)
        ttl = int(spec.get("ttl") or 0)
        if "steer" in spec:
            out.extend(_steered_endpoints(name, str(owner), spec, regions, ttl))
            continue
        for rtype in TYPES:
            if rtype not in spec:
                continue
            values = spec[rtype] if isinstance(spec[rtype], list) else [spec[rtype]]
            plain, by_set = [], {}
            for v in values:
                text = _target(rtype, v, origin)
                m = re.match(r"^\[set:([^\]]+)\] (.*)$", text, re.S) if rtype == "TXT" else None
                if m:
                    by_set.setdefault(m[1], []).append(f'"{m[2]}"')
                else:
                    plain.append(f'"{text}"' if rtype == "TXT" else text)
            for set_id, targets in [("", plain), *by_set.items()]:
                if targets:
                    out.append({"dnsName": name, "recordType": rtype, "targets": targets, "recordTTL": ttl,
                                "setIdentifier": set_id, "labels": {}, "props": {}})
    return out


def _target(rtype: str, v: Any, origin: str) -> str:
    if rtype in ("A", "AAAA", "TXT"):
        return str(v)
    if rtype in ("CNAME", "NS"):
        return _absolute(v, origin)
    fields = {"MX": ("preference", "exchange"), "SRV": ("priority", "weight", "port", "target"),
              "CAA": ("flags", "tag", "value")}[rtype]
    parts = [v[f] for f in fields] if isinstance(v, dict) else str(v).split(None, len(fields) - 1)
    if rtype in ("MX", "SRV"):
        parts[-1] = _absolute(parts[-1], origin)
    if rtype == "CAA":
        parts[-1] = f'"{str(parts[-1]).strip(chr(34))}"'
    return " ".join(str(p) for p in parts)


def _steered_endpoints(name: str, owner: str, spec: dict[str, Any], regions: dict[str, Any], ttl: int) -> list[dict[str, Any]]:
    prefix = _slug(owner) + "."
    names = spec.get("regions") or []
    if not names or not all(str(r).startswith(prefix) and str(r).count(".") >= 2 for r in names):
        return []  # a steered name written by hand: not ExternalDNS's
    steps = [next(iter(s)) if isinstance(s, dict) else s for s in spec["steer"]]
    policy = next((p for p in ("weighted", "failover") if p in steps), "geo_proximity")
    out = []
    for region_name in names:
        region = regions.get(region_name) or {}
        place, set_id = str(region_name)[len(prefix):].split(".", 1)
        props = {"geodns-region": place, "geodns-policy": policy, "geodns-weight": str(region.get("weight", 1))}
        template = regions.get(place)
        if template is None or list(template.get("coordinates", [])) != list(region.get("coordinates", [])):
            lat, lon = region.get("coordinates", [0, 0])
            props["geodns-coordinates"] = f"{lat},{lon}"
        for rtype, version in (("A", 4), ("AAAA", 6)):
            targets = [a for a in _addresses(region) if ipaddress.ip_address(a).version == version]
            if targets:
                out.append({"dnsName": name, "recordType": rtype, "targets": targets, "recordTTL": ttl,
                            "setIdentifier": set_id, "labels": {}, "props": props})
    return out


def apply_changes(doc: dict[str, Any], changes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The zone document after an ExternalDNS change set (pure). Raises Invalid."""
    origin = str(doc["zone"]).lower().rstrip(".")
    current = {(e["dnsName"], e["recordType"], e["setIdentifier"]): e for e in endpoints_of(doc)}
    touched = set()
    for e in changes["delete"] + changes["updateold"]:
        current.pop((e["dnsName"], e["recordType"], e["setIdentifier"]), None)
        touched.add(e["dnsName"])
    for e in changes["create"] + changes["updatenew"]:
        current[(e["dnsName"], e["recordType"], e["setIdentifier"])] = adjust(e)
        touched.add(e["dnsName"])
    records = dict(doc.get("records") or {})
    regions = dict(doc.get("regions") or {})
    owners = {_absolute(k, origin): k for k in records}
    for name in touched:
        owner = owners.get(name) or _owner(name, origin)
        if owner in records and "steer" in records[owner] and not _steered_endpoints(name, str(owner), records[owner], regions, 0):
            raise Invalid(f"{name} is a steered name not written by ExternalDNS: leave it to its zone file")
        for r in [r for r in regions if r.startswith(_slug(str(owner)) + ".") and r.count(".") >= 2]:
            del regions[r]
        records.pop(owner, None)
        mine = [e for k, e in sorted(current.items()) if k[0] == name]
        if mine:
            spec, new_regions = _spec(name, str(owner), mine, origin, doc.get("regions") or {})
            records[owner] = spec
            regions.update(new_regions)
    out = dict(doc, records=records)
    out["regions"] = regions
    if not regions:
        out.pop("regions")
    return out


def _spec(name: str, owner: str, endpoints: list[dict[str, Any]], origin: str, zone_regions: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec: dict[str, Any] = {}
    ttls = {e["recordTTL"] for e in endpoints if e["recordTTL"]}
    if ttls:
        spec["ttl"] = min(ttls)
    steered = [e for e in endpoints if e["setIdentifier"] and e["recordType"] in ("A", "AAAA")]
    if steered and any(e["recordType"] in ("A", "AAAA", "CNAME") and not e["setIdentifier"] for e in endpoints):
        raise Invalid(f"{name}: endpoints with and without setIdentifier cannot share a name")
    regions: dict[str, Any] = {}
    if steered:
        policies = {e["props"].get("geodns-policy", "geo_proximity") for e in steered}
        if len(policies) > 1 or not policies <= set(POLICIES):
            raise Invalid(f"{name}: geodns-policy must be one of {', '.join(POLICIES)}, the same for every endpoint of the name")
        policy = policies.pop()
        weights: dict[str, int] = {}
        for e in steered:
            set_id, place = e["setIdentifier"], e["props"].get("geodns-region", e["setIdentifier"])
            if not _SET_ID.match(set_id) or not _REGION.match(place):
                raise Invalid(f"{name}: setIdentifier {set_id!r:.70} and geodns-region {place!r:.70} must be letters, digits, '-', '_'")
            region_name = f"{_slug(owner)}.{place}.{set_id}"
            try:
                weight = int(e["props"].get("geodns-weight", "1"))
                if not 0 <= weight <= 65535:
                    raise ValueError
            except ValueError:
                raise Invalid(f"{name}: geodns-weight must be a whole number 0..65535") from None
            region = regions.setdefault(region_name, _region(name, e, place, zone_regions))
            region["weight"] = weights[region_name] = weight
            region["endpoints"] += [a for a in e["targets"] if a not in region["endpoints"]]
        chain: list[Any]
        if policy == "weighted":
            chain = ["healthy", "weighted"]
        elif policy == "failover":
            chain = [{"failover": sorted(weights, key=lambda r: (-weights[r], r))}]
        else:
            chain = ["healthy", "geo_proximity", {"limit": 1}]
        spec.update(regions=sorted(regions), steer=chain)
    for e in endpoints:
        if e in steered:
            continue
        if e["setIdentifier"] and e["recordType"] != "TXT":
            raise Invalid(f"{name}: setIdentifier on {e['recordType']} records is not supported (only A/AAAA, and TXT registry records)")
        values = spec.setdefault(e["recordType"], [])
        for t in e["targets"]:
            values.append(_value(e["recordType"], t, e["setIdentifier"], name))
    return spec, regions


def _region(name: str, e: dict[str, Any], place: str, zone_regions: dict[str, Any]) -> dict[str, Any]:
    coords = e["props"].get("geodns-coordinates")
    template = zone_regions.get(place) or {}
    region: dict[str, Any] = {"endpoints": []}
    if coords:
        try:
            lat, lon = (float(x) for x in coords.split(","))
        except ValueError:
            raise Invalid(f"{name}: geodns-coordinates must be 'latitude,longitude'") from None
        region["coordinates"] = [lat, lon]
    elif "coordinates" in template:
        region["coordinates"] = template["coordinates"]
    else:
        raise Invalid(f"{name}: region {place!r} is not a region of the zone: define it there (its coordinates "
                      "and check), or give geodns-coordinates")
    for key in ("check", "balancer", "bias"):
        if key in template:
            region[key] = template[key]
    return region


def _value(rtype: str, target: str, set_id: str, name: str) -> Any:
    if rtype == "TXT":
        text = target[1:-1] if len(target) >= 2 and target[0] == target[-1] == '"' else target
        return f"[set:{set_id}] {text}" if set_id else text
    if rtype in ("CNAME", "NS"):
        return target.rstrip(".") + "."
    parts = target.split()
    try:
        if rtype == "MX":
            return {"preference": int(parts[0]), "exchange": parts[1].rstrip(".") + "."}
        if rtype == "SRV":
            return {"priority": int(parts[0]), "weight": int(parts[1]), "port": int(parts[2]), "target": parts[3].rstrip(".") + "."}
        if rtype == "CAA":
            return {"flags": int(parts[0]), "tag": parts[1], "value": " ".join(parts[2:]).strip('"')}
    except (IndexError, ValueError):
        raise Invalid(f"{name}: {target!r:.80} is not a {rtype} target") from None
    return target


# ---- the server ------------------------------------------------------------------------


class Node:
    """The geodns node's zone API."""

    def __init__(self, admin: str, token: str | None, session: aiohttp.ClientSession) -> None:
        self.base = (admin if admin.startswith(("http://", "https://")) else f"http://{admin}").rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = session

    async def zones(self) -> list[str]:
        async with self.session.get(f"{self.base}/v1/zones", headers=self.headers) as r:
            if r.status != 200:
                raise RuntimeError(f"GET /v1/zones: HTTP {r.status}")
            return [z["zone"] for z in (await r.json())["zones"]]

    async def get(self, zone: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/v1/zones/{zone}", headers={**self.headers, "Accept": "application/json"}) as r:
            if r.status != 200:
                raise RuntimeError(f"GET zone {zone}: HTTP {r.status}")
            return await r.json()

    async def put(self, zone: str, doc: dict[str, Any]) -> None:
        async with self.session.put(f"{self.base}/v1/zones/{zone}", data=json.dumps(doc).encode(),
                                    headers={**self.headers, "Content-Type": "application/json"}) as r:
            if r.status not in (200, 201):
                body = await r.text()
                raise Invalid(f"the node refused zone {zone}: HTTP {r.status} {body[:2000]}") if r.status in (400, 409, 422) \
                    else RuntimeError(f"PUT zone {zone}: HTTP {r.status} {body[:500]}")


NODE = web.AppKey("node", Node)
FILTER = web.AppKey("zone_filter", tuple)
LOCK = web.AppKey("lock", asyncio.Lock)


def _reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status,
                        headers={"Content-Type": MEDIA_TYPE, "Vary": "Content-Type"})


def _error(status: int, message: str) -> web.Response:
    log.warning("webhook request refused status=%d error=%s", status, message)
    return web.Response(text=message + "\n", status=status, headers={"Vary": "Content-Type"})


async def _zones(app: web.Application) -> list[str]:
    wanted = app[FILTER]
    served = await app[NODE].zones()
    return [z for z in served if not wanted or z in wanted]


async def _body(request: web.Request) -> Any:
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
    try:
        return strictjson.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:
        raise Invalid(f"body is not JSON: {exc}") from None


async def negotiate(request: web.Request) -> web.Response:
    try:
        zones = await _zones(request.app)
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        return _error(500, f"cannot read the node's zones: {exc}")
    # "include" for ExternalDNS's DomainFilter since v0.15, "filters" for the older ones.
    return _reply({"include": zones, "filters": zones})


async def records(request: web.Request) -> web.Response:
    try:
        out = []
        for zone in await _zones(request.app):
            out.extend(wire(e) for e in endpoints_of(await request.app[NODE].get(zone)))
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        return _error(500, f"cannot read the node's zones: {exc}")
    return _reply(out)


async def apply(request: web.Request) -> web.StreamResponse:
    try:
        raw = _keys_lower(await _body(request), "the changes")
        changes = {k: [endpoint(e) for e in (raw.get(k) or [])] for k in ("create", "updateold", "updatenew", "delete")}
        if len(changes["updateold"]) != len(changes["updatenew"]):
            raise Invalid("updateOld and updateNew must pair up")
        async with request.app[LOCK]:
            zones = sorted(await _zones(request.app), key=len, reverse=True)
            by_zone: dict[str, dict[str, list]] = {}
            for kind, items in changes.items():
                for e in items:
                    zone = next((z for z in zones if e["dnsName"] == z or e["dnsName"].endswith("." + z)), None)
                    if zone is None:
                        raise Invalid(f"{e['dnsName']} is in none of the zones {', '.join(zones)}")
                    by_zone.setdefault(zone, {k: [] for k in changes})[kind].append(e)
            for zone, part in sorted(by_zone.items()):
                doc = apply_changes(await request.app[NODE].get(zone), part)
                await request.app[NODE].put(zone, doc)
                log.info("webhook applied zone=%s create=%d update=%d delete=%d", zone, len(part["create"]),
                         len(part["updatenew"]), len(part["delete"]))
    except Invalid as exc:
        return _error(400, str(exc))
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        return _error(500, f"cannot write the zone: {exc}")
    return web.Response(status=204, headers={"Vary": "Content-Type"})


async def adjust_endpoints(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
        if not isinstance(body, list):
            raise Invalid("the body must be a list of endpoints")
        return _reply([wire(adjust(endpoint(e))) for e in body])
    except Invalid as exc:
        return _error(400, str(exc))


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[NODE].zones()
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        return web.Response(text=f"node unreachable: {exc}\n", status=503)
    return web.Response(text="ok\n")


def make_app(admin: str, token: str | None, zones: tuple[str, ...] = ()) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[FILTER] = tuple(z.lower().rstrip(".") for z in zones)
    app[LOCK] = asyncio.Lock()

    async def session(app: web.Application):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            app[NODE] = Node(admin, token, s)
            yield

    app.cleanup_ctx.append(session)
    app.router.add_get("/", negotiate)
    app.router.add_get("/records", records)
    app.router.add_post("/records", apply)
    app.router.add_post("/adjustendpoints", adjust_endpoints)
    app.router.add_get("/healthz", healthz)
    return app


# ---- command line ------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8888", metavar="ADDR:PORT", help="where ExternalDNS reaches the webhook (default 127.0.0.1:8888: localhost, a sidecar)")
    p.add_argument("--admin", default=os.environ.get("GEODNS_ADMIN", "127.0.0.1:8053"), metavar="URL", help="the geodns node's admin API (default 127.0.0.1:8053, or $GEODNS_ADMIN)")
    p.add_argument("--token", default=None, help="the node's admin token (default: $GEODNS_ADMIN_TOKEN)")
    p.add_argument("--zone", action="append", default=[], help="manage only this zone (repeatable; default: every zone the node serves)")
    p.add_argument("--log-level", default="info")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = args.listen.rpartition(":")
    token = args.token if args.token is not None else os.environ.get("GEODNS_ADMIN_TOKEN")
    app = make_app(args.admin, token, tuple(args.zone))

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=ServerLog(log))
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port)).start()
        log.info("webhook listening on %s for the node at %s zones=%s", args.listen, args.admin, ",".join(args.zone) or "all")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        with contextlib.suppress(Exception):
            await runner.cleanup()

    asyncio.run(main())
    return 0
