"""HealthService: the control-plane object that runs probes, talks to peers
and turns views into verdicts.

The pure parts live elsewhere (`plan`, `risefall`, `quorum`, `decide`); this module is
the I/O edge: timers, sockets, files, logs and metrics.

Contract with the rest of geodns:

- `on_change(verdicts)` is called on the event loop with the full mapping
  target -> Verdict whenever a verdict's up/forced state changes, once at
  start (warm-start verdicts), and when a published `until` has passed (so
  the snapshot's TTL bounds stay ahead of the clock).
- `drain()` / `undrain()` are synchronous, durable (written to `state_dir`
  before returning, through the node's one `DrainStore`) and pushed to peers
  at once.
- `add_routes(app)` mounts the peer exchange and `GET /v1/health` on the
  node's admin app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from geodns.config.model import Check, Zone
from geodns.fsutil import write_json_atomic
from geodns.health import keys
from geodns.health import peers as _peers
from geodns.health.decide import Policy, TargetViews, decide_all
from geodns.health.drains import (
    MAX_REASON,
    DrainRefused,
    DrainStore,
    check_drain,
    drain_to_json,
    read_json_file,
    sign_drain,
)
from geodns.health.plan import Plan, ProbeKey, plan_zones
from geodns.health.probes import ProbeResult, probe, probe_session
from geodns.health.quorum import Drain, ObserverView, newer_drain
from geodns.health.risefall import Rules, State, View, earliest_change, observe
from geodns.health.settings import NodeSettings
from geodns.steer.verdict import DECIDED, Verdict

__all__ = ["HealthService"]

log = logging.getLogger("geodns.health")

MESSAGE_VERSION = 2
STARTUP_EXCHANGE_TIMEOUT = 1.0
REFUSAL_LOG_EVERY = 60.0
"""A refused peer message is logged at most once a minute per claimed peer."""
MAX_RELATIVE = 1e12
"""Milliseconds a view's times may lie from the message's `sent_at` (about 30 years)."""
QUANTUM_MS = 100
"""Views' times travel in milliseconds floored to this, so that equal views group."""
RECOMPUTE_BATCH = 250
"""Targets recomputed at a time when many are dirty."""
RECOMPUTE_SLICE = 0.01
"""Seconds of recompute per event-loop iteration before other work gets its turn."""
VERDICT_LOG_PER_SECOND = 20
_STATES = {s.value: s for s in State}

@functools.lru_cache(maxsize=4096)
def _rules(check: Check) -> Rules:
    return Rules.from_check(check)


