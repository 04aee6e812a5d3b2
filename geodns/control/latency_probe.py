"""Latency measurement on a node: who asks, how far they are, and what the peers measured.

```yaml
# in the node settings file (`geodns serve --node FILE`), beside `node:`, `peers:` ...
region: eu-west                 # the region this node stands in (a region name of the zones)
latency_probe:                  # optional; measurement is on when `region` is set
  enabled: true                 # false: no probes, no samples, no exchange (the table decides)
  rate: 20                      # active probes per second, at most (the node's total)
  jitter: 0.5                   # each gap between probes is 1/rate ± this share of it
  top: 10000                    # networks measured: the N that query this node most, plus its peers'
  interval: 300                 # seconds: no network is probed more often than this
  timeout: 2                    # seconds to wait for a probe's answer
  max_backoff: 86400            # a network that never answers is probed at most this seldom
  expiry: 3600                  # seconds: a measurement older than this is dropped
  half_life: 600                # seconds: how fast query counts fade
  hysteresis: [10%, 5ms]        # a region must be faster by more than this to take a network over
  exchange_interval: 10         # seconds between pushes of this node's measurements to each peer
  passive: true                 # also take the kernel's RTT of DNS-over-TCP connections
  port: 53                      # where probes go (another port is for labs and tests)
  source_address: 10.0.0.53     # probes' source (default: the node's source_address)
  peer_regions: {nyc1: us-east} # optional: refuse a peer's measurements for any other region
```

What it does (docs/health.md, "Latency measurement"):

- counts the resolvers that query this node by network (IPv4 /24, IPv6 /48), from the
  data plane's bounded tallies (`geodns.dns.sources`), keeping the top N with decay;
- probes them at a bounded rate: a UDP DNS query (`<zone> SOA`, RD=0, so no resolver
  recurses for it) to the address last seen in the network; any answer, REFUSED
  included, is a sample; no answer backs the network off (interval × 2^failures);
- smooths the samples per network (`geodns.health.rtt`) with those of TCP connections;
- pushes its own region's measurements to every peer (`POST /v1/peer/latency`, signed
  like the health exchange, kind `latency`), which answers with its own (push-pull); a
  node's rows are taken only when signed by it, and stand for one region only;
- ranks the regions of every network from its own and its peers' rows, with
  hysteresis, and hands the ranking to the controller (a new snapshot) when a leader
  changes, or every `publish_every` seconds when only the figures moved;
- saves everything to `state_dir/latency.json` and reads it back at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import random
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from geodns.config import error_text
from geodns.dns.sources import SOURCES, SOURCES_ENV
from geodns.fsutil import write_json_atomic
from geodns.health import peers as _peers
from geodns.health import strictjson
from geodns.health.rtt import (
    Estimate,
    Estimates,
    Hysteresis,
    ProbeSchedule,
    TopNetworks,
    best_per_region,
    rank_rows,
)
from geodns.health.settings import NodeSettingsError, read_node_file
from geodns.steer.measured import V6_FLAG, Measured, Ranking, key_of, network_key, network_text

log = logging.getLogger("geodns.latency")

PUSH_PATH = "/v1/peer/latency"
KEYS = ("region", "latency_probe")
"""The node settings keys read here (`load_node_settings` accepts them as extra keys)."""
STATE_FILE = "latency.json"
PUBLISH_EVERY = 30.0
"""Seconds between new rankings when only the figures moved, not the order."""
MAX_ROWS = 100_000
"""Rows a peer message may carry (a peer's `top` is its own business, but not unbounded)."""


class LatencySettingsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class LatencySettings:
    region: str
    enabled: bool = True
    rate: float = 20.0
    jitter: float = 0.5
    top: int = 10_000
    interval: float = 300.0
    timeout: float = 2.0
    max_backoff: float = 86_400.0
    expiry: float = 3600.0
    half_life: float = 600.0
    hysteresis: Hysteresis = Hysteresis()
    exchange_interval: float = 10.0
    passive: bool = True
    port: int = 53
    source_address: str | None = None
    peer_regions: Mapping[str, str] = field(default_factory=dict)


_NUMBERS = {
    # key: (low, high, integer)
    "rate": (0.01, 10_000.0, False),
    "jitter": (0.0, 1.0, False),
    "top": (1, 1_000_000, True),
    "interval": (0.05, 86_400.0, False),
    "timeout": (0.01, 60.0, False),
    "max_backoff": (0.05, 30 * 86_400.0, False),
    "expiry": (1.0, 30 * 86_400.0, False),
    "half_life": (1.0, 30 * 86_400.0, False),
    "exchange_interval": (0.05, 3600.0, False),
    "port": (1, 65535, True),
}


def settings_from_mapping(data: Mapping[str, Any], source: str, peers: set[str]) -> LatencySettings | None:
    """`region:` and `latency_probe:` of a node settings file as read (`read_node_file`); None
    when no region is set (nothing measured). Raises LatencySettingsError (`file:line: field:
    message`; a plain mapping gives no lines)."""

    def fail(key: str, message: str) -> LatencySettingsError:
        return LatencySettingsError(error_text(source, data, key, message))

    region = data.get("region")
    raw = data.get("latency_probe")
    if region is None:
        if raw is not None:
            raise fail("latency_probe", "needs `region:` (the region this node stands in)")
        return None
    if not isinstance(region, str) or not region or len(region) > 64:
        raise fail("region", f"expected a region name, got {region!r}")
    if raw is None:
        raw = {}
    if raw is False:
        raw = {"enabled": False}
    if not isinstance(raw, dict):
        raise fail("latency_probe", "expected a mapping (enabled, rate, top, interval, ...)")
    known = {*_NUMBERS, "enabled", "hysteresis", "passive", "source_address", "peer_regions"}
    for key in raw:
        if key not in known:
            raise fail(f"latency_probe.{key}", f"unknown setting (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, (lo, hi, integer) in _NUMBERS.items():
        if key not in raw:
            continue
        value = raw[key]
        ok = not isinstance(value, bool) and (isinstance(value, int) if integer else isinstance(value, int | float))
        if not ok or not math.isfinite(value) or not lo <= value <= hi:
            raise fail(f"latency_probe.{key}", f"expected {'an integer' if integer else 'a number'} from {lo} to {hi}, got {value!r}")
        values[key] = value if integer else float(value)
    for key in ("enabled", "passive"):
        if key in raw:
            if not isinstance(raw[key], bool):
                raise fail(f"latency_probe.{key}", f"expected true or false, got {raw[key]!r}")
            values[key] = raw[key]
    if "hysteresis" in raw:
        try:
            values["hysteresis"] = Hysteresis.parse(raw["hysteresis"])
        except ValueError as exc:
            raise fail("latency_probe.hysteresis", str(exc)) from None
    if raw.get("source_address") is not None:
        try:
            values["source_address"] = str(ipaddress.ip_address(raw["source_address"]))
        except ValueError:
            raise fail("latency_probe.source_address", f"not an IP address: {raw['source_address']!r}") from None
    pins = raw.get("peer_regions") or {}
    if not isinstance(pins, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in pins.items()):
        raise fail("latency_probe.peer_regions", "expected {peer name: region name}")
    strangers = sorted(set(pins) - peers)
    if strangers:
        raise fail("latency_probe.peer_regions", f"{strangers[0]!r} is not one of this node's peers")
    values["peer_regions"] = dict(pins)
    settings = LatencySettings(region=region, **values)
    if settings.timeout > settings.interval:
        raise fail("latency_probe.timeout", "must not be longer than interval")
    return settings


def load_settings(node_file: str, peers: set[str], source_address: str | None = None, data: Any = None) -> LatencySettings | None:
    """The node's latency settings; `data`: the settings file as read already (`read_node_file`),
    `source_address`: the node's own, the default for the probes'."""
    if data is None:
        try:
            data = read_node_file(node_file)
        except NodeSettingsError as exc:
            raise LatencySettingsError(str(exc)) from None
    if not isinstance(data, dict):
        return None
    settings = settings_from_mapping(data, node_file, peers)
    if settings is not None and settings.source_address is None and source_address:
        settings = replace(settings, source_address=source_address)
    return settings


# ---- wire: the probe --------------------------------------------------------------------------


def probe_query(qid: int, qname: str) -> bytes:
    """A DNS query for `qname` SOA with RD clear (a resolver answers it from cache or refuses)."""
    labels = [label for label in qname.rstrip(".").split(".") if label]
    name = b"".join(bytes([len(lab)]) + lab.encode("ascii") for lab in labels) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + name + struct.pack("!HH", 6, 1)


def is_reply_to(data: bytes, qid: int) -> bool:
    """Any DNS response with our ID (REFUSED and SERVFAIL included: the resolver answered)."""
    return len(data) >= 12 and struct.unpack_from("!H", data)[0] == qid and data[2] & 0x80 != 0


class _ProbeProtocol(asyncio.DatagramProtocol):
    def __init__(self, qid: int, done: asyncio.Future) -> None:
        self.qid = qid
        self.done = done

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if is_reply_to(data, self.qid) and not self.done.done():
            self.done.set_result(time.monotonic())

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: no resolver there
        if not self.done.done():
            self.done.set_exception(exc)


# ---- the service ------------------------------------------------------------------------------


@dataclass
class _PeerRows:
    region: str
    rows: dict[int, Estimate]
    addresses: dict[int, int]
    received: float


def _address(value: int, key: int) -> str:
    """An address (integer) of a network key's family, as text."""
    if key & V6_FLAG:
        return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))


