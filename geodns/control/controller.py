"""The control plane's core: load, validate, build and swap snapshots.

Everything slow lives here: reading zones and tables, reopening the GeoIP
file when it is replaced, reading the admin state file, taking verdicts from
the health service. Its only output to the data plane is a new Snapshot.
A bad reload is refused whole, with its errors logged, and the old snapshot
keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from geodns.config import ConfigError, ConfigInvalid, Zone, load_zones
from geodns.dns.server import SnapshotRef
from geodns.dns.snapshot import Snapshot, build_snapshot
from geodns.geo import GeoDatabase, GeoDatabaseError
from geodns.health import strictjson
from geodns.steer import LatencyTable, LatencyTableError, Verdict, VerdictState, load_latency_table
from geodns.steer.measured import Measured

log = logging.getLogger("geodns.control")


class ReloadFailed(Exception):
    def __init__(self, errors: list[str], details: list[ConfigError] | None = None):
        self.errors = errors
        self.details = details or []
        """The same errors as values (file, line, field, message), where they have them."""
        super().__init__("\n".join(errors))


@dataclass(frozen=True, slots=True)
class Config:
    """A validated configuration: zones and the tables they refer to."""

    zones: tuple[Zone, ...]
    latency_tables: Mapping[str, LatencyTable]


def load_config(zones_path: str | Path, replace: Mapping[Path, str | None] | None = None) -> Config:
    """Load zones and their latency tables, validated whole. Raises ReloadFailed with file:line errors.

    `replace`: validate with these files' texts instead of the disk's (`load_zones`)."""
    try:
        zones = load_zones(zones_path, replace)
    except ConfigInvalid as exc:
        raise ReloadFailed([str(e) for e in exc.errors], exc.errors) from None
    tables: dict[str, LatencyTable] = {}
    errors: list[ConfigError] = []
    for zone in zones:
        for node in zone.nodes.values():
            uses_latency = node.steered and any(s.kind == "latency" for s in node.steered.chain)
            if uses_latency and not zone.latency_table:
                errors.append(ConfigError(zone.source, node.line, "records", "a latency step needs the zone's latency_table"))
        if zone.latency_table:
            try:
                tables[zone.origin] = load_latency_table(zone.latency_table, set(zone.regions))
            except LatencyTableError as exc:
                errors.append(ConfigError(zone.source, 0, "latency_table", str(exc)))
    if errors:
        raise ReloadFailed([_latency_line(e) for e in errors], errors)
    return Config(tuple(zones), tables)


def _latency_line(error: ConfigError) -> str:
    # A latency table's own errors already say file:line of the table.
    return error.message if error.field == "latency_table" else str(error)


def load_admin_state(path: str | None, *, strict: bool = True) -> dict[str, Verdict]:
    """Verdicts forced by the operator: `{"drains": {target: reason}, "down": [target, ...]}` (JSON).

    A bad entry is dropped with a log line. A file that cannot be read at all
    raises ReloadFailed (a reload keeps the previous state) unless `strict` is
    false (at start: the node starts without it, and says so)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        doc = strictjson.loads(Path(path).read_bytes() or b"{}")
        if not isinstance(doc, dict) or set(doc) - {"drains", "down", "up"}:
            raise ValueError("expected an object with keys drains, down, up")
    except (OSError, ValueError, RecursionError) as exc:
        if strict:
            raise ReloadFailed([f"{path}:0: cannot read admin state: {exc}"]) from None
        log.error("admin state ignored path=%s error=%s", path, exc)
        return {}

    def entries(key: str) -> list[str]:
        value = doc.get(key) or []
        if not isinstance(value, list):
            log.error("admin state %s dropped path=%s: expected a list of targets", key, path)
            return []
        good = [t for t in value if isinstance(t, str) and t]
        if len(good) != len(value):
            log.error("admin state %s: %d entries that are not target names dropped path=%s", key, len(value) - len(good), path)
        return good

    verdicts: dict[str, Verdict] = {}
    for target in entries("down"):
        verdicts[target] = Verdict(up=False, forced=True, state=VerdictState.FORCED, cause="marked down in the admin state file")
    drains = doc.get("drains") or {}
    if not isinstance(drains, dict):
        log.error("admin state drains dropped path=%s: expected {target: reason}", path)
        drains = {}
    for target, reason in drains.items():
        if not isinstance(reason, str) or len(reason) > 500:
            log.error("admin state drain dropped path=%s target=%r: reason must be a string of at most 500 characters", path, target[:80])
            continue
        verdicts[target] = Verdict(up=False, forced=True, state=VerdictState.DRAINED, cause=f"drained: {reason}")
    for target in entries("up"):
        verdicts[target] = Verdict(up=True, forced=True, state=VerdictState.FORCED, cause="forced up in the admin state file")
    return verdicts


