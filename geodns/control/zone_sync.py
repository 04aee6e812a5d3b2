"""Zones between nodes: a change accepted through one node's API reaches its peers, signed.

A zone written through `PUT /v1/zones/{zone}` (or deleted) on a node is
pushed by that node to every peer, `POST /v1/peer/zones`, signed with the
node's own Ed25519 key the way health messages are (`geodns.health.peers`,
kind `zone`). A peer takes it only when the signer is listed under
`zone_sync: accept_from:` in its own node settings, and only when it
validates there, through the same `ZoneStore.put` as an API write; it never
pushes it on (every writer reaches every node itself). A peer that is down or
refuses is retried every `interval` until it takes that version or a newer one
replaces it; a push older than the version a peer last took is refused.

Every `interval` each node also reads every peer's zone hashes (`GET
/v1/peer/zones`, signed, kind `zones`). A zone that a peer serves in another
version (or not at all) for longer than `stale_after` seconds is logged once
as a warning, shown in `/v1/zones`, `/v1/status`, `geodns status` and the
status page, and exposed as `geodns_zone_peer_differs{peer,zone} 1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from geodns.config import error_text
from geodns.control.zonestore import (
    MAX_ZONE_BYTES,
    ZoneChange,
    ZoneRefused,
    ZoneStore,
    error_dicts,
    zone_name,
)
from geodns.health import strictjson
from geodns.health.peers import NONCE_HEADER, Rejected, Verifier

log = logging.getLogger("geodns.zones.sync")

PUSH_PATH = "/v1/peer/zones"
MAX_MESSAGE = MAX_ZONE_BYTES + 64 * 1024
SETTINGS_KEY = "zone_sync"


class ZoneSyncSettingsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ZoneSyncSettings:
    """`zone_sync:` in the node settings."""

    accept_from: frozenset[str] = frozenset()
    """Nodes whose zone pushes this node takes (none: it takes none, and says so when refusing)."""
    stale_after: float = 60.0
    """Seconds a peer may serve another version of a zone before this node warns."""
    interval: float = 5.0
    """Seconds between reads of the peers' zone hashes (and retries of pushes not yet taken)."""
    push: bool = True
    """Push zones written through this node's API to its peers."""


DEFAULTS = ZoneSyncSettings()


