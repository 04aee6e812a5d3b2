"""An octoDNS provider for geodns: `class: geodns.octodns.GeodnsProvider`.

```yaml
providers:
  geodns:
    class: geodns.octodns.GeodnsProvider
    url: http://10.0.0.53:8053          # a node's admin API (zone sync takes it to the others)
    token: env/GEODNS_ADMIN_TOKEN
    nameservers: [ns1.gslb.example.com., ns2.gslb.example.com.]   # for zones it creates
```

Target and source, SUPPORTS_DYNAMIC. A zone is read with `GET
/v1/zones/{zone}` and written whole with `PUT /v1/zones/{zone}`, so the node
validates it with its own loader and applies it with its usual reload.

A dynamic record becomes one steered name:

- each pool is a region named `NAME.pool.POOL` whose endpoints are the pool's
  values, weights kept as endpoint weights: when they differ, the region has
  `answers: 1` and each answer carries one value, in proportion to the
  weights; when they are all the same, every healthy value is answered;
- the record's own values are the region `NAME.values`, the last resort of
  every rule (octoDNS's "default");
- the chain is `[healthy, geolocation, {limit: 1}]`: each rule with `geos`
  and/or `subnets` is a geolocation rule whose regions are the pool followed
  by its `fallback` chain and `NAME.values`; the catch-all rule is the
  geolocation default;
- an explicit `octodns: healthcheck:` becomes the pools' region check (http,
  https or tcp; without one, pools are not checked); a pool whose values are
  all `status: up` is not checked; `status: down` is refused (drain the
  region with `geodns drain` instead);
- `octodns: geodns: {coordinates: {POOL: [lat, lon]}, steer: [...]}` keeps
  what octoDNS cannot say: region coordinates (default [0, 0]) and a chain of
  geodns steps (geo_proximity, latency, capacity...) in place of the default.

Steered names that were not written this way are read with their geodns
definition under `octodns: geodns: {record: ..., regions: ...}` and written
back as they were. geodns has one TTL per name: records of one name with
different TTLs get the smallest (with a warning, or an error with
`strict_supports`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

import yaml
from octodns.provider import ProviderException
from octodns.provider.base import BaseProvider
from octodns.record import Record

from geodns.config import load_zone_text

log = logging.getLogger("geodns.octodns")

TYPES = ("A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA", "NS")
POOL = ".pool."
VALUES = ".values"


class GeodnsException(ProviderException):
    pass


def _slug(name: str) -> str:
    """A record name as a region name prefix (region names take letters, digits, `-`, `_`, `.`)."""
    if not name:
        return "apex"
    return name.replace("*", "star").replace(".", "--")


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


class GeodnsProvider(BaseProvider):
    log = logging.getLogger("GeodnsProvider")
    SUPPORTS_GEO = False
    SUPPORTS_DYNAMIC = True
    SUPPORTS_DYNAMIC_SUBNETS = True
    SUPPORTS_POOL_VALUE_STATUS = True
    SUPPORTS_ROOT_NS = False
    SUPPORTS = set(TYPES)

    def __init__(self, id: str, url: str, token: str | None = None, nameservers: list[Any] | None = None,
                 hostmaster: str | None = None, timeout: float = 30.0, *args: Any, **kwargs: Any) -> None:
        super().__init__(id, *args, **kwargs)
        self.url = url.rstrip("/")
        self.token = token
        self.nameservers = list(nameservers or [])
        self.hostmaster = hostmaster
        self.timeout = timeout

    # ---- HTTP -----------------------------------------------------------------------

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Accept", "application/yaml")
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise GeodnsException(f"{self.id}: cannot reach {self.url}: {exc}") from None

    def _zone_doc(self, zone_name: str) -> dict[str, Any] | None:
        status, raw = self._call("GET", f"/v1/zones/{zone_name.rstrip('.')}")
        if status == 404:
            return None
        if status != 200:
            raise GeodnsException(f"{self.id}: GET zone {zone_name}: HTTP {status} {raw[:500]!r}")
        return yaml.safe_load(raw.decode())

    # ---- source ---------------------------------------------------------------------

    def populate(self, zone: Any, target: bool = False, lenient: bool = False) -> bool:
        doc = self._zone_doc(zone.name)
        if doc is None:
            return False
        for name, _type, data in records_from_doc(doc):
            zone.add_record(Record.new(zone, name, data, source=self, lenient=lenient), lenient=lenient)
        return True

    # ---- target ---------------------------------------------------------------------

    def _process_desired_zone(self, desired: Any) -> Any:
        by_name: dict[str, list[Any]] = defaultdict(list)
        for record in desired.records:
            by_name[record.name].append(record)
        for name, records in by_name.items():
            ttls = {r.ttl for r in records}
            if len(ttls) > 1:
                ttl = min(ttls)
                self.supports_warn_or_except(
                    f"{_absolute(name + '.' + desired.name if name else desired.name)}: geodns has one TTL per name, "
                    f"these records have {sorted(ttls)}", f"using {ttl} for all of them")
                for r in records:
                    if r.ttl != ttl:
                        copy = r.copy()
                        copy.ttl = ttl
                        desired.add_record(copy, replace=True)
            for r in records:
                for pool in (r.dynamic.pools.values() if getattr(r, "dynamic", None) else ()):
                    if any(v["status"] == "down" for v in pool.data["values"]):
                        raise GeodnsException(f"{r.fqdn}: status: down is not supported by geodns: "
                                              "drain the region with `geodns drain` instead")
        return super()._process_desired_zone(desired)

    def _apply(self, plan: Any) -> None:
        desired = plan.desired
        name = desired.name.rstrip(".")
        current = self._zone_doc(desired.name)
        doc = zone_doc(name, list(desired.records), current, self.nameservers, self.hostmaster)
        body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
        status, raw = self._call("PUT", f"/v1/zones/{name}", body, "application/yaml")
        if status not in (200, 201):
            try:
                detail = json.loads(raw)
                errors = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in detail.get("errors", []))
                message = f"{detail.get('error')}{': ' + errors if errors else ''}"
            except (ValueError, AttributeError):
                message = raw[:500].decode(errors="replace")
            raise GeodnsException(f"{self.id}: PUT zone {name}: HTTP {status}: {message}")
        log.info("applied zone=%s changes=%d result=%s", name, len(plan.changes), raw[:300].decode(errors="replace"))


# ---- octoDNS records -> a geodns zone document ----------------------------------------


def zone_doc(origin: str, records: list[Any], current: dict[str, Any] | None,
             nameservers: list[Any], hostmaster: str | None) -> dict[str, Any]:
    """The geodns zone for these octoDNS records; SOA (serial + 1), name servers and the
    zone's other settings from `current` when there is one."""
    if current is not None:
        doc = {k: v for k, v in current.items() if k not in ("records", "regions")}
        doc["soa"] = {**current["soa"], "serial": int(current["soa"].get("serial", 0)) + 1}
        regions = {k: v for k, v in (current.get("regions") or {}).items() if POOL not in k and not k.endswith(VALUES)}
    else:
        if not nameservers:
            raise GeodnsException(f"zone {origin} does not exist on geodns yet: give the provider `nameservers:`")
        first = nameservers[0]["name"] if isinstance(nameservers[0], dict) else nameservers[0]
        doc = {"zone": origin + ".", "soa": {"mname": first, "rname": hostmaster or f"hostmaster.{origin}.", "serial": 1},
               "nameservers": nameservers}
        regions = {}
    out: dict[str, dict[str, Any]] = {}
    by_name: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in records:
        by_name[r.name][r._type] = r
    for name, types in sorted(by_name.items()):
        owner = name or "@"
        spec: dict[str, Any] = {"ttl": min(r.ttl for r in types.values())}
        steered = [r for t, r in types.items() if t in ("A", "AAAA") and (r.dynamic or _kept(r))]
        if steered:
            own_regions, steer_spec = _steered(name, steered)
            regions.update(own_regions)
            spec.update(steer_spec)
        for rtype, r in types.items():
            if r in steered:
                continue
            spec[rtype] = _values(r)
        out[owner] = spec
    doc["regions"] = regions
    doc["records"] = out
    if not regions:
        del doc["regions"]
    return doc