@dataclass
class Controller:
    zones_path: str
    geoip_path: str | None
    state_path: str | None = None
    cache_size: int = 200_000
    config: Config | None = None
    geo: GeoDatabase | None = None
    admin_verdicts: dict[str, Verdict] = field(default_factory=dict)
    health_verdicts: dict[str, Verdict] = field(default_factory=dict)
    utilisation: dict[str, float] = field(default_factory=dict)
    capacity_notes: dict[str, str] = field(default_factory=dict)
    measured: Measured | None = None
    """Measured RTTs, ranked (`geodns.control.latency_probe`); the `latency` step reads them first."""
    """Region -> what its balancer's latest load report said (the capacity poller's, for the status page)."""
    generation: int = 0
    ref: SnapshotRef | None = None
    reload_failures: int = 0
    last_reload_error: list[str] = field(default_factory=list)
    subscribers: list[Callable[[Snapshot], None]] = field(default_factory=list)
    reload_hooks: list[Callable[[Config], None]] = field(default_factory=list)
    """Called with each newly accepted configuration (e.g. the health service re-plans its probes)."""
    _state_mtime: float | None = None
    _refused_geo: object = None

    def start(self) -> Snapshot:
        """First load: any error here is fatal (there is nothing to keep serving)."""
        self.config = load_config(self.zones_path)
        self.geo = self._open_geo()
        self.admin_verdicts = load_admin_state(self.state_path, strict=False)
        self._state_mtime = _mtime(self.state_path)
        snapshot = self._build()
        self.ref = SnapshotRef(snapshot)
        return snapshot

    def _open_geo(self) -> GeoDatabase | None:
        if not self.geoip_path:
            return None
        try:
            return GeoDatabase(self.geoip_path)
        except GeoDatabaseError as exc:
            raise ReloadFailed([str(exc)]) from None

    @property
    def snapshot(self) -> Snapshot:
        return self.ref.snapshot

    def verdicts(self) -> dict[str, Verdict]:
        merged = dict(self.health_verdicts)
        merged.update(self.admin_verdicts)  # the operator wins over probes
        return merged

    def _build(self) -> Snapshot:
        self.generation += 1
        return build_snapshot(
            self.generation,
            list(self.config.zones),
            self.geo,
            self.verdicts(),
            self.config.latency_tables,
            self.utilisation,
            self.cache_size,
            previous=self.ref.snapshot if self.ref is not None else None,
            measured=self.measured,
        )

    def publish(self) -> Snapshot:
        snapshot = self._build()
        self.ref.snapshot = snapshot
        for subscriber in list(self.subscribers):
            try:
                subscriber(snapshot)
            except Exception:  # noqa: BLE001 - a subscriber must not stop the control plane
                log.exception("snapshot subscriber failed")
        return snapshot

    def reload(self) -> Snapshot:
        """Re-read zones, tables, the GeoIP file and the admin state; swap atomically or raise ReloadFailed."""
        started = time.monotonic()
        try:
            config = load_config(self.zones_path)
            geo = self._open_geo() if self.geoip_path else None
            admin = load_admin_state(self.state_path)
        except ReloadFailed as exc:
            self.reload_failures += 1
            self.last_reload_error = exc.errors
            for line in exc.errors:
                log.error("reload refused: %s", line)
            log.error("reload refused: %d error(s); still serving generation %d", len(exc.errors), self.generation)
            raise
        self.config, self.admin_verdicts = config, admin
        if geo is not None:
            self.geo = geo
        self.last_reload_error = []
        for hook in list(self.reload_hooks):
            try:
                hook(config)
            except Exception:  # noqa: BLE001 - a hook must not undo an accepted reload
                log.exception("reload hook failed")
        snapshot = self.publish()
        log.info(
            "reloaded generation=%d zones=%d names=%d took_ms=%.1f",
            snapshot.generation,
            len(config.zones),
            sum(len(z.nodes) for z in config.zones),
            1000 * (time.monotonic() - started),
        )
        return snapshot

    def set_health_verdicts(self, verdicts: Mapping[str, Verdict]) -> None:
        if dict(verdicts) != self.health_verdicts:
            self.health_verdicts = dict(verdicts)
            self.publish()

    def set_utilisation(self, utilisation: Mapping[str, float]) -> None:
        if dict(utilisation) != self.utilisation:
            self.utilisation = dict(utilisation)
            self.publish()

    def set_measured(self, measured: Measured | None) -> None:
        if measured != self.measured:
            self.measured = measured
            self.publish()

    def check_files(self) -> None:
        """Pick up a replaced GeoIP file and a changed admin state file."""
        current = self._replaced_geo()
        if current is not None:
            self._take_geo(current, _open_geo_file(self.geoip_path))
        self._check_state_file()

    def _check_state_file(self) -> None:
        mtime = _mtime(self.state_path)
        if mtime != self._state_mtime:
            self._state_mtime = mtime
            try:
                admin = load_admin_state(self.state_path)
            except ReloadFailed as exc:
                log.error("admin state refused: %s", exc)
                return
            if admin != self.admin_verdicts:
                self.admin_verdicts = admin
                snapshot = self.publish()
                log.info("admin state changed targets=%s generation=%d", sorted(admin), snapshot.generation)

    def _replaced_geo(self):
        """The identity of a replaced GeoIP file to open, or None (unchanged, or refused already)."""
        if self.geo is not None and self.geo.changed():
            current = _file_identity(self.geoip_path)
            if current is not None and current != self._refused_geo:
                return current
        return None

    def _take_geo(self, current, opened: GeoDatabase | GeoDatabaseError) -> None:
        if isinstance(opened, GeoDatabaseError):
            # Remember the bad file so that we do not retry it every second; the reader
            # keeps its own identity, which workers compare against.
            self._refused_geo = current
            log.error("geoip file replaced but unreadable, keeping the old one: %s", opened)
        else:
            self.geo = opened
            snapshot = self.publish()
            log.info("geoip reopened path=%s build_epoch=%d generation=%d", opened.path, opened.build_epoch, snapshot.generation)

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                current = self._replaced_geo()
                if current is not None:
                    # Copying and checking a new file takes up to a second (the full city
                    # file): in a thread, so that answers served by this loop do not pause.
                    self._take_geo(current, await asyncio.to_thread(_open_geo_file, self.geoip_path))
                self._check_state_file()
            except Exception:  # noqa: BLE001 - keep watching whatever happens
                log.exception("file watch failed")


def _open_geo_file(path: str) -> GeoDatabase | GeoDatabaseError:
    try:
        return GeoDatabase(path)
    except GeoDatabaseError as exc:
        return exc


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def _file_identity(path: str | None):
    from geodns.geo.database import FileIdentity

    try:
        return FileIdentity.of(path) if path else None
    except OSError:
        return None
