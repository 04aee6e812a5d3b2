"""The NATS JetStream exchange: views, drains and zone hashes for fleets.

The built-in exchange pushes every node's views to every other node (O(N²)
messages). With `exchange: {nats: ...}` in its node settings a node instead
keeps two JetStream key-value buckets up to date:

- `PREFIX-views`, key `views.NODE`: the node's signed message (its own views,
  the drains it holds, the hash of each zone it serves), the same message the
  built-in exchange pushes (`HealthService.peer_message`), written on every
  view change and drain and as a heartbeat every `exchange_interval`. Every
  node watches the bucket: a late joiner gets the latest message of every node
  at once (warm start), then each new one. Entries expire after the replay
  window.
- `PREFIX-drains`, key `drain.TARGET`: the latest signed drain or undrain of
  each target, written with compare-and-set on the key's revision, with
  history.
- `PREFIX-latency`, key `latency.NODE` (when the node measures latency,
  `share_latency`): the node's signed RTT rows, the message the built-in
  exchange pushes to `/v1/peer/latency`, written every latency exchange
  interval; every node watches the bucket and ranks the others' rows with
  its own, as over HTTP.

Identity does not come from NATS: the message is signed by the node's own
Ed25519 key (`geodns.health.peers.Verifier`, kind `publish`, recipient
`nats:PREFIX`) and checked under the key listed for the node it claims, so a
leaked NATS credential cannot speak for a node. A refused message is counted
and logged as on the built-in exchange
(`geodns_peer_messages_rejected_total{reason, peer}`).

Losing NATS (the connection is down, or no write has succeeded for
`2 × exchange_interval + 0.5` s): the node keeps probing; a peer's view that would go stale is dropped instead, so
that targets this node probes are decided by its own fresh view (like an
isolated node) and targets it does not probe keep their last verdict, until
NATS comes back (docs/health.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig

from geodns.health import peers as _peers
from geodns.health.drains import DrainRefused, drain_to_json
from geodns.health.nats_settings import NatsSettings
from geodns.health.quorum import Drain, newer_drain
from geodns.health.service import _kv
from geodns.steer.verdict import DECIDED

if TYPE_CHECKING:
    from geodns.health.service import HealthService

__all__ = ["NatsExchange", "key_token"]

log = logging.getLogger("geodns.health")

KIND = "publish"
LATENCY_KIND = "latency"
DRAIN_HISTORY = 16
"""Revisions of each drain the bucket keeps (the status page's drain history)."""
RETRY = 1.0
"""Seconds between attempts to connect or to recreate a bucket or watcher."""
HOLD_MARGIN = 0.5
"""While NATS is lost, a peer's view is dropped this many seconds before it would go stale."""
_SAFE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def key_token(text: str) -> str:
    """A name (node, target) as one KV key token: itself when it is plain
    letters, digits, `-`, `_`; otherwise `=` and its base64url (which cannot
    collide with a plain one). Targets hold `/`, `.` and IPv6 `:`."""
    if _SAFE.fullmatch(text):
        return text
    return "=" + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def node_of_token(token: str) -> str | None:
    """The name `key_token` made `token` from; None when no name could give it."""
    if not token.startswith("="):
        return token if _SAFE.fullmatch(token) else None
    try:
        name = base64.urlsafe_b64decode(token[1:] + "=" * (-len(token[1:]) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return name if key_token(name) == token else None


def envelope(headers: dict[str, str], body: bytes) -> bytes:
    """A signed message as one KV value: the signature headers as a JSON line, then the body."""
    return json.dumps(headers, separators=(",", ":")).encode() + b"\n" + body


def open_envelope(value: bytes) -> tuple[dict[str, str], bytes]:
    """Raises Rejected("unsigned") when the value is not an envelope."""
    line, sep, body = value.partition(b"\n")
    try:
        headers = json.loads(line) if sep else None
    except ValueError:
        headers = None
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise _peers.Rejected("unsigned", "not a signed geodns message")
    return headers, body


def _ssl_context(settings: NatsSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if tls is None and not any(s.startswith("tls://") for s in settings.servers):
        return None
    ctx = ssl.create_default_context(cafile=tls.ca_file if tls else None)
    if tls is not None and tls.cert_file and tls.key_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


class NatsExchange:
    """One node's side of the NATS exchange (owned by its HealthService)."""

    def __init__(self, service: HealthService, settings: NatsSettings) -> None:
        self.service = service
        self.settings = settings
        node = service.node
        self.name = node.name
        self.recipient = f"nats:{settings.prefix}"
        # Checks what others published: the recipient of a published message is the bucket.
        self.verifier = _peers.Verifier(self.recipient, None, service.verifier.peer_keys, node.replay_window)
        self.zone_hashes: Callable[[], dict[str, str]] | None = None
        self.peer_zones: dict[str, dict[str, Any]] | None = None
        self._nc: Any = None
        self._views: Any = None
        self._drains: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._taken: dict[str, bytes] = {}
        """KV key -> digest of the value last taken: a restarted watcher delivers it
        again (not a replay to refuse), and a recreated bucket starts its revisions over."""
        self._drain_revisions: dict[str, int] = {}
        """Target -> revision of its drain entry as last read (the compare-and-set's `last`)."""
        self._drain_history: dict[str, list[dict[str, Any]]] = {}
        self._bucket_drain: dict[str, Drain] = {}
        """Target -> the drain the bucket holds, as far as this node has read."""
        self._own_seen = 0.0
        self._written = 0.0
        """When a write to NATS last succeeded (monotonic)."""
        self._lost_since: float | None = None
        self._last_error: str | None = None
        self._connected_url: str | None = None
        self._latency: tuple[Callable[[], bytes], Callable[[str, Any, float], None], float] | None = None
        self._latency_kv: Any = None

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self, warm_start: float) -> None:
        """Connect, read every node's latest message (at most `warm_start`
        seconds in all), then keep publishing and watching in the background.
        Never raises: without NATS the node starts on its own views."""
        self._written = time.monotonic()
        ready = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._run(ready), name="health-nats"))
        self._tasks.append(asyncio.create_task(self._watch_loss(), name="health-nats-loss"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), warm_start)
        if not ready.is_set():
            log.warning("health nats warm start incomplete node=%s after %.1fs: starting on own views "
                        "(error=%s)", self.name, warm_start, _kv(self._last_error or "none"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 2.0)
            self._nc = None

    def push_now(self) -> None:
        """Publish soon: a view changed state, or a drain was taken."""
        self._wake.set()

    def share_zones(self, hashes: Callable[[], dict[str, str]], peer_hashes: dict[str, dict[str, Any]]) -> None:
        """Publish `hashes()` with our views; put each peer's in `peer_hashes` (zone sync compares them)."""
        self.zone_hashes = hashes
        self.peer_zones = peer_hashes

    def share_latency(self, body: Callable[[], bytes], accept: Callable[[str, Any, float], None], interval: float) -> None:
        """Publish `body()` (this node's latency rows) every `interval` seconds, and hand
        each other node's rows, once their signature is checked, to `accept(sender,
        message, received)` (which raises Rejected for a bad message). Before `start`."""
        self._latency = (body, accept, interval)

    @property
    def lost(self) -> bool:
        return self._lost_since is not None

    def status(self) -> dict[str, Any]:
        return {
            "kind": "nats",
            "servers": list(self.settings.servers),
            "connected": bool(self._nc is not None and self._nc.is_connected),
            "server": self._connected_url,
            "lost_since": self._lost_since,
            "last_error": self._last_error,
            "drain_history": {t: list(h) for t, h in sorted(self._drain_history.items())},
        }

    # ---- the connection ------------------------------------------------------------

    async def _connect(self) -> None:
        async def disconnected() -> None:
            log.warning("health nats disconnected node=%s", self.name)

        async def reconnected() -> None:
            self._connected_url = str(self._nc.connected_url.netloc) if self._nc.connected_url else None
            log.warning("health nats reconnected node=%s server=%s", self.name, self._connected_url)

        async def error(e: Exception) -> None:
            self._last_error = f"{type(e).__name__}: {e}"

        self._nc = await nats.connect(
            servers=list(self.settings.servers), name=f"geodns-{self.name}",
            user_credentials=self.settings.credentials, tls=_ssl_context(self.settings),
            connect_timeout=2, reconnect_time_wait=0.5, max_reconnect_attempts=-1,
            ping_interval=max(1, int(self.service.node.exchange_interval * 2)), max_outstanding_pings=2,
            disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
        )
        self._connected_url = str(self._nc.connected_url.netloc) if self._nc.connected_url else None
        log.info("health nats connected node=%s server=%s", self.name, self._connected_url)

    async def _buckets(self) -> None:
        js = self._nc.jetstream(timeout=max(2.0, self.service.node.exchange_interval * 2))
        p, replicas = self.settings.prefix, self.settings.replicas

        async def bucket(name: str, **config: Any) -> Any:
            try:
                return await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                with contextlib.suppress(nats.js.errors.BadRequestError):  # another node made it meanwhile
                    return await js.create_key_value(KeyValueConfig(bucket=name, replicas=replicas, **config))
                return await js.key_value(name)

        self._views = await bucket(f"{p}-views", history=1, ttl=max(self.service.node.replay_window, 5.0),
                                   description="geodns: each node's signed views, drains and zone hashes")
        self._drains = await bucket(f"{p}-drains", history=DRAIN_HISTORY,
                                    description="geodns: the latest signed drain of each target")
        if self._latency is not None:
            interval = self._latency[2]
            self._latency_kv = await bucket(f"{p}-latency", history=1,
                                            ttl=max(self.service.node.replay_window, 3 * interval + 5.0),
                                            description="geodns: each node's signed latency rows")

    async def _run(self, ready: asyncio.Event) -> None:
        """Connect (retrying), then publish and watch; start over when a bucket or watcher fails."""
        while True:
            try:
                if self._nc is None:
                    await self._connect()
                await self._buckets()
                views = await self._views.watchall()
                drains = await self._drains.watchall()
                jobs = [self._watch(views, self._take_view, ready), self._watch(drains, self._take_drain, None),
                        self._publish_loop()]
                if self._latency_kv is not None:
                    jobs += [self._watch(await self._latency_kv.watchall(), self._take_latency, None),
                             self._publish_latency_loop()]
                await asyncio.gather(*jobs)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - NATS trouble of any kind: keep our views, retry
                text = f"{type(e).__name__}: {e}"
                if text != self._last_error:
                    log.warning("health nats exchange failed node=%s error=%s; retrying", self.name, _kv(text))
                self._last_error = text
                if self._nc is not None and self._nc.is_closed:
                    self._nc = None
            # Connected (a watcher's server left, a bucket to recreate): again at once.
            await asyncio.sleep(0.1 if self._nc is not None and self._nc.is_connected else RETRY)

    # ---- publishing ----------------------------------------------------------------

    async def _publish_loop(self) -> None:
        interval = self.service.node.exchange_interval
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._publish()
            await self._write_drains()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, started + interval - loop.time()))
            await asyncio.sleep(0.02)  # news that comes together goes together
            # Our own heartbeat comes back through the watcher: when it stops
            # coming, the watcher is dead (its server left): start over.
            if self._own_seen and time.monotonic() - self._own_seen > 3 * interval + 2:
                self._own_seen = 0.0
                raise RuntimeError("the views watcher stopped delivering")

    async def _publish(self) -> None:
        message = self.service.peer_message()
        if self.zone_hashes is not None:
            message["zones"] = self.zone_hashes()
        if not await self._put_signed(self._views, "views", KIND, _peers.encode(message)):
            return
        self._written = time.monotonic()
        if not self._own_seen:
            self._own_seen = time.monotonic()

    async def _publish_latency_loop(self) -> None:
        assert self._latency is not None
        body, _, interval = self._latency
        while True:
            await self._put_signed(self._latency_kv, "latency", LATENCY_KIND, body())
            await asyncio.sleep(interval)

    async def _put_signed(self, kv: Any, bucket: str, kind: str, body: bytes) -> bool:
        """Sign `body` with `kind` for the buckets and put it under this node's key of `bucket`;
        whether that worked. A failed write is noted; a bucket that is gone (a NATS without
        storage restarted) raises, so that `_run` recreates it."""
        headers = self.service.verifier.sign(kind, self.recipient, body)
        try:
            await kv.put(f"{bucket}.{key_token(self.name)}", envelope(headers, body))
        except Exception as e:  # noqa: BLE001
            self._last_error = f"publish {bucket}: {type(e).__name__}: {e}"
            if isinstance(e, nats.js.errors.NotFoundError):
                raise
            return False
        self.service.record_bytes(len(body), 0)
        return True

    async def _write_drains(self) -> None:
        """Put each drain we hold into the bucket when it is newer than the
        bucket's: compare-and-set on the revision we last read, so a racing
        writer's newer drain is never overwritten (on a conflict, read, and
        write only if ours still wins: the latest `at`, then node name)."""
        for target, d in list(self.service._drains.items()):
            if not d.signature:
                continue
            key = f"drain.{key_token(target)}"
            for _ in range(5):
                current = self._bucket_drain.get(target)
                if current is not None and newer_drain(current, d) is current:
                    break  # the bucket holds this one or a newer one
                value = json.dumps(drain_to_json(d)).encode()
                try:
                    rev = self._drain_revisions.get(target)
                    if rev is None:
                        rev = await self._drains.create(key, value)
                    else:
                        rev = await self._drains.update(key, value, last=rev)
                    self._drain_revisions[target] = rev
                    self._bucket_drain[target] = d
                    break
                except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                    # Someone wrote first: read what is there and decide again.
                    try:
                        entry = await self._drains.get(key)
                    except nats.js.errors.KeyNotFoundError:
                        self._drain_revisions.pop(target, None)
                        continue
                    self._drain_revisions[target] = entry.revision
                    self._take_drain(entry)

    # ---- watching ------------------------------------------------------------------

    async def _watch(self, watcher: Any, take: Callable[[Any], None], ready: asyncio.Event | None) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all in: warm start done
                    if ready is not None and not ready.is_set():
                        self.service._recompute(publish=False)
                        ready.set()
                    continue
                if entry.value is None or entry.operation is not None:
                    continue  # a delete, purge or expiry marker
                try:
                    take(entry)
                except Exception:  # a bad entry must not stop the watcher
                    log.exception("health nats entry not taken node=%s key=%s", self.name, _kv(entry.key))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
        raise RuntimeError("watcher ended")

    def _seen_before(self, key: str, value: bytes) -> bool:
        """Whether `value` is what this node last took under `key` (a restarted watcher
        delivers it again: not a replay to refuse). Only the keys of known nodes are
        remembered, so keys a credential holder makes up cannot grow this memory."""
        node = node_of_token(key.partition(".")[2])
        if node is None or (node != self.name and node not in self.verifier.peer_keys):
            return False
        digest = hashlib.sha256(value).digest()
        if self._taken.get(key) == digest:
            return True
        self._taken[key] = digest
        return False

    def _take_view(self, entry: Any) -> None:
        if entry.key == f"views.{key_token(self.name)}":
            self._own_seen = time.monotonic()
            return
        taken = self._verified(entry, "views", KIND)
        if taken is None:
            return
        sender, message, received = taken
        zones = message.pop("zones", None) if isinstance(message, dict) else None
        try:
            self.service.accept_peer_message(sender, message, received)
        except _peers.Rejected as e:
            self._refused(entry, "views", sender, e)
            return
        self.service.record_bytes(0, len(entry.value))
        if self.peer_zones is not None and isinstance(zones, dict) \
                and all(isinstance(k, str) and isinstance(v, str) for k, v in zones.items()):
            self.peer_zones[sender] = {"zones": zones, "at": received, "error": None}

    def _take_latency(self, entry: Any) -> None:
        """Another node's latency rows, checked whole by the latency service."""
        if entry.key == f"latency.{key_token(self.name)}":
            return
        taken = self._verified(entry, "latency", LATENCY_KIND)
        if taken is None:
            return
        assert self._latency is not None
        sender, message, received = taken
        try:
            self._latency[1](sender, message, received)
        except _peers.Rejected as e:
            self._refused(entry, "latency", sender, e)
            return
        self.service.record_bytes(0, len(entry.value))

    def _verified(self, entry: Any, bucket: str, kind: str) -> tuple[str, Any, float] | None:
        """A bucket value's (sender, decoded message, time received) when it is new, fresh, and
        signed with `kind` by the node its key names; None otherwise (a refusal is counted and
        logged like a refused push)."""
        key = entry.key
        if self._seen_before(key, entry.value):
            return None
        received = time.time()
        claimed = None
        try:
            headers, body = open_envelope(entry.value)
            claimed = headers.get(_peers.NODE_HEADER)
            if self._too_old(headers, body, received):
                return None
            sender = self.verifier.verify(kind, headers, body, received)
            if key != f"{bucket}.{key_token(sender)}":
                raise _peers.Rejected("wrong_peer", f"signed by {sender} under another node's key {key}")
            return sender, _peers.decode(body), received
        except _peers.Rejected as e:
            self._refused(entry, bucket, claimed, e)
            return None

    def _refused(self, entry: Any, bucket: str, claimed: str | None, e: _peers.Rejected) -> None:
        self.service.record_rejection(e.reason, claimed, f"nats:{self.settings.prefix}-{bucket}/{entry.key}"[:120], str(e))

    def _too_old(self, headers: dict[str, str], body: bytes, received: float) -> bool:
        """Whether a bucket value is older than the replay window (a node gone quiet, read at
        warm start: nothing to refuse). Raises Rejected("too_large") for an oversized body."""
        with contextlib.suppress(ValueError):
            if received - float(headers.get(_peers.TIMESTAMP_HEADER, "")) > self.verifier.window:
                return True
        if len(body) > _peers.MAX_BODY:
            raise _peers.Rejected("too_large", f"{len(body)} bytes")
        return False

    def _take_drain(self, entry: Any) -> None:
        """A drain from the bucket: checked like a drain in a peer message (`by`'s signature)."""
        try:
            raw = json.loads(entry.value)
        except ValueError:
            raw = None
        target = raw.get("target") if isinstance(raw, dict) else None
        if isinstance(target, str):
            self._drain_revisions[target] = max(entry.revision, self._drain_revisions.get(target, 0))
            history = self._drain_history.setdefault(target, [])
            if not any(h["revision"] == entry.revision for h in history):
                history.append({"revision": entry.revision, "active": raw.get("active"), "by": raw.get("by"),
                                "at": raw.get("at"), "reason": raw.get("reason")})
                del history[:-DRAIN_HISTORY]
        now = time.time()
        by = raw.get("by") if isinstance(raw, dict) and isinstance(raw.get("by"), str) else None
        self.service.take_drains(by, [raw], now)
        if isinstance(target, str):
            with contextlib.suppress(DrainRefused):
                d = self.service._check_drain(raw, now)
                self._bucket_drain[target] = newer_drain(self._bucket_drain.get(target), d)

    # ---- losing NATS ---------------------------------------------------------------

    async def _watch_loss(self) -> None:
        """Note when NATS is lost or back, and while it is lost, drop peers'
        views just before they would go stale (see the module's docstring)."""
        interval = self.service.node.exchange_interval
        tick = max(0.05, min(0.25, interval / 2))
        while True:
            await asyncio.sleep(tick)
            connected = self._nc is not None and self._nc.is_connected
            lost = not connected or time.monotonic() - self._written > 2 * interval + 0.5
            now = time.time()
            if lost and self._lost_since is None:
                self._lost_since = now
                log.warning("health nats lost node=%s %s: deciding on own fresh views, keeping the last "
                            "verdict of targets this node does not probe", self.name,
                            "disconnected" if not connected else "writes failing")
            elif not lost and self._lost_since is not None:
                log.warning("health nats back node=%s after %.1fs", self.name, now - self._lost_since)
                self._lost_since = None
            if self._lost_since is not None:
                self._hold(now, margin=max(HOLD_MARGIN, 2 * tick))

    def _hold(self, now: float, margin: float) -> None:
        svc = self.service
        since = time.strftime("%H:%M:%SZ", time.gmtime(self._lost_since or now))
        touched: set[str] = set()
        for views in svc._peer_views.values():
            for target, v in list(views.items()):
                if now - v.heard > svc._stale_after(target) - margin:
                    del views[target]
                    touched.add(target)
        for target in touched:
            v = svc._verdicts.get(target)
            if target in svc._own or v is None or v.state not in DECIDED:
                continue
            svc._fallback[target] = replace(v, cause=f"NATS unreachable since {since}, last verdict kept: {v.cause}")
        if touched:
            svc._schedule_recompute(touched)