def _kv(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.probes = Counter("geodns_probe_results_total", "Probe results by target and outcome.",
                              ["target", "result"], registry=registry)
        self.latency = Histogram("geodns_probe_duration_seconds", "Probe round-trip time.", ["kind"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
                                 registry=registry)
        self.up = Gauge("geodns_verdict_up", "1 when the verdict on a target is up.", ["target"],
                        registry=registry)
        self.forced = Gauge("geodns_verdict_forced", "1 when the verdict is set by a drain.",
                            ["target"], registry=registry)
        self.changes = Counter("geodns_verdict_changes_total", "Verdict changes.", ["target"],
                               registry=registry)
        self.exchange_errors = Counter("geodns_peer_exchange_errors_total",
                                       "Failed pushes to peers.", ["peer", "reason"], registry=registry)
        self.exchanges = Counter("geodns_peer_exchanges_total", "Successful pushes to peers.", ["peer"],
                                 registry=registry)
        self.rejected = Counter("geodns_peer_messages_rejected_total",
                                "Peer messages (or parts: bad_drain, not_observer) refused, by reason "
                                "and the configured peer they claimed to come from ('unknown' otherwise).",
                                ["reason", "peer"], registry=registry)
        self.peer_bytes = Counter("geodns_peer_bytes_total",
                                  "Bytes of peer messages (bodies) sent and received.", ["direction"],
                                  registry=registry)
        self.isolated = Gauge("geodns_health_isolated",
                              "1 when no peer has been heard recently and verdicts use this node's view only.",
                              registry=registry)


class HealthService:
    """Distributed health checking for one node."""

    def __init__(
        self,
        node: NodeSettings,
        zones: Sequence[Zone],
        on_change: Callable[[Mapping[str, Verdict]], None] = lambda verdicts: None,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.node = node
        self.on_change = on_change
        self._keys = {p.name: keys.parse_public_key(p.public_key) for p in node.peers if p.public_key}
        if node.private_key is not None:
            self._keys[node.name] = node.private_key.public_key()
        self.verifier = _peers.Verifier(node.name, node.private_key, self._keys, node.replay_window)
        self._store = DrainStore(os.path.join(node.state_dir, "drains.json") if node.state_dir else None)
        self._refusals: dict[str, tuple[float, int]] = {}
        self._message_cache: dict[bool, tuple[tuple[int, bool], float, bytes]] = {}
        self._message_version = 0
        self.metrics = _Metrics(registry if registry is not None else REGISTRY)
        self._plan: Plan = plan_zones(zones, node.name, node.members)
        self._own: dict[str, View] = {}
        self._own_views: dict[str, tuple[View, ObserverView]] = {}
        """Our own views as the quorum reads them, rebuilt when the view changes."""
        self._peer_views: dict[str, dict[str, ObserverView]] = {}
        self._peer_seen: dict[str, float] = {}
        self._views_heard: dict[str, float] = {}
        """When each peer's views last came (its push, or a reply we asked views in)."""
        self._peer_error: dict[str, str] = {}
        self._drains: dict[str, Drain] = {}
        self._fallback: dict[str, Verdict] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._published: dict[str, Verdict] = {}
        self._published_at = 0.0
        self._isolated = False
        self._probe_tasks: dict[ProbeKey, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._push_events: dict[str, asyncio.Event] = {}
        self._sem: asyncio.Semaphore | None = None
        self._probe_http: aiohttp.ClientSession | None = None
        self._peer_http: aiohttp.ClientSession | None = None
        self._recompute_pending = False
        self._publish_pending = False
        self._verdict_log: list = [0.0, 0, 0]  # window start, lines logged, lines suppressed
        self._dirty: set[str] | None = set()
        self._state_dirty = False
        self._started = False
        self.nats: Any = None
        """The NATS exchange (`geodns.health.nats_exchange`) when the settings choose it."""
        if node.nats is not None:
            from geodns.health.nats_exchange import NatsExchange  # nats-py: the `nats` extra

            self.nats = NatsExchange(self, node.nats)
        self._load_disk()
        self._reset_views(time.time())
        self._recompute(publish=False)

    # ---- public API -------------------------------------------------------

    async def start(self) -> None:
        """Publish warm-start verdicts, then start probes and peer exchange."""
        if self._started:
            return
        self._started = True
        self._sem = asyncio.Semaphore(self.node.max_probes_in_flight)
        self._probe_http = probe_session(self.node.max_probes_in_flight, self.node.source_address)
        self._peer_http = aiohttp.ClientSession(trust_env=False)
        if self.nats is not None:
            # Views and drains go through NATS JetStream; warm start from its buckets.
            await self.nats.start(STARTUP_EXCHANGE_TIMEOUT * 3)
            self._recompute(publish=False)
        elif self.node.peers:
            # Warm start: one push-pull round first, so the first verdicts we
            # publish already hold the peers' views (bounded: a dead peer
            # costs at most STARTUP_EXCHANGE_TIMEOUT).
            await asyncio.gather(*(self._exchange_once(p, STARTUP_EXCHANGE_TIMEOUT) for p in self.node.peers))
            self._recompute(publish=False)
        self._publish(time.time())
        for key in self._plan.probes:
            self._start_probe(key)
        for peer in self.node.peers if self.nats is None else ():
            self._push_events[peer.name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._exchange_loop(peer), name=f"health-peer-{peer.name}"))
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="health-tick"))
        for warning in self.node.warnings:
            log.warning("health settings node=%s %s", self.node.name, warning)
        log.info("health started node=%s probes=%d targets=%d peers=%d", self.node.name,
                 len(self._plan.probes), len(self._plan.targets) + len(self._plan.regions),
                 len(self.node.peers))

    async def stop(self) -> None:
        """Cancel every task, close sessions and save state."""
        if self.nats is not None:
            await self.nats.stop()
        tasks = [*self._tasks, *self._probe_tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._probe_tasks.clear()
        for s in (self._probe_http, self._peer_http):
            if s is not None:
                await s.close()
        self._probe_http = self._peer_http = None
        if self._started:
            self._save_state()
        self._started = False

    def reconfigure(self, zones: Sequence[Zone]) -> None:
        """Take new zones: keep views of targets whose probe is unchanged."""
        old = self._plan
        self._plan = plan_zones(zones, self.node.name, self.node.members)
        self._own_views.clear()
        now = time.time()
        for target, tp in self._plan.targets.items():
            before = old.targets.get(target)
            if before is not None and before.key != tp.key:
                self._own.pop(target, None)
                if target in self._verdicts:  # a changed check starts from the last verdict
                    v = self._verdicts[target]
                    self._fallback[target] = replace(v, cause=f"before reconfiguration: {v.cause}")
        self._reset_views(now)
        if self._started:
            for key in set(self._probe_tasks) - set(self._plan.probes):
                self._probe_tasks.pop(key).cancel()
            for key in set(self._plan.probes) - set(self._probe_tasks):
                self._start_probe(key)
        self._recompute(publish=self._started)

    def verdicts(self) -> dict[str, Verdict]:
        return dict(self._verdicts)

    def drain(self, target: str, reason: str = "") -> Verdict:
        """Take a region or endpoint out by hand; durable and sent to peers.
        Raises KeyError for a target no zone defines."""
        return self._set_drain(target, True, reason)

    def undrain(self, target: str) -> Verdict:
        """Put a drained target back under the probes' verdict."""
        return self._set_drain(target, False, "")

    def drains(self) -> dict[str, Drain]:
        return {t: d for t, d in self._drains.items() if d.active}

    @property
    def isolated(self) -> bool:
        """True when peers are configured but none has been heard recently."""
        return self._isolated

    def add_routes(self, app: web.Application) -> None:
        _peers.add_routes(app, self)

    def status(self) -> dict[str, Any]:
        now = time.time()

        def verdict(v: Verdict | None) -> dict[str, Any] | None:
            return None if v is None else v.to_json()

        targets = {}
        for target, tp in sorted(self._plan.targets.items()):
            observers = {}
            for ov in self._views_of(target, now):
                observers[ov.observer] = {
                    "state": ov.state.value, "since": ov.since, "detail": ov.detail,
                    "age": round(now - ov.heard, 3),
                    "stale": now - ov.heard > self._stale_after(target),
                }
            c = tp.key.check if tp.key else None
            targets[target] = {
                "region": tp.region,
                "check": None if c is None else {
                    "kind": c.kind, "address": tp.key.address if tp.key else None, "port": c.port,
                    "path": c.path if c.kind in ("http", "https") else None,
                    "interval": c.interval, "fall": c.fall, "rise": c.rise,
                },
                "observed_by": sorted(tp.observers),
                "verdict": verdict(self._verdicts.get(target)),
                "observers": observers,
            }
        regions = {
            name: {
                "verdict": verdict(self._verdicts.get(name)),
                "min_healthy": rp.min_healthy,
                "endpoints": list(rp.endpoints),
                "balancer": rp.balancer,
            }
            for name, rp in sorted(self._plan.regions.items())
        }
        return {
            "node": self.node.name,
            "observer_only": self.node.observer_only,
            "now": now,
            "isolated": self._isolated,
            "peers": {
                p.name: {
                    "url": p.url,
                    "last_heard_ago": None if p.name not in self._peer_seen
                    else round(now - self._peer_seen[p.name], 3),
                    "last_error": self._peer_error.get(p.name),
                }
                for p in self.node.peers
            },
            "exchange": self.nats.status() if self.nats is not None else {"kind": "http"},
            "regions": regions,
            "targets": targets,
            "drains": {t: asdict(d) for t, d in sorted(self._drains.items()) if d.active},
            "verdicts": {t: v.to_json() for t, v in sorted(self._verdicts.items())},
        }

    # ---- peer protocol (used by geodns.health.peers) ----------------------

    def peer_message(self, views: bool = True, want_views: bool = False) -> dict[str, Any]:
        """Our own views (only ours: a node speaks for itself) and the signed
        drains we hold, in the compact form of `geodns.health.peers`.

        Each node pushes its views to every peer once a period; a reply holds
        views only when the push asks for them (`want_views`: a node that has
        not had the peer's own push lately, at start or when the peer cannot
        reach it), so a period moves each node's views once per peer, not twice."""
        now = time.time()
        if not views:
            return {"v": MESSAGE_VERSION, "node": self.node.name, "sent_at": now,
                    "drains": [drain_to_json(d) for d in self._drains.values()]}
        # Views that read the same (state, times to QUANTUM_MS, detail) travel
        # as one group with its targets: in an outage, a region's endpoints
        # all say the same thing, so 10,000 views are a few dozen groups.
        # Times are floored: a view looks a little older and could change a
        # little sooner than it does, never the other way round.
        details: dict[str, int] = {}
        groups: dict[tuple, list[str]] = {}
        q = QUANTUM_MS
        for target, view in self._own.items():
            tp = self._plan.targets.get(target)
            if tp is None or tp.key is None:
                continue
            until = earliest_change(view, _rules(tp.key.check))
            key = (view.state.value, int((view.since - now) * 1000 // q * q), int((until - now) * 1000 // q * q),
                   int((view.at - now) * 1000 // q * q) if view.at else None,
                   details.setdefault(view.detail, len(details)))
            groups.setdefault(key, []).append(target)
        rows = [[*key, targets] for key, targets in groups.items()]
        return {
            "v": MESSAGE_VERSION,
            "node": self.node.name,
            "sent_at": now,
            "want_views": want_views,
            "details": list(details),
            "views": rows,
            "drains": [drain_to_json(d) for d in self._drains.values()],
        }

    def reply_body(self, sender: str, message: Any) -> bytes:
        """The encoded reply to a push we accepted (see `peer_message`)."""
        if isinstance(message, dict) and message.get("want_views") is True:
            return self._peer_body()
        return _peers.encode(self.peer_message(views=False))

    def accept_peer_message(self, sender: str, message: Any, received: float) -> None:
        """Take a verified message from `sender`: its views of the targets it
        observes, and the drains that pass `check_drain`. Raises Rejected."""
        try:
            if not isinstance(message, dict) or message.get("v") != MESSAGE_VERSION:
                raise ValueError(f"not a version {MESSAGE_VERSION} message")
            sent_at, raw_views = message["sent_at"], message.get("views")
            raw_drains, details = message.get("drains", []), message.get("details", [])
            if message.get("node") != sender:
                raise ValueError("node differs from the signer")
            if isinstance(sent_at, bool) or not isinstance(sent_at, int | float) \
                    or not isinstance(raw_views, list | None) or not isinstance(raw_drains, list) \
                    or not isinstance(details, list) or not all(isinstance(d, str) for d in details):
                raise TypeError("wrong types")
        except (KeyError, TypeError, ValueError) as e:
            raise _peers.Rejected("malformed", str(e)) from None
        if not math.isfinite(sent_at) or abs(received - sent_at) > self.node.replay_window:
            raise _peers.Rejected("stale", f"sent_at {received - sent_at:+.1f}s away from now")
        touched: set[str] = set()
        if raw_views is not None:
            touched = self._take_views(sender, raw_views, details, received)
        self._peer_seen[sender] = received
        self._peer_error.pop(sender, None)
        touched |= self.take_drains(sender, raw_drains, received)
        self._schedule_recompute(touched)

    def take_drains(self, sender: str | None, raw_drains: list, received: float) -> set[str]:
        """Take the drains that pass `check_drain` and are newer than ours; count
        the others as `bad_drain` from `sender`. Returns the targets changed
        (their recompute is scheduled)."""
        touched: set[str] = set()
        for raw in raw_drains:
            if isinstance(raw, dict) and isinstance(raw.get("target"), str) and not self._plan.knows(raw["target"]):
                continue  # a drain of a target our zones do not have
            try:
                d = self._check_drain(raw, received)
            except DrainRefused as e:
                self._refused(sender, "bad_drain", str(e))
                continue
            winner = newer_drain(self._drains.get(d.target), d)
            if winner is d and self._drains.get(d.target) != d:
                self._drains[d.target] = d
                touched.add(d.target)
                log.warning("health drain target=%s active=%s by=%s via=%s reason=%s", d.target,
                            str(d.active).lower(), d.by, sender, _kv(d.reason))
        if touched:
            self._message_version += 1
            self._save_drains()
            self._schedule_recompute(touched)
        return touched

    def _take_views(self, sender: str, raw_views: list, details: list[str], received: float) -> set[str]:
        """Replace `sender`'s views with a message's groups; return the targets
        whose view changed (a new `heard` alone does not count: the tick sees
        to staleness). Raises Rejected("malformed"); nothing is taken then."""
        # Times are milliseconds relative to the peer's sent_at, which we take
        # as our `received` (transit time only makes views look a little older).
        targets, old = self._plan.targets, self._peer_views.get(sender, {})
        views: dict[str, ObserverView] = {}
        touched: set[str] = set()
        not_observed = 0
        try:
            for group in raw_views:
                if type(group) is not list or len(group) != 6 or type(group[5]) is not list:
                    raise ValueError("a view group is [state, since, until, at, detail, [targets]]")
                state, since, until, at, detail, names = group
                for t in (since, until) if at is None else (since, until, at):
                    if type(t) is not int or not -MAX_RELATIVE <= t <= MAX_RELATIVE:
                        raise ValueError("times are integer milliseconds within range")
                if type(detail) is not int or not 0 <= detail < len(details):
                    raise ValueError("bad detail index")
                since = received + since / 1000
                view = ObserverView(sender, _STATES[state], since, received + until / 1000,
                                    min(received, received + at / 1000) if at is not None else min(received, since),
                                    details[detail][:300])
                for target in names:
                    tp = targets.get(target) if type(target) is str else None
                    if tp is None:
                        continue  # a target our zones do not have (config rollout in progress)
                    if sender not in tp.observers:
                        not_observed += 1
                        continue
                    views[target] = view
                    # `since` moves with the transit time's jitter from one message
                    # to the next: only a real change is worth a recompute.
                    before = old.get(target)
                    if before is None or before.state is not view.state or abs(before.since - since) > 1.0 \
                            or before.detail != view.detail:
                        touched.add(target)
        except (TypeError, ValueError, KeyError) as e:
            raise _peers.Rejected("malformed", f"bad view: {str(e)[:200]}") from None
        if not_observed:
            self._refused(sender, "not_observer", f"{not_observed} views of targets {sender} does not observe")
        touched.update(t for t in old if t not in views)
        self._peer_views[sender] = views
        self._views_heard[sender] = received
        return touched

    def record_rejection(self, reason: str, claimed: str | None, remote: str | None, detail: str = "") -> None:
        self._refused(claimed, reason, detail, remote)

    def record_bytes(self, sent: int, received: int) -> None:
        self.metrics.peer_bytes.labels(direction="sent").inc(sent)
        self.metrics.peer_bytes.labels(direction="received").inc(received)

    def _refused(self, claimed: str | None, reason: str, detail: str = "", remote: str | None = None) -> None:
        """Count a refusal; log it at most once a minute per claimed peer (names
        not in `peers` share one allowance, so made-up names cannot flood the log)."""
        known = claimed is not None and claimed in self._keys and claimed != self.node.name
        peer = claimed if known else "unknown"
        self.metrics.rejected.labels(reason=reason, peer=peer).inc()
        now = time.monotonic()
        last, quiet = self._refusals.get(peer, (-REFUSAL_LOG_EVERY, 0))
        if now - last < REFUSAL_LOG_EVERY:
            self._refusals[peer] = (last, quiet + 1)
            return
        self._refusals[peer] = (now, 0)
        log.warning("health peer message refused claimed=%s reason=%s remote=%s detail=%s suppressed=%d",
                    _kv((claimed or "-")[:64]), reason, remote or "-", _kv(detail[:200]), quiet)

    def _check_drain(self, raw: Any, now: float) -> Drain:
        """A drain from a peer or the disk, validated and (with keys) its signature checked."""
        key_of = self._keys.get if self.node.private_key is not None else None
        return check_drain(raw, now=now, skew=self.node.replay_window, known=self._plan.knows, key_of=key_of)

    # ---- probes -----------------------------------------------------------

    def _start_probe(self, key: ProbeKey) -> None:
        self._probe_tasks[key] = asyncio.create_task(self._probe_loop(key), name=f"probe-{key.label()}")

    async def _probe_loop(self, key: ProbeKey) -> None:
        check = key.check
        loop = asyncio.get_running_loop()
        # Spread first probes over one interval, so N nodes and many endpoints
        # do not all fire together; after that, each period adds jitter.
        await asyncio.sleep(random.uniform(0, check.interval))
        jitter = max(0.0, min(check.jitter, check.interval / 2))
        while True:
            started = loop.time()
            assert self._sem is not None
            async with self._sem:
                at = time.time()
                result = await probe(check, key.address, self._probe_http, source=self.node.source_address)
            self._on_result(key, at, result)
            delay = started + check.interval + random.uniform(0, jitter) - loop.time()
            await asyncio.sleep(max(0.0, delay))

    def _on_result(self, key: ProbeKey, at: float, result: ProbeResult) -> None:
        rules = _rules(key.check)
        self.metrics.latency.labels(kind=key.check.kind).observe(result.rtt)
        for target in self._plan.probes.get(key, ()):
            self.metrics.probes.labels(target=target, result="ok" if result.ok else "fail").inc()
            before = self._own.get(target) or View(since=at)
            after = observe(before, result.ok, at, result.detail, rules)
            self._own[target] = after
            if after.state is not before.state:
                if self.nats is not None:
                    self.nats.push_now()  # over NATS a change is published at once
                log.info("health view node=%s target=%s state=%s was=%s detail=%s", self.node.name,
                         target, after.state.value, before.state.value, _kv(result.detail))
        self._message_version += 1
        self._schedule_recompute(self._plan.probes.get(key, ()))

    # ---- peer exchange ----------------------------------------------------

    async def _exchange_loop(self, peer: Any) -> None:
        event = self._push_events[peer.name]
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            # One push per exchange_interval from the start of the last one (its
            # round trip is part of the period, not added to it), or at once on news.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(0.0, last + self.node.exchange_interval - loop.time()))
            event.clear()
            last = loop.time()
            await self._exchange_once(peer, max(1.0, self.node.exchange_interval))

    async def _exchange_once(self, peer: Any, timeout: float) -> None:
        assert self._peer_http is not None
        reason = None
        try:
            want = time.time() - self._views_heard.get(peer.name, -math.inf) > 2 * self.node.exchange_interval + 1
            doc, received, sent_bytes, got_bytes = await _peers.push(
                self._peer_http, peer.name, peer.url, self._peer_body(want), self.verifier, timeout=timeout)
            self.record_bytes(sent_bytes, got_bytes)
            self.accept_peer_message(peer.name, doc, received)
            self.metrics.exchanges.labels(peer=peer.name).inc()
        except _peers.Rejected as e:
            reason, text = e.reason, str(e)
        except (aiohttp.ClientError, OSError) as e:
            reason, text = "unreachable", f"{type(e).__name__}: {e}"
        except TimeoutError:
            reason, text = "timeout", "timeout"
        if reason is not None:
            self.metrics.exchange_errors.labels(peer=peer.name, reason=reason).inc()
            if self._peer_error.get(peer.name) != text:
                log.warning("health peer exchange failed peer=%s reason=%s detail=%s",
                            peer.name, reason, _kv(text))
            self._peer_error[peer.name] = text

    def _peer_body(self, want_views: bool = False) -> bytes:
        """Our encoded message, shared by the pushes of one round (all peers'
        loops wake together) instead of being built once per peer."""
        now = time.time()
        key = (self._message_version, want_views)
        cached = self._message_cache.get(want_views)
        if cached is not None and cached[0] == key and 0 <= now - cached[1] < min(0.1, self.node.exchange_interval / 4):
            return cached[2]
        body = _peers.encode(self.peer_message(want_views=want_views))
        self._message_cache[want_views] = (key, now, body)
        return body

    def _push_now(self) -> None:
        for e in self._push_events.values():
            e.set()
        if self.nats is not None:
            self.nats.push_now()

    # ---- verdicts ---------------------------------------------------------

    def _stale_after(self, target: str) -> float:
        tp = self._plan.targets.get(target)
        check = tp.key.check if tp and tp.key else None
        interval, timeout = (check.interval, check.timeout) if check else (5.0, 2.0)
        return self.node.stale_intervals * interval + timeout + 2 * self.node.exchange_interval

    def _views_of(self, target: str, now: float) -> list[ObserverView]:
        out = []
        own = self._own.get(target)
        if own is not None:
            cached = self._own_views.get(target)
            if cached is not None and cached[0] is own:
                out.append(cached[1])
            else:
                tp = self._plan.targets[target]
                if tp.key is not None:
                    ov = ObserverView(
                        observer=self.node.name, state=own.state, since=own.since,
                        until=earliest_change(own, _rules(tp.key.check)),
                        heard=own.at or own.since, detail=own.detail,
                    )
                    self._own_views[target] = (own, ov)
                    out.append(ov)
        for views in self._peer_views.values():
            v = views.get(target)
            if v is not None:
                out.append(v)
        return out

    def _reset_views(self, now: float) -> None:
        for target in [t for t in self._own if t not in self._plan.targets]:
            del self._own[target]
        for targets in self._plan.probes.values():
            for target in targets:
                self._own.setdefault(target, View(since=now))

    def _schedule_recompute(self, targets: Sequence[str] | None = None) -> None:
        """Recompute soon, once for every event of this loop iteration; with
        `targets`, only those and their regions (a probe result touches few)."""
        if targets is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.update(targets)
        if self._recompute_pending:
            return
        self._recompute_pending = True
        try:
            asyncio.get_running_loop().call_soon(self._recompute_dirty)
        except RuntimeError:  # no loop (tests calling directly): do it now
            self._recompute_dirty()

    def _recompute_dirty(self) -> None:
        """Recompute what is dirty, RECOMPUTE_SLICE seconds of it per event-loop
        iteration: a message that changes 10,000 views must not stop the loop
        (DNS, other peers' messages) for the whole recompute; what comes
        meanwhile joins the rest."""
        started = time.perf_counter()
        while True:
            if self._dirty is None:
                self._dirty = set(self._plan.targets) | set(self._plan.regions)
            dirty = self._dirty
            if len(dirty) <= RECOMPUTE_BATCH:
                self._dirty = set()
                self._recompute(only=dirty)
                return
            batch = {dirty.pop() for _ in range(RECOMPUTE_BATCH)}
            self._recompute(only=batch, publish=False)
            if time.perf_counter() - started < RECOMPUTE_SLICE:
                continue
            self._recompute_pending = True
            try:
                asyncio.get_running_loop().call_soon(self._recompute_dirty)
                return
            except RuntimeError:  # no loop (tests calling directly): go on now
                started = time.perf_counter()

    def _recompute(self, publish: bool = True, only: set[str] | None = None) -> None:
        """Verdicts from views; `only`: just these targets and their regions."""
        self._recompute_pending = False
        if only is None:
            self._dirty = set()
        now = time.time()
        stale_peers = 3 * self.node.exchange_interval + 2.0
        isolated = bool(self.node.peers) and not any(
            now - t <= stale_peers for t in self._peer_seen.values())
        if isolated != self._isolated and only is not None:
            # Every cause says whether it rests on this node's view only: all
            # of them are recomputed, in slices like any large change.
            self._dirty = None
            if not self._recompute_pending:
                self._recompute_pending = True
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().call_soon(self._recompute_dirty)
        if isolated != self._isolated and self._started:
            if isolated:
                log.warning("health isolated=true node=%s no peer heard for %.0fs: verdicts use this "
                            "node's own view only", self.node.name, stale_peers)
            else:
                log.warning("health isolated=false node=%s peers heard again", self.node.name)
        self._isolated = isolated
        self.metrics.isolated.set(1 if isolated else 0)
        old = self._verdicts
        plan = self._plan
        if only is None:
            targets = list(plan.targets)
            regions = list(plan.regions)
        else:
            targets = [t for t in only if t in plan.targets]
            regions = list({plan.targets[t].region for t in targets} | {r for r in only if r in plan.regions})
        fallback = self._fallback
        decisions = decide_all(
            {t: TargetViews(self._views_of(t, now) if plan.targets[t].key is not None else None,
                            self._stale_after(t), fallback.get(t)) for t in targets},
            {r: plan.regions[r] for r in regions}, self._drains, now,
            Policy(self.node.name, self.node.quorum, isolated), previous=None if only is None else old,
        )
        for target in decisions.settled:
            fallback.pop(target, None)
        new = decisions.verdicts
        self._verdicts = new
        changed = False
        for target in [*targets, *regions]:
            v = new[target]
            was = old.get(target)
            if was is None or (was.up, was.forced) != (v.up, v.forced):
                changed = True
                self._state_dirty = True
                if was is not None:
                    self.metrics.changes.labels(target=target).inc()
                    self._log_verdict(target, v, was)
                self.metrics.up.labels(target=target).set(1 if v.up else 0)
                self.metrics.forced.labels(target=target).set(1 if v.forced else 0)
        for target in set(old) - set(new):
            changed = True
            with contextlib.suppress(KeyError):
                self.metrics.up.remove(target)
                self.metrics.forced.remove(target)
        if changed and not publish:
            self._publish_pending = True
        if publish and self._started and (changed or self._publish_pending or self._bounds_expired(now)):
            self._publish(now)

    def _log_verdict(self, target: str, v: Verdict, was: Verdict) -> None:
        """One line per verdict change, at most VERDICT_LOG_PER_SECOND a second:
        an outage of 10,000 endpoints is a count, not 10,000 lines."""
        now = time.monotonic()
        if now - self._verdict_log[0] >= 1.0:
            if self._verdict_log[2]:
                log.warning("health verdict changes not logged node=%s count=%d (more than %d a second; "
                            "see geodns status or /v1/health)", self.node.name, self._verdict_log[2],
                            VERDICT_LOG_PER_SECOND)
            self._verdict_log = [now, 0, 0]
        if self._verdict_log[1] >= VERDICT_LOG_PER_SECOND:
            self._verdict_log[2] += 1
            return
        self._verdict_log[1] += 1
        log.warning("health verdict node=%s target=%s up=%s forced=%s was=%s cause=%s",
                    self.node.name, target, str(v.up).lower(), str(v.forced).lower(),
                    "up" if was.up else "down", _kv(v.cause))

    def _bounds_expired(self, now: float) -> bool:
        """A published `until` has passed: the snapshot needs fresher bounds
        (rate-limited, since an overdue probe keeps `until` at now)."""
        if now - self._published_at < max(1.0, self.node.exchange_interval):
            return False
        return any(v.until is not None and v.until <= now for v in self._published.values())

    def _publish(self, now: float) -> None:
        self._publish_pending = False
        self._published = dict(self._verdicts)
        self._published_at = now
        try:
            self.on_change(dict(self._published))
        except Exception:  # a bad callback must not stop health checking
            log.exception("health on_change callback failed")

    def _set_drain(self, target: str, active: bool, reason: str) -> Verdict:
        if not self._plan.knows(target):
            raise KeyError(f"no region or endpoint named {target!r}")
        if len(reason) > MAX_REASON:
            raise ValueError(f"reason longer than {MAX_REASON} characters")
        at = max(time.time(), (self._drains[target].at + 0.001) if target in self._drains else 0.0)
        d = Drain(target, active, reason, at, self.node.name)
        if self.node.private_key is not None:
            d = sign_drain(d, self.node.private_key)
        self._drains[target] = d
        self._message_version += 1
        self._save_drains()
        log.warning("health drain target=%s active=%s by=%s reason=%s", target, str(active).lower(),
                    self.node.name, _kv(reason))
        self._recompute()
        self._push_now()
        return self._verdicts[target]

    async def _tick_loop(self) -> None:
        intervals = [k.check.interval for k in self._plan.probes] or [5.0]
        tick = max(0.05, min(0.5, min(intervals) / 2, self.node.exchange_interval / 2))
        last_save = 0.0
        while True:
            await asyncio.sleep(tick)
            # Only verdicts whose `until` has passed can have changed with the
            # clock alone (a view went stale, a hold-down ended); new views
            # recompute their own targets as they come.
            now = time.time()
            self._recompute(only={t for t, v in self._verdicts.items() if v.until is not None and v.until <= now})
            now = time.monotonic()
            if self._state_dirty and now - last_save >= 1.0:
                last_save = now
                await asyncio.to_thread(self._save_state)

    # ---- disk -------------------------------------------------------------

    def _path(self, name: str) -> str | None:
        return os.path.join(self.node.state_dir, name) if self.node.state_dir else None

    def _load_disk(self) -> None:
        """Saved drains and verdicts; whatever is wrong in them is dropped with a log line."""
        self._drains = self._store.load(self._drain_from_disk)
        path = self._path("state.json")
        doc = read_json_file(path, "saved state") if path else None
        if doc is None:
            return
        saved_at = doc.get("saved_at") if isinstance(doc, dict) else None
        verdicts = doc.get("verdicts") if isinstance(doc, dict) else None
        if isinstance(saved_at, bool) or not isinstance(saved_at, int | float) or not isinstance(verdicts, dict) \
                or not 0 <= saved_at <= time.time() + self.node.replay_window:
            log.error("health saved state ignored path=%s error=\"expected saved_at (a time) and verdicts\"", path)
            return
        saved = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(saved_at))
        for target, raw in verdicts.items():
            try:
                v = Verdict.from_json(raw)  # an older node's state.json has no state: derived there
            except ValueError:
                log.error("health saved verdict dropped path=%s target=%s", path, _kv(target[:80]))
                continue
            self._fallback[target] = Verdict(up=v.up, cause=f"saved state from {saved}: {v.cause[:500]}")
        log.info("health warm start from saved state path=%s saved=%s targets=%d", path, saved,
                 len(self._fallback))

    def _drain_from_disk(self, raw: Any) -> Drain:
        key = self.node.private_key
        if key is not None and isinstance(raw, dict) and raw.get("by") == self.node.name \
                and not raw.get("signature"):
            # Saved by this node before drains were signed: ours, so sign it now.
            d = check_drain(raw, now=time.time(), skew=self.node.replay_window, known=self._plan.knows)
            return sign_drain(d, key)
        return self._check_drain(raw, time.time())

    def _save_drains(self) -> None:
        try:
            self._store.save(self._drains.values())
        except OSError as e:
            log.error("health cannot save drains error=%s", _kv(e))

    def _save_state(self) -> None:
        self._state_dirty = False
        # Only what probes decided: drains have their own file, and "unknown"
        # must not be saved as if it were knowledge.
        verdicts = {
            t: {"up": v.up, "cause": v.cause, "state": v.state.value}
            for t, v in self._verdicts.items()
            if t in self._plan.targets and v.state in DECIDED
        }
        path = self._path("state.json")
        try:
            if path is not None:
                write_json_atomic(path, {"node": self.node.name, "saved_at": time.time(), "verdicts": verdicts})
        except OSError as e:
            log.error("health cannot save state error=%s", _kv(e))