def _parse_address(text: Any) -> tuple[int, int]:
    """(network key, address as an integer) of an address in text. Raises ValueError."""
    if not isinstance(text, str) or len(text) > 45:
        raise ValueError("expected an IP address")
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        return network_key(4, value), value
    except OSError:
        pass
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        raise ValueError(f"{text[:45]!r} is not an IP address") from None
    if value >> 32 == 0xFFFF:
        raise ValueError("an IPv4-mapped address: give the IPv4 address")
    return network_key(6, value), value


def _number(value: Any, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= high:
        raise ValueError(f"rtt and age must be numbers from 0 to {high:g}")
    return float(value)


FULL_EVERY = 60.0
"""Seconds between expiry passes; each starts a sweep that re-ranks every network over the next
ticks, SWEEP_SLICE at a time. Between them only networks whose figures changed are ranked."""
SWEEP_SLICE = 500
ACCEPT_SLICE = 2000
"""Rows of a peer message checked between two turns of the event loop."""


class LatencyService:
    def __init__(self, settings: LatencySettings, name: str, set_measured: Any, verifier: _peers.Verifier | None = None,
                 peers: Mapping[str, str] | None = None, state_dir: str | None = None,
                 qname: Any = lambda: ".") -> None:
        self.settings = settings
        self.name = name
        self.set_measured = set_measured
        self.verifier = verifier
        self.peers = dict(peers or {})
        """Peer name -> admin URL."""
        self.state_path = os.path.join(state_dir, STATE_FILE) if state_dir else None
        self.qname = qname
        """Callable: the name probes ask for (the first zone served)."""
        now = time.time()
        self.top = TopNetworks(settings.top, settings.half_life, now)
        self.schedule = ProbeSchedule(settings.interval, settings.max_backoff)
        self.own = Estimates(settings.top, settings.expiry)
        self.peer_rows: dict[str, _PeerRows] = {}
        self.measured: Measured | None = None
        self.published_at = 0.0
        self.counters: dict[str, int] = {"answered": 0, "unanswered": 0, "passive": 0}
        self.refused: dict[str, int] = {}
        self.probe_times: list[float] = []
        """Monotonic send times of the latest probes (at most 1000)."""
        self._changed: set[int] = set()
        """Networks whose figures changed since the last ranking."""
        self._full_at = 0.0
        self._sweep: list[int] = []
        self._pending: dict[int, Ranking] | None = None
        """A ranking whose figures moved but no leader did: published within PUBLISH_EVERY."""
        self._targets_dirty = True
        self._body: tuple[float, bytes] | None = None
        self._tasks: list[asyncio.Task] = []
        self._in_flight: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None
        self._dirty = False

    # ---- inputs ----------------------------------------------------------------------------

    def take_sources(self, now: float) -> None:
        counts, rtts = SOURCES.take()
        for packed, n in counts.items():
            address = _normal(packed)
            if address is not None:
                key = key_of(address)
                if key not in self.top:
                    self._targets_dirty = True
                self.top.add(key, int(address), float(n), now)
        if self.settings.passive:
            for packed, rtt in rtts.items():
                address = _normal(packed)
                if address is not None and 0 < rtt < 60_000:
                    self.sample(key_of(address), int(address), rtt, now)
                    self.counters["passive"] += 1

    def probe_targets(self) -> dict[int, int]:
        """Network -> the address to probe: the top N that ask this node, then the peers' networks."""
        targets: dict[int, int] = {}
        for key in self.top.top():
            targets[key] = self.top.address(key)
        limit = self.settings.top * (1 + len(self.peer_rows))
        for peer in self.peer_rows.values():
            for key, address in peer.addresses.items():
                if len(targets) >= limit:
                    break
                targets.setdefault(key, address)
        return targets

    def _regions_of(self, key: int, now: float) -> dict[str, Estimate]:
        expiry = self.settings.expiry
        out: dict[str, Estimate] = {}
        sources = [(self.settings.region, self.own.rows)] + [(p.region, p.rows) for p in self.peer_rows.values()]
        for region, rows in sources:
            e = rows.get(key)
            if e is not None and now - e.at <= expiry:
                have = out.get(region)
                if have is None or e.rtt < have.rtt:
                    out[region] = e
        return out

    def recompute(self, now: float, full: bool = False) -> None:
        """Rank the networks whose figures changed (every FULL_EVERY seconds, drop expired rows and
        start a sweep over all; `full`: all at once, at load), and hand the ranking on when a
        leader moved (or, every PUBLISH_EVERY seconds, when only figures did: answers are the
        same, explanations older)."""
        published = self.measured.rows if self.measured is not None else {}
        base = self._pending if self._pending is not None else published
        if not full and now - self._full_at >= FULL_EVERY and self.measured is not None:
            # Expiry, and a sweep that re-ranks every network over the next minute, a slice
            # per tick: a full pass at 10,000 networks would hold the loop for ~250 ms.
            self._full_at = now
            self._changed.update(self._expire(now))
            self._sweep = list(published)
        if self._sweep:
            self._changed.update(self._sweep[-SWEEP_SLICE:])
            del self._sweep[-SWEEP_SLICE:]
        if full or self.measured is None and now - self._full_at >= FULL_EVERY:
            self._full_at = now
            self._expire(now)
            rows = [(self.settings.region, self.own.rows)] + [(p.region, p.rows) for p in self.peer_rows.values()]
            ranked = rank_rows(best_per_region(rows, now, self.settings.expiry), published, self.settings.hysteresis)
            self._changed.clear()
            checked: Any = ranked
        elif self._changed:
            subset = {key: self._regions_of(key, now) for key in self._changed}
            self._changed.clear()
            fresh = rank_rows(subset, published, self.settings.hysteresis)
            ranked = dict(base)
            for key in subset:
                if key in fresh:
                    ranked[key] = fresh[key]
                else:
                    ranked.pop(key, None)
            checked = fresh
        else:
            ranked, checked = base, {}
        if not ranked and self.measured is None:
            return  # nothing measured yet, nothing published
        moved = _moved(published, checked)
        if moved or len(ranked) != len(published) or (checked is ranked and ranked.keys() != published.keys()):
            if moved:
                log.info("latency ranking changed networks=%d leaders_moved=%d e.g. %s", len(ranked), len(moved), "; ".join(moved[:3]))
            self._publish(ranked, now)
        elif ranked is not published:
            if any(published.get(k) != v for k, v in checked.items()):
                self._pending = ranked
            if self._pending is not None and now - self.published_at >= PUBLISH_EVERY:
                self._publish(self._pending, now)

    def _expire(self, now: float) -> set[int]:
        """Drop rows older than `expiry` (this node's and its peers'); the networks they were for."""
        gone = set(self.own.rows)
        self.own.expire(now)
        gone -= set(self.own.rows)
        for name, peer in list(self.peer_rows.items()):
            fresh = {k: e for k, e in peer.rows.items() if now - e.at <= self.settings.expiry}
            if len(fresh) != len(peer.rows):
                gone.update(k for k in peer.rows if k not in fresh)
                peer.rows = fresh
                peer.addresses = {k: a for k, a in peer.addresses.items() if k in fresh}
            if not peer.rows:
                del self.peer_rows[name]
        return gone

    def _publish(self, rows: dict[int, Ranking], now: float) -> None:
        self.measured = Measured(rows, self.settings.hysteresis.describe())
        self._pending = None
        self.published_at = now
        self.set_measured(self.measured if rows else None)

    # ---- probing ---------------------------------------------------------------------------

    def sample(self, key: int, address: int, rtt_ms: float, at: float) -> None:
        self.own.sample(key, address, rtt_ms, at)
        self._changed.add(key)
        self._dirty = True

    async def _probe(self, key: int, address: int) -> None:
        loop = asyncio.get_running_loop()
        host = _address(address, key)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        source = self.settings.source_address
        local = (source, 0) if source and (":" in source) == (family == socket.AF_INET6) else None
        qid = random.randrange(65536)
        done: asyncio.Future = loop.create_future()
        sent_wall = time.time()
        started = time.monotonic()
        transport = None
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _ProbeProtocol(qid, done), local_addr=local, remote_addr=(host, self.settings.port), family=family)
            started = time.monotonic()
            transport.sendto(probe_query(qid, self.qname()))
            answered = await asyncio.wait_for(done, self.settings.timeout)
        except (TimeoutError, OSError, ValueError, UnicodeError):
            self.schedule.unanswered(key, started)
            self.counters["unanswered"] += 1
            return
        finally:
            if transport is not None:
                transport.close()
        self.schedule.answered(key, started)
        self.counters["answered"] += 1
        self.sample(key, address, (answered - started) * 1000.0, sent_wall)

    async def _probe_loop(self) -> None:
        rate, jitter = self.settings.rate, self.settings.jitter
        max_in_flight = max(1, int(rate * self.settings.timeout) + 1)
        while True:
            gap = 1.0 / rate
            await asyncio.sleep(gap * (1.0 + jitter * (2.0 * random.random() - 1.0)))
            if len(self._in_flight) >= max_in_flight:
                continue
            now = time.monotonic()
            key = self.schedule.next_due(now)
            if key is None:
                continue
            address = self._address_of(key)
            if address is None:
                continue
            self.probe_times.append(now)
            if len(self.probe_times) > 1000:
                del self.probe_times[:500]
            task = asyncio.create_task(self._probe(key, address))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _address_of(self, key: int) -> int | None:
        address = self.top.address(key)
        if address is None:
            address = self.own.addresses.get(key)
        if address is None:
            for peer in self.peer_rows.values():
                address = peer.addresses.get(key)
                if address is not None:
                    break
        return address

    async def _tick_loop(self, every: float) -> None:
        last_save = last_sync = time.monotonic()
        while True:
            await asyncio.sleep(every)
            try:
                now = time.time()
                self.take_sources(now)
                mono = time.monotonic()
                if self._targets_dirty or mono - last_sync >= 10.0:
                    self._targets_dirty = False
                    last_sync = mono
                    self.schedule.sync(self.probe_targets(), mono)
                self.recompute(now)
                if self._dirty and mono - last_save >= 30.0:
                    last_save = mono
                    self.save()
            except Exception:  # noqa: BLE001 - keep measuring whatever happens
                log.exception("latency tick failed")

    # ---- exchange --------------------------------------------------------------------------

    def message(self, now: float) -> dict[str, Any]:
        rows = [
            [_address(self.own.addresses[key], key), round(e.rtt, 2), round(max(0.0, now - e.at), 1)]
            for key, e in self.own.fresh(now).items()
            if key in self.own.addresses
        ]
        return {"v": 1, "node": self.name, "region": self.settings.region, "rows": rows}

    def body(self) -> bytes:
        """This node's message, encoded; made at most twice per exchange interval (it is the same
        for every peer: the signature, not the body, names the recipient)."""
        now = time.time()
        if self._body is None or now - self._body[0] > self.settings.exchange_interval / 2:
            self._body = (now, _peers.encode(self.message(now)))
        return self._body[1]

    def accept(self, sender: str, message: Any, received: float) -> None:
        """A peer's measurements, checked whole; raises Rejected('malformed') and keeps nothing."""
        region, raw = self._check_message(sender, message)
        rows: dict[int, Estimate] = {}
        addresses: dict[int, int] = {}
        self._parse_rows(raw, received, rows, addresses)
        self._take(sender, region, rows, addresses, received)

    async def accept_async(self, sender: str, message: Any, received: float) -> None:
        """`accept`, giving the event loop a turn every ACCEPT_SLICE rows (10,000 rows take ~75 ms)."""
        region, raw = self._check_message(sender, message)
        rows: dict[int, Estimate] = {}
        addresses: dict[int, int] = {}
        for start in range(0, len(raw), ACCEPT_SLICE):
            self._parse_rows(raw[start : start + ACCEPT_SLICE], received, rows, addresses)
            await asyncio.sleep(0)
        self._take(sender, region, rows, addresses, received)

    def _check_message(self, sender: str, message: Any) -> tuple[str, list]:
        if not isinstance(message, dict) or message.get("v") != 1:
            raise _peers.Rejected("malformed", "expected {v: 1, node, region, rows}")
        if message.get("node") != sender:
            raise _peers.Rejected("malformed", "node must be the signer")
        region = message.get("region")
        if not isinstance(region, str) or not region or len(region) > 64:
            raise _peers.Rejected("malformed", "region must be a region name")
        pinned = self.settings.peer_regions.get(sender)
        if pinned is not None and region != pinned:
            raise _peers.Rejected("wrong_region", f"{sender} speaks for {pinned}, not {region[:64]!r}")
        raw = message.get("rows")
        if not isinstance(raw, list) or len(raw) > MAX_ROWS:
            raise _peers.Rejected("malformed", f"rows must be a list of at most {MAX_ROWS}")
        return region, raw

    def _parse_rows(self, raw: list, received: float, rows: dict[int, Estimate], addresses: dict[int, int]) -> None:
        expiry = self.settings.expiry
        for row in raw:
            try:
                if not isinstance(row, list) or len(row) != 3:
                    raise ValueError("expected [address, rtt_ms, age_s]")
                key, address = _parse_address(row[0])
                rtt, age = _number(row[1], 60_000.0), _number(row[2], 366 * 86_400.0)
            except ValueError as exc:
                raise _peers.Rejected("malformed", f"row {str(row)[:80]}: {exc}") from None
            if age <= expiry:
                rows[key] = Estimate(rtt, received - age)
                addresses[key] = address

    def _take(self, sender: str, region: str, rows: dict[int, Estimate], addresses: dict[int, int], received: float) -> None:
        if len(rows) > self.settings.top:  # keep the freshest `top`
            keep = sorted(rows, key=lambda k: -rows[k].at)[: self.settings.top]
            rows = {k: rows[k] for k in keep}
            addresses = {k: addresses[k] for k in keep}
        old = self.peer_rows.get(sender)
        if old is None or old.region != region:
            changed = set(rows) | (set(old.rows) if old else set())
        else:
            was = old.rows
            changed = {k for k, e in rows.items() if k not in was or was[k].rtt != e.rtt}
            changed.update(k for k in was if k not in rows)
        if old is None or set(addresses) - set(old.addresses):
            self._targets_dirty = True
        self._changed |= changed
        self.peer_rows[sender] = _PeerRows(region, rows, addresses, received)
        self._dirty = True

    async def receive(self, request: web.Request) -> web.Response:
        now = time.time()
        try:
            body = await _peers._read_limited(request.content, request.content_length)
            if self.verifier is None:
                raise _peers.Rejected("no_key")
            sender = self.verifier.verify("latency", request.headers, body, now)
            message = _peers.decode(body)
            if self.settings.enabled:  # off: answer (with no rows), keep nothing
                await self.accept_async(sender, message, now)
        except _peers.Rejected as exc:
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            log.warning("latency rows refused claimed=%s reason=%s remote=%s",
                        (request.headers.get(_peers.NODE_HEADER) or "")[:64], exc, request.remote)
            return web.json_response({"error": exc.reason}, status=exc.status)
        reply = self.body()
        headers = self.verifier.sign("latency-reply", sender, reply, nonce=request.headers[_peers.NONCE_HEADER])
        return web.Response(body=reply, headers={**headers, "Content-Type": _peers.CONTENT_TYPE})

    async def _push(self, peer: str, url: str) -> None:
        body = self.body()
        headers = self.verifier.sign("latency", peer, body)
        async with self._session.post(url + PUSH_PATH, data=body, headers={**headers, "Content-Type": _peers.CONTENT_TYPE}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            reply = await _peers._read_limited(resp.content, resp.content_length)
            received = time.time()
            self.verifier.verify("latency-reply", resp.headers, reply, received, sender=peer, nonce=headers[_peers.NONCE_HEADER])
        await self.accept_async(peer, _peers.decode(reply), received)

    async def _exchange_loop(self) -> None:
        failing: set[str] = set()
        while True:
            async def one(peer: str, url: str) -> None:
                try:
                    await self._push(peer, url)
                except (aiohttp.ClientError, TimeoutError, OSError, RuntimeError, _peers.Rejected) as exc:
                    if peer not in failing:
                        log.warning("latency exchange failed peer=%s error=%s", peer, exc or type(exc).__name__)
                    failing.add(peer)
                else:
                    if peer in failing:
                        log.info("latency exchange works again peer=%s", peer)
                    failing.discard(peer)

            if self.verifier is not None and self.verifier.key is not None:
                await asyncio.gather(*(one(p, u) for p, u in self.peers.items()))
            await asyncio.sleep(self.settings.exchange_interval)

    # ---- state -----------------------------------------------------------------------------

    def save(self) -> None:
        if not self.state_path:
            return
        now = time.time()
        doc = {
            "v": 1, "node": self.name, "region": self.settings.region, "saved_at": now,
            "own": self.message(now)["rows"],
            "peers": {
                name: {"region": p.region, "rows": [
                    [_address(p.addresses[k], k), round(e.rtt, 2), round(max(0.0, now - e.at), 1)]
                    for k, e in p.rows.items() if k in p.addresses]}
                for name, p in self.peer_rows.items()
            },
        }
        try:
            write_json_atomic(self.state_path, doc)
            self._dirty = False
        except (OSError, ValueError) as exc:  # ValueError: a non-finite figure (never written)
            log.error("latency state not saved path=%s error=%s", self.state_path, exc)

    def load(self) -> None:
        """Measurements saved before a restart, still fresh; a bad file is logged and ignored."""
        if not self.state_path or not os.path.exists(self.state_path):
            return
        try:
            with open(self.state_path, "rb") as f:
                doc = strictjson.loads(f.read())
            if not isinstance(doc, dict) or doc.get("v") != 1:
                raise ValueError("not a latency state file")
            now = time.time()
            saved_at = float(doc.get("saved_at", now))
            shift = max(0.0, now - saved_at)  # ages grew while the node was down
            self.accept_own(doc.get("own") or [], now, shift)
            for name, peer in (doc.get("peers") or {}).items():
                if name in self.peers and isinstance(peer, dict):
                    rows = [[a, r, age + shift] for a, r, age in peer.get("rows") or []]
                    with contextlib.suppress(_peers.Rejected):
                        self.accept(name, {"v": 1, "node": name, "region": peer.get("region"), "rows": rows}, now)
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            log.error("latency state ignored path=%s error=%s", self.state_path, exc)
            return
        self.measured = None
        self.recompute(time.time())
        log.info("latency state loaded own=%d peers=%d ranked=%d", len(self.own.rows), len(self.peer_rows), len(self.measured.rows) if self.measured else 0)

    def accept_own(self, rows: list, now: float, shift: float) -> None:
        for row in rows:
            key, address = _parse_address(row[0])
            rtt, age = _number(row[1], 60_000.0), _number(row[2], 366 * 86_400.0) + shift
            if age <= self.settings.expiry:
                self.own.rows[key] = Estimate(rtt, now - age)
                self.own.addresses[key] = address
                self.top.add(key, address, 1.0, now)

    # ---- life ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "region": self.settings.region,
            "enabled": self.settings.enabled,
            "networks_seen": len(self.top),
            "measured_here": len(self.own.rows),
            "peers": {n: {"region": p.region, "rows": len(p.rows), "age": round(now - p.received, 1)} for n, p in sorted(self.peer_rows.items())},
            "ranked": len(self.measured.rows) if self.measured else 0,
            "probes": dict(self.counters),
            "refused": dict(self.refused),
        }

    async def start(self, tick: float = 1.0) -> None:
        if not self.settings.enabled:
            log.info("latency measurement off (latency_probe.enabled: false): the latency step reads the table only")
            return
        SOURCES.enabled = True  # `prepare` did, for the workers; a service started alone (tests) too
        self.load()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=max(2.0, min(10.0, 2 * self.settings.exchange_interval))))
        tick = min(tick, self.settings.interval, self.settings.exchange_interval)
        self._tasks = [
            asyncio.create_task(self._tick_loop(tick), name="latency-tick"),
            asyncio.create_task(self._probe_loop(), name="latency-probe"),
        ]
        if self.peers:
            self._tasks.append(asyncio.create_task(self._exchange_loop(), name="latency-exchange"))
        s = self.settings
        log.info("latency measurement on region=%s rate=%g/s top=%d interval=%gs port=%d source=%s peers=%d",
                 s.region, s.rate, s.top, s.interval, s.port, s.source_address or "any", len(self.peers))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._in_flight]:
            task.cancel()
        for task in [*self._tasks, *self._in_flight]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
        if self.settings.enabled:
            self.save()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PUSH_PATH, self.receive)


