"""`geodns status | drain | undrain | reload`: the admin API from the command line.

Plain urllib: these commands run on a node over SSH during an incident, and
must not need anything the server does not already have.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

DEFAULT_ADMIN = "127.0.0.1:8053"
TIMEOUT = 10.0


class AdminError(Exception):
    pass


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", default=os.environ.get("GEODNS_ADMIN", DEFAULT_ADMIN), metavar="ADDR:PORT", help=f"the node's admin API (default {DEFAULT_ADMIN}, or $GEODNS_ADMIN)")
    p.add_argument("--token", default=None, help="bearer token for writes (default: $GEODNS_ADMIN_TOKEN)")


def _url(admin: str, path: str) -> str:
    base = admin if admin.startswith(("http://", "https://")) else f"http://{admin}"
    return base.rstrip("/") + path


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    token = args.token if getattr(args, "token", None) is not None else os.environ.get("GEODNS_ADMIN_TOKEN")
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(_url(args.admin, path), data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the admin port is never behind a proxy
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            doc = json.loads(exc.read() or b"{}")
        except ValueError:
            doc = {}
        message = doc.get("error") or f"HTTP {exc.code} {exc.reason}"
        details = [f"  {line}" for line in doc.get("errors", [])]
        if "known" in doc:
            details.append("  known targets: " + ", ".join(doc["known"]))
        raise AdminError("\n".join([f"{message} (HTTP {exc.code})", *details])) from None
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach the admin API at {args.admin}: {exc.reason} (is geodns serve running with --admin {args.admin}?)") from None
    except (TimeoutError, OSError) as exc:
        raise AdminError(f"cannot reach the admin API at {args.admin}: {exc}") from None
    except ValueError:
        raise AdminError(f"{args.admin} did not answer JSON: is it a geodns admin port?") from None


def _run(name: str, fn, args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except AdminError as exc:
        print(f"geodns {name}: {exc}", file=sys.stderr)
        return 1


# ---- status --------------------------------------------------------------------


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--json", action="store_true", help="print the raw /v1/status document")


def run_status(args: argparse.Namespace) -> int:
    return _run("status", _status, args)


def _ago(now: float, at: float | None) -> str:
    if at is None:
        return "-"
    s = max(0, int(now - at))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def _status(args: argparse.Namespace) -> int:
    doc = call(args, "GET", "/v1/status")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(format_status(doc))
    return 0


def _state(entry: dict[str, Any]) -> str:
    """A verdict's state as `geodns status` shows it: capitals when it keeps the target out
    of answers (DOWN, DRAINED, FORCED); "unknown" or "fallback" when it is up on no fresh
    observation yet; "forced" when an operator holds it up. An older node's document has no
    state: up or DOWN."""
    state = entry.get("state") or ("up" if entry.get("up", True) else "down")
    return state if entry.get("up", True) else state.upper()


def format_status(doc: dict[str, Any]) -> str:
    now = doc.get("now", time.time())
    lines = []
    node = f"node {doc['node']}, " if doc.get("node") else ""
    lines.append(f"{node}generation {doc['generation']}, zones: {', '.join(z['zone'] for z in doc['zones']) or '-'}")
    if doc.get("geoip"):
        g = doc["geoip"]
        lines.append(f"geoip: {g['path']} ({g['type']}, built {g['age_seconds'] // 86400} days ago)")
    reload = doc.get("reload") or {}
    if reload.get("last_error"):
        lines.append(f"last reload REFUSED ({reload['failures']} failure(s) so far):")
        lines.extend(f"  {e}" for e in reload["last_error"])
    for z in doc["zones"]:
        if z.get("hash"):
            stale = f"  DIFFERS on {', '.join(z['stale_peers'])}" if z.get("stale_peers") else ""
            lines.append(f"zone {z['zone']}: {z['hash'][:19]}{stale}")
    lines.append("")
    lines.append(f"{'REGION':<16} {'STATE':<9} {'SHARE':>6}  WHY")
    for name, r in sorted(doc["regions"].items()):
        state = "DRAINED" if r.get("drained") else _state(r)
        share = f"{100 * r.get('share', 0):.0f}%"
        why = f"drained: {r['drained']}" if r.get("drained") else r.get("cause", "")
        lines.append(f"{name:<16} {state:<9} {share:>6}  {why}")
        if r.get("balancer"):
            lines.append(f"  balancer {_state(r['balancer'])}: {r['balancer']['cause']}")
        if (r.get("capacity") or {}).get("detail"):
            lines.append(f"  load: {r['capacity']['detail']}")
        for e in r.get("endpoints", []):
            estate = "drained" if e.get("drained") else _state(e).lower()
            lines.append(f"  {e['address']:<30} {estate:<8} {e.get('cause') or ''}".rstrip())
    if doc.get("observers"):
        lines.append("")
        lines.append("observers' latest views:")
        for target, t in sorted(doc["observers"].items()):
            v = t.get("verdict") or {}
            verdict = _state(v)
            lines.append(f"  {target}: verdict {verdict}{' (' + v['cause'] + ')' if v.get('cause') else ''}")
            for observer, view in sorted((t.get("observers") or {}).items()):
                stale = " STALE" if view.get("stale") else ""
                detail = f" {view['detail']}" if view.get("detail") else ""
                lines.append(f"    {observer:<14} {view.get('state', '?'):<6} heard {view.get('age', '?')}s ago{stale}{detail}")
    if doc.get("drains"):
        lines.append("")
        lines.append("drains:")
        lines.extend(f"  {t}: {reason}" for t, reason in sorted(doc["drains"].items()))
    past = sorted(((e.get("at") or 0, target, e) for target, h in (doc.get("drain_history") or {}).items() for e in h),
                  key=lambda x: x[0], reverse=True)
    if past:
        lines.append("")
        lines.append("drain history (NATS), newest first:")
        for at, target, e in past[:10]:
            what = "drained" if e.get("active") else "undrained"
            why = f": {e['reason']}" if e.get("reason") else ""
            lines.append(f"  {_ago(now, at)} {target} {what} by {e.get('by') or '?'}{why}")
    if doc.get("changes"):
        lines.append("")
        lines.append("recent verdict changes:")
        for c in doc["changes"][:10]:
            lines.append(f"  {_ago(now, c['at']):>8}  {c['zone']} {c['region']} {'up' if c['up'] else 'DOWN'}: {c['cause']}")
    return "\n".join(lines)


# ---- drain / undrain -----------------------------------------------------------


def add_drain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a region name, or REGION/ADDRESS for one endpoint")
    p.add_argument("--reason", default="", help="why (shown in status, logs and the status page)")
    _common(p)


def run_drain(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        doc = call(args, "POST", "/v1/drain", {"target": args.target, "reason": args.reason})
        note = "" if doc.get("changed", True) else " (it already was)"
        print(f"drained {doc['target']}{note}: {doc.get('reason') or ''} (generation {doc['generation']})")
        return 0

    return _run("drain", go, args)


def add_undrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a region name, or REGION/ADDRESS for one endpoint")
    _common(p)


def run_undrain(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        doc = call(args, "POST", "/v1/undrain", {"target": args.target})
        note = "" if doc.get("changed", True) else " (it was not drained)"
        print(f"undrained {doc['target']}{note}: back under the health checks' verdict (generation {doc['generation']})")
        return 0

    return _run("undrain", go, args)


# ---- reload --------------------------------------------------------------------


def add_reload_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)


def run_reload(args: argparse.Namespace) -> int:
    def go(args: argparse.Namespace) -> int:
        doc = call(args, "POST", "/v1/reload")
        print(f"reloaded: generation {doc['generation']}, zones {', '.join(doc.get('zones', []))}")
        return 0

    return _run("reload", go, args)