def _kept(record: Any) -> dict[str, Any] | None:
    return (record.octodns.get("geodns") or {}).get("record") if hasattr(record, "octodns") else None


def _values(r: Any) -> list[Any]:
    values = r.values if hasattr(r, "values") else [r.value]
    t = r._type
    if t in ("A", "AAAA"):
        return [str(v) for v in values]
    if t in ("CNAME", "NS"):
        return [str(v) for v in values]
    if t == "TXT":
        return [str(v).replace("\\;", ";") for v in values]
    if t == "MX":
        return [{"preference": v.preference, "exchange": v.exchange} for v in values]
    if t == "SRV":
        return [{"priority": v.priority, "weight": v.weight, "port": v.port, "target": v.target} for v in values]
    if t == "CAA":
        return [{"flags": v.flags, "tag": v.tag, "value": v.value} for v in values]
    raise GeodnsException(f"{r.fqdn}: {t} records are not supported")


def _steered(name: str, records: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One steered name from the dynamic A and/or AAAA records of a name."""
    kept = [_kept(r) for r in records if _kept(r)]
    if kept:
        geodns = records[0].octodns["geodns"]
        return dict(geodns.get("regions") or {}), dict(kept[0])
    slug = _slug(name)
    first = records[0]
    shape = (first.dynamic.pools, first.dynamic.rules)
    for r in records[1:]:
        if (set(r.dynamic.pools), [x.data for x in r.dynamic.rules]) != (set(shape[0]), [x.data for x in shape[1]]):
            raise GeodnsException(f"{first.fqdn}: the A and AAAA dynamic records of one name must have the same pools and rules")
    extra = first.octodns.get("geodns") or {}
    coords = extra.get("coordinates") or {}
    check = _check(first.octodns.get("healthcheck"), first.fqdn) if "healthcheck" in first.octodns else None
    regions: dict[str, Any] = {}
    for pool_id in first.dynamic.pools:
        endpoints = []
        all_up = True
        for r in records:
            for v in r.dynamic.pools[pool_id].data["values"]:
                endpoints.append({"address": str(v["value"]), "weight": v["weight"]})
                all_up &= v["status"] == "up"
        region: dict[str, Any] = {"coordinates": list(coords.get(pool_id, [0, 0])), "endpoints": endpoints}
        if len({e["weight"] for e in endpoints}) > 1:
            region["answers"] = 1  # weights that differ: one value per answer in their proportion, as octoDNS means them
        if check is not None and not all_up:
            region["check"] = check
        regions[f"{slug}{POOL}{pool_id}"] = region
    regions[f"{slug}{VALUES}"] = {"coordinates": [0, 0], "endpoints": [v for r in records for v in _values(r)]}

    def chain(pool_id: str) -> list[str]:
        order: list[str] = []
        while pool_id and pool_id not in order:
            order.append(pool_id)
            pool_id = first.dynamic.pools[pool_id].data["fallback"]
        return [f"{slug}{POOL}{p}" for p in order] + [f"{slug}{VALUES}"]

    rules, default = [], [f"{slug}{VALUES}"]
    for rule in first.dynamic.rules:
        match = list(rule.data.get("geos", [])) + list(rule.data.get("subnets", []))
        if match:
            rules.append({"match": match, "regions": chain(rule.data["pool"])})
        else:
            default = chain(rule.data["pool"])
            break
    steer = extra.get("steer") or ["healthy", {"geolocation": {"rules": rules, "default": default}}, {"limit": 1}]
    return regions, {"regions": list(regions), "steer": steer, "fallback": [f"{slug}{VALUES}"]}


def _check(hc: dict[str, Any], fqdn: str) -> dict[str, Any]:
    protocol = str(hc.get("protocol", "HTTPS")).lower()
    if protocol not in ("http", "https", "tcp"):
        raise GeodnsException(f"{fqdn}: healthcheck protocol {protocol!r}: geodns checks http, https or tcp")
    check: dict[str, Any] = {"type": protocol, "port": int(hc.get("port", 443 if protocol == "https" else 80))}
    if protocol != "tcp":
        check["path"] = hc.get("path", "/_dns")
        check["host_header"] = hc.get("host", fqdn.rstrip("."))
    return check


# ---- a geodns zone document -> octoDNS records ------------------------------------------


def records_from_doc(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """octoDNS record data (name relative to the zone, type, data) for a geodns zone document."""
    # The node has checked the zone whole; here it is parsed for its typed values only
    # (its key and latency files live on the node).
    light = {k: v for k, v in doc.items() if k not in ("dnssec", "latency_table")}
    zone = load_zone_text(yaml.safe_dump(light), "zone.yaml")
    origin = zone.origin
    raw_records = doc.get("records") or {}
    raw_keys = {_owner(k, origin): k for k in raw_records}
    out = []
    for fqdn, node in sorted(zone.nodes.items()):
        name = "" if fqdn == origin else fqdn[: -len(origin) - 1]
        for rrset in node.rrsets:
            if name == "" and rrset.rtype == "NS":
                continue  # the zone's own name servers are geodns's nameservers:, not a record
            out.append((name, rrset.rtype, {"type": rrset.rtype, "ttl": node.ttl, **_octo_values(rrset)}))
        if node.steered is not None:
            spec = raw_records[raw_keys[fqdn]]
            out.extend((name, t, data) for t, data in _dynamic(name, node, spec, doc.get("regions") or {}))
    return out


def _owner(key: str, origin: str) -> str:
    key = str(key).lower()
    if key == "@":
        return origin
    return key[:-1] if key.endswith(".") else f"{key}.{origin}"


def _octo_values(rrset: Any) -> dict[str, Any]:
    t, values = rrset.rtype, rrset.values
    if t in ("A", "AAAA"):
        v = [str(x) for x in values]
    elif t in ("CNAME", "NS"):
        v = [x + "." for x in values]
    elif t == "TXT":
        v = [x.replace(";", "\\;") for x in values]
    elif t == "MX":
        v = [{"preference": p, "exchange": e + "."} for p, e in values]
    elif t == "SRV":
        v = [{"priority": a, "weight": b, "port": c, "target": d + "."} for a, b, c, d in values]
    else:  # CAA
        v = [{"flags": f, "tag": tag, "value": value} for f, tag, value in values]
    return {"value": v[0]} if t == "CNAME" else {"values": v}


def _dynamic(name: str, node: Any, spec: dict[str, Any], regions: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The octoDNS A/AAAA records of a steered name: dynamic when it has the provider's shape,
    else its geodns definition kept under `octodns: geodns:`."""
    slug = _slug(name)
    steered = node.steered
    names = list(steered.candidates)

    def endpoints(region: str, version: int) -> list[tuple[str, int]]:
        return [(str(e["address"] if isinstance(e, dict) else e), int(e.get("weight", 1)) if isinstance(e, dict) else 1)
                for e in regions[region]["endpoints"]
                if ipaddress.ip_address(str(e["address"] if isinstance(e, dict) else e)).version == version]

    ours = f"{slug}{VALUES}" in names and all(n.startswith(slug + POOL) or n == f"{slug}{VALUES}" for n in names)
    result = []
    for rtype, version in (("A", 4), ("AAAA", 6)):
        found = [(n, endpoints(n, version)) for n in names]
        if not any(e for _, e in found):
            continue
        if not ours or not all(e for _, e in found):
            every = sorted({a for _, e in found for a, _ in e})
            result.append((rtype, {"type": rtype, "ttl": node.ttl, "values": every,
                                   "octodns": {"geodns": {"record": spec, "regions": {n: regions[n] for n in names}}}}))
            continue
        pools: dict[str, Any] = {}
        fallbacks: dict[str, str | None] = {}
        geo = next((s["geolocation"] for s in spec["steer"] if isinstance(s, dict) and "geolocation" in s), None)
        rules = []

        def pools_of(chain: list[str]) -> list[str]:
            return [r[len(slug + POOL):] for r in chain if r.startswith(slug + POOL)]

        for rule in (geo or {}).get("rules", []):
            order = pools_of(rule["regions"])
            for a, b in zip(order, [*order[1:], None], strict=True):
                fallbacks.setdefault(a, b)
            geos = [str(m) for m in rule["match"] if "/" not in str(m)]
            subnets = [str(m) for m in rule["match"] if "/" in str(m)]
            rules.append({"pool": order[0], **({"geos": geos} if geos else {}), **({"subnets": subnets} if subnets else {})})
        default = pools_of((geo or {}).get("default", []))
        for a, b in zip(default, [*default[1:], None], strict=True):
            fallbacks.setdefault(a, b)
        if default:
            rules.append({"pool": default[0]})
        for n, found_endpoints in found:
            if n.startswith(slug + POOL):
                pool_id = n[len(slug + POOL):]
                pool: dict[str, Any] = {"values": [{"value": a, "weight": w} for a, w in found_endpoints]}
                if "check" not in regions[n]:
                    for v in pool["values"]:
                        v["status"] = "up" if _has_healthcheck(regions, names) else "obey"
                if fallbacks.get(pool_id):
                    pool["fallback"] = fallbacks[pool_id]
                pools[pool_id] = pool
        data: dict[str, Any] = {"type": rtype, "ttl": node.ttl,
                                "values": [a for a, _ in endpoints(f"{slug}{VALUES}", version)],
                                "dynamic": {"pools": pools, "rules": rules}}
        octo: dict[str, Any] = {}
        check = next((regions[n]["check"] for n in names if "check" in regions[n]), None)
        if check is not None:
            octo["healthcheck"] = {"protocol": check["type"].upper(), "port": check.get("port")}
            if check["type"] != "tcp":
                octo["healthcheck"].update(path=check.get("path", "/"), host=check.get("host_header"))
        coords = {n[len(slug + POOL):]: regions[n]["coordinates"] for n in names
                  if n.startswith(slug + POOL) and list(regions[n]["coordinates"]) != [0, 0]}
        default_steer = ["healthy", {"geolocation": geo}, {"limit": 1}] if geo is not None else None
        extra = {**({"coordinates": coords} if coords else {}),
                 **({"steer": spec["steer"]} if spec["steer"] != default_steer else {})}
        if extra:
            octo["geodns"] = extra
        if octo:
            data["octodns"] = octo
        result.append((rtype, data))
    return result


def _has_healthcheck(regions: dict[str, Any], names: list[str]) -> bool:
    return any("check" in regions[n] for n in names)