def _normal(packed: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(packed)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _moved(before: Mapping[int, Ranking], after: Mapping[int, Ranking]) -> list[str]:
    """Networks whose leader changed (or that are new), for the log."""
    out = []
    for key, ranking in after.items():
        was = before.get(key)
        if was is None or was[0][0] != ranking[0][0]:
            out.append(f"{network_text(key)} {was[0][0] if was else '-'}->{ranking[0][0]} ({ranking[0][1]:.1f} ms)")
    return out


class LatencyCollector(Collector):
    def __init__(self, service: LatencyService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        s = self.service
        probes = CounterMetricFamily("geodns_latency_probes", "Latency probes sent by this node, by result.", labels=["result"])
        for result in ("answered", "unanswered"):
            probes.add_metric([result], s.counters[result])
        yield probes
        passive = CounterMetricFamily("geodns_latency_passive_samples", "RTT samples taken from DNS-over-TCP connections.")
        passive.add_metric([], s.counters["passive"])
        yield passive
        g = GaugeMetricFamily("geodns_latency_networks", "Resolver networks: seen querying, measured here, ranked.", labels=["set"])
        g.add_metric(["seen"], len(s.top))
        g.add_metric(["measured_here"], len(s.own.rows))
        g.add_metric(["ranked"], len(s.measured.rows) if s.measured else 0)
        yield g


def prepare(settings: LatencySettings | None) -> LatencySettings | None:
    """Before the data plane starts, with the node's latency settings (None: no `region`):
    when measurement is on, the DNS transports (and the workers, by environment) tally who asks."""
    if settings is not None and settings.enabled:
        SOURCES.enabled = True
        os.environ[SOURCES_ENV] = "1"
    return settings


def attach(app: web.Application | None, health: Any, settings: LatencySettings | None, controller: Any) -> LatencyService | None:
    """Latency measurement on a serving node, with the health service's identity and peers
    (`settings` from `prepare`); None when the node sets no `region`."""
    if settings is None:
        return None
    node = health.node
    nats = getattr(health, "nats", None)
    # Over NATS the bucket carries the rows to every node at once (and a peer may have no url).
    peers = {} if nats is not None else {p.name: p.url.rstrip("/") for p in node.peers if p.url}

    def qname() -> str:
        zones = controller.config.zones if controller.config else ()
        return zones[0].origin if zones else "."

    service = LatencyService(settings, node.name, controller.set_measured, health.verifier, peers, node.state_dir, qname)
    if nats is not None and settings.enabled:
        nats.share_latency(service.body, service.accept, settings.exchange_interval)
    if app is not None:
        service.add_routes(app)
        from geodns.control.admin import REGISTRY_KEY

        app[REGISTRY_KEY].register(LatencyCollector(service))
    return service