def settings_from_mapping(raw: Any, source: str, peers: set[str], node: Any = None) -> ZoneSyncSettings:
    """`zone_sync:` of the node settings file `source`; `node`: the whole file as read
    (`read_node_file`), for the line of each error. Raises ZoneSyncSettingsError."""

    def fail(key: str, message: str) -> ZoneSyncSettingsError:
        return ZoneSyncSettingsError(error_text(source, node, key, message))

    if raw is None:
        return ZoneSyncSettings()
    if not isinstance(raw, dict):
        raise fail("zone_sync", "expected a mapping (accept_from, stale_after, interval, push)")
    unknown = set(raw) - {"accept_from", "stale_after", "interval", "push"}
    if unknown:
        raise fail(f"zone_sync.{sorted(unknown)[0]}", "unknown setting (known: accept_from, interval, push, stale_after)")
    accept = raw.get("accept_from") or []
    if not isinstance(accept, list) or not all(isinstance(n, str) for n in accept):
        raise fail("zone_sync.accept_from", "expected a list of peer names")
    strangers = sorted(set(accept) - peers)
    if strangers:
        raise fail("zone_sync.accept_from", f"{strangers[0]!r} is not one of this node's peers ({', '.join(sorted(peers)) or 'none'})")
    values: dict[str, float] = {}
    for key, lo, hi in (("stale_after", 0.1, 86400.0), ("interval", 0.1, 3600.0)):
        value = raw.get(key, getattr(DEFAULTS, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not lo <= value <= hi:
            raise fail(f"zone_sync.{key}", f"expected seconds between {lo} and {hi}, got {value!r}")
        values[key] = float(value)
    push = raw.get("push", True)
    if not isinstance(push, bool):
        raise fail("zone_sync.push", "expected true or false")
    return ZoneSyncSettings(frozenset(accept), values["stale_after"], values["interval"], push)


@dataclass
class _Mismatch:
    since: float
    ours: str | None
    theirs: str | None
    flagged: bool = False


class ZoneSync:
    """Push accepted zone changes to peers; take theirs; compare what every node serves."""

    def __init__(self, store: ZoneStore, verifier: Verifier, peers: Mapping[str, str], settings: ZoneSyncSettings) -> None:
        self.store = store
        self.verifier = verifier
        self.peers = dict(peers)
        """Peer name -> admin URL."""
        self.settings = settings
        self.pending: dict[tuple[str, str], dict[str, Any]] = {}
        """(peer, zone) -> the push it has not taken yet."""
        self.peer_hashes: dict[str, dict[str, Any]] = {}
        self.mismatches: dict[tuple[str, str], _Mismatch] = {}
        self._taken_at: dict[str, float] = {}
        """Zone -> `at` of the latest push this node took (an older one is refused)."""
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        store.listeners.append(self.on_change)

    # ---- outgoing ---------------------------------------------------------------

    def on_change(self, change: ZoneChange) -> None:
        if change.source != "api":
            return  # a zone a peer pushed is not pushed on: its writer reaches every node itself
        at = self._taken_at[change.zone] = time.time()
        if not self.settings.push:
            return
        message = {"v": 1, "node": self.verifier.name, "zone": change.zone, "text": change.text,
                   "hash": change.hash, "at": at}
        for peer in self.peers:
            self.pending[(peer, change.zone)] = message
        self._wake.set()

    async def _push(self, peer: str, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        headers = self.verifier.sign("zone", peer, body)
        key = (peer, message["zone"])
        async with self._session.post(self.peers[peer] + PUSH_PATH, data=body,
                                      headers={**headers, "Content-Type": "application/json"}) as resp:
            reply = await resp.content.read(256 * 1024)
            if resp.status == 404 and NONCE_HEADER not in resp.headers:
                log.info("zone not pushed peer=%s zone=%s: it serves no zone API (a checker-only agent?)", peer, key[1])
                self.pending.pop(key, None)
                return
            try:
                self.verifier.verify("zone-reply", resp.headers, reply, time.time(), sender=peer, nonce=headers[NONCE_HEADER])
                doc = strictjson.loads(reply)
            except (Rejected, ValueError, RecursionError) as exc:
                raise RuntimeError(f"HTTP {resp.status}, reply not verified: {exc}") from None
        if resp.status == 200:
            log.info("zone pushed peer=%s zone=%s hash=%s", peer, message["zone"], message["hash"])
        else:
            log.error("zone push refused peer=%s zone=%s status=%d error=%s errors=%s", peer, message["zone"],
                      resp.status, doc.get("error") if isinstance(doc, dict) else doc,
                      json.dumps(doc.get("errors", []) if isinstance(doc, dict) else [])[:2000])
        if self.pending.get(key) is message:
            del self.pending[key]

    # ---- incoming ---------------------------------------------------------------

    async def receive(self, request: web.Request) -> web.Response:
        now = time.time()
        if request.content_length is not None and request.content_length > MAX_MESSAGE:
            return web.json_response({"error": "too_large"}, status=413)
        body = await request.content.read(MAX_MESSAGE + 1)
        if len(body) > MAX_MESSAGE:
            return web.json_response({"error": "too_large"}, status=413)
        try:
            sender = self.verifier.verify("zone", request.headers, body, now)
        except Rejected as exc:
            log.warning("zone push refused claimed=%s reason=%s remote=%s", (request.headers.get("X-Geodns-Node") or "")[:64], exc, request.remote)
            return web.json_response({"error": exc.reason}, status=exc.status)
        status, doc = self._take(sender, body)
        reply = json.dumps(doc).encode()
        headers = self.verifier.sign("zone-reply", sender, reply, nonce=request.headers[NONCE_HEADER])
        return web.Response(body=reply, status=status, headers={**headers, "Content-Type": "application/json"})

    def _take(self, sender: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if sender not in self.settings.accept_from:
            log.warning("zone push refused peer=%s: not in zone_sync.accept_from", sender)
            return 403, {"error": f"{self.verifier.name} does not take zones from {sender} (zone_sync.accept_from)"}
        try:
            message = strictjson.loads(body)
            zone = zone_name(message["zone"])
            text, at = message["text"], message["at"]
            if message.get("v") != 1 or message.get("node") != sender:
                raise ValueError("v must be 1 and node the signer")
            if text is not None and (not isinstance(text, str) or len(text) > MAX_ZONE_BYTES):
                raise ValueError("text must be a zone document or null")
            if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
                raise ValueError("at must be a time")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            return 400, {"error": f"malformed zone push: {exc}"}
        if at < self._taken_at.get(zone, -math.inf):
            return 409, {"error": f"a newer version of {zone} was taken already"}
        try:
            if text is None:
                result = self.store.delete(zone, f"peer:{sender}") if self.store.zone(zone) else {"zone": zone, "deleted": True}
            else:
                result = self.store.put(zone, text, f"peer:{sender}")
        except ZoneRefused as exc:
            log.error("zone from peer refused peer=%s zone=%s error=%s", sender, zone, exc.message)
            return exc.status, {"error": exc.message, "errors": error_dicts(exc.errors)}
        self._taken_at[zone] = at
        return 200, result

    async def hashes(self, request: web.Request) -> web.Response:
        try:
            sender = self.verifier.verify("zones", request.headers, b"", time.time())
        except Rejected as exc:
            return web.json_response({"error": exc.reason}, status=exc.status)
        reply = json.dumps({"node": self.verifier.name, "zones": self.store.hashes()}).encode()
        headers = self.verifier.sign("zones-reply", sender, reply, nonce=request.headers[NONCE_HEADER])
        return web.Response(body=reply, headers={**headers, "Content-Type": "application/json"})

    # ---- comparing ---------------------------------------------------------------

    async def _read_hashes(self, peer: str) -> None:
        headers = self.verifier.sign("zones", peer, b"")
        async with self._session.get(self.peers[peer] + PUSH_PATH, headers=headers) as resp:
            reply = await resp.content.read(MAX_MESSAGE)
            if resp.status == 404 and NONCE_HEADER not in resp.headers:
                self.peer_hashes[peer] = {"zones": None, "at": time.time(), "error": "no zone API (a checker-only agent?)"}
                return
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            self.verifier.verify("zones-reply", resp.headers, reply, time.time(), sender=peer, nonce=headers[NONCE_HEADER])
        doc = strictjson.loads(reply)
        zones = doc.get("zones") if isinstance(doc, dict) else None
        if not isinstance(zones, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in zones.items()):
            raise RuntimeError("malformed reply")
        self.peer_hashes[peer] = {"zones": zones, "at": time.time(), "error": None}

    def compare(self, now: float) -> None:
        """Note which peers serve another version of which zone, and warn past `stale_after`."""
        ours = self.store.hashes()
        seen = set()
        for peer, info in self.peer_hashes.items():
            theirs = info.get("zones")
            if theirs is None:
                continue
            for zone in set(ours) | set(theirs):
                if ours.get(zone) == theirs.get(zone):
                    continue
                key = (peer, zone)
                seen.add(key)
                m = self.mismatches.get(key)
                if m is None or (m.ours, m.theirs) != (ours.get(zone), theirs.get(zone)):
                    m = self.mismatches[key] = _Mismatch(m.since if m else now, ours.get(zone), theirs.get(zone), m.flagged if m else False)
                if not m.flagged and now - m.since >= self.settings.stale_after:
                    m.flagged = True
                    log.warning("zone differs on a peer zone=%s peer=%s ours=%s theirs=%s for_seconds=%.0f",
                                zone, peer, m.ours or "none", m.theirs or "none", now - m.since)
        for key in set(self.mismatches) - seen:
            if self.mismatches[key].flagged:
                log.info("zone agrees with the peer again zone=%s peer=%s", key[1], key[0])
            del self.mismatches[key]
        stale: dict[str, list[str]] = {}
        for (peer, zone), m in sorted(self.mismatches.items()):
            if m.flagged:
                stale.setdefault(zone, []).append(peer)
        self.store.stale_peers = stale

    def status(self) -> dict[str, Any]:
        return {
            "peers": {p: dict(info) for p, info in sorted(self.peer_hashes.items())},
            "mismatches": [
                {"peer": p, "zone": z, "ours": m.ours, "theirs": m.theirs, "since": m.since, "flagged": m.flagged}
                for (p, z), m in sorted(self.mismatches.items())
            ],
            "pending_pushes": sorted(f"{p}:{z}" for p, z in self.pending),
        }

    # ---- the loop ------------------------------------------------------------------

    async def _round(self) -> None:
        async def push(key: tuple[str, str], message: dict[str, Any]) -> None:
            try:
                await self._push(key[0], message)
            except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError, Rejected) as exc:
                log.warning("zone push to peer failed, will retry peer=%s zone=%s error=%s", key[0], key[1], exc or type(exc).__name__)

        async def read(peer: str) -> None:
            try:
                await self._read_hashes(peer)
            except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError, Rejected, ValueError, RecursionError) as exc:
                previous = self.peer_hashes.get(peer, {})
                self.peer_hashes[peer] = {**previous, "error": str(exc) or type(exc).__name__}

        await asyncio.gather(*(push(k, m) for k, m in list(self.pending.items())))
        await asyncio.gather(*(read(p) for p in self.peers))
        # Hashing a large zone after a reload takes a while: not on the event loop.
        await asyncio.to_thread(self.store.hashes)
        self.compare(time.time())

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._round()
            except Exception:  # noqa: BLE001 - keep syncing whatever happens
                log.exception("zone sync round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.interval)

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(2.0, min(10.0, self.settings.interval * 2)))
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.create_task(self.run(), name="zone-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PUSH_PATH, self.receive)
        app.router.add_get(PUSH_PATH, self.hashes)


class MismatchCollector(Collector):
    """`geodns_zone_peer_differs{peer,zone}`: 1 while a peer has served another version too long."""

    def __init__(self, sync: ZoneSync) -> None:
        self.sync = sync

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("geodns_zone_peer_differs",
                              "1 while a peer has served another version of a zone (or none) for longer than zone_sync.stale_after.",
                              labels=["peer", "zone"])
        for (peer, zone), m in sorted(self.sync.mismatches.items()):
            g.add_metric([peer, zone], 1.0 if m.flagged else 0.0)
        yield g


def attach(app: web.Application, health: Any, settings: ZoneSyncSettings) -> ZoneSync:
    """Zone sync on a serving node's admin app, with the health service's identity and peers
    and the node file's `zone_sync:` (`settings_from_mapping`)."""
    from geodns.control.admin import REGISTRY_KEY
    from geodns.control.zones_api import ZONE_STATUS, ZONES

    peers = {p.name: p.url.rstrip("/") for p in health.node.peers if p.url}  # over NATS urls are optional
    sync = ZoneSync(app[ZONES], health.verifier, peers, settings)
    if getattr(health, "nats", None) is not None:  # peers' zone hashes come with their views over NATS
        health.nats.share_zones(sync.store.hashes, sync.peer_hashes)
    sync.add_routes(app)
    app[ZONE_STATUS].append(sync.status)
    app[REGISTRY_KEY].register(MismatchCollector(sync))
    return sync
