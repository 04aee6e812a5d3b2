"""`geodns serve`: one node — control plane, admin API, health checking and the DNS data plane.

The control plane (this event loop) loads and validates the configuration,
runs the health service and the admin API, and publishes snapshots; the data
plane answers from the current snapshot, in this process or in worker
processes that share the port (SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geodns.control.admin import make_admin_app, start_admin
from geodns.control.controller import Controller, ReloadFailed
from geodns.dns import cookies
from geodns.dns.claim import AddressInUse, claim
from geodns.dns.explain import QueryLog
from geodns.dns.rrl import Limiter, RRLSettings, RRLSettingsError, settings_from_mapping
from geodns.dns.server import Listen, cookie_trusted, start_listeners
from geodns.dns.stats import Stats
from geodns.dns.workers import WorkerPool

if TYPE_CHECKING:
    from geodns.control.node_file import NodeFile

log = logging.getLogger("geodns.serve")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    listens: tuple[Listen, ...]
    admin: Listen | None = None
    admin_token: str | None = None
    admin_hosts: tuple[str, ...] = ()
    """Names the admin port answers to besides its addresses and localhost (`--admin-host`)."""
    node_file: str | None = None
    workers: int = 1
    query_log: QueryLog | None = None
    """`--query-log` (with its sample rate), or None: the transports and workers get it."""
    rrl: RRLSettings = RRLSettings()
    """Response rate limiting from the command line (off unless --rrl-rate is given)."""
    rrl_flags: tuple[str, ...] = ()
    """The settings given as flags: they win over the node settings file's `rrl:`."""
    cookie_secret_file: str | None = None


async def serve(controller: Controller, options: ServeOptions, ready: Callable[[], None] | None = None) -> int:
    loop = asyncio.get_running_loop()
    # Signal handlers first: a TERM that arrives while zones and the GeoIP file load must
    # still stop the node once it is up, not be lost in between.
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # And HUP: its default action ends the process. The workers answer before the rest of
    # the node is up, so a reload asked for in between (a deploy tool that writes the zones
    # and signals at once) stopped the node; now it is remembered and done once up.
    hup_while_starting: list[bool] = []
    loop.add_signal_handler(signal.SIGHUP, lambda: hup_while_starting.append(True))
    node = None
    if options.node_file:  # refused whole before anything is claimed, logged or set
        from geodns.control import node_file

        try:
            node = node_file.read(options.node_file)
        except node_file.NodeSettingsError as exc:
            log.error("not starting: %s", exc)
            return 2
    try:
        claimed = claim(options.listens)  # before anything binds: one node per address
    except AddressInUse as exc:
        log.error("not starting: %s", exc)
        return 1
    try:
        return await _serve(controller, options, node, ready, stop, hup_while_starting)
    finally:
        for lock in claimed:
            lock.close()


async def _serve(
    controller: Controller,
    options: ServeOptions,
    node: NodeFile | None,
    ready: Callable[[], None] | None,
    stop: asyncio.Event,
    hup_while_starting: list[bool],
) -> int:
    loop = asyncio.get_running_loop()
    if not _set_cookie_secrets(options, node):
        return 2
    try:
        snapshot = controller.start()
    except ReloadFailed as exc:
        for line in exc.errors:
            log.error("%s", line)
        log.error("not starting: the configuration has %d error(s)", len(exc.errors))
        return 2

    health = None
    latency_settings = None
    if node is not None:
        from geodns.control import latency_probe
        from geodns.health.service import HealthService

        health = HealthService(node.health, list(controller.config.zones), controller.set_health_verdicts)
        # Before the data plane starts: it tallies who asks when measurement is on.
        latency_settings = latency_probe.prepare(node.latency)
        # Warm start: verdicts from saved state before the first query is answered.
        controller.set_health_verdicts(health.verdicts())
        controller.reload_hooks.append(lambda config: health.reconfigure(list(config.zones)))

    try:
        rrl = rrl_settings(options, node)
    except RRLSettingsError as exc:
        log.error("%s", exc)
        return 2

    workers = None
    stats_source = None
    closers: list[Callable[[], None]] = []
    try:
        if options.workers != 1:
            workers = WorkerPool(controller, list(options.listens), options.workers, options.query_log, rrl)
            await workers.start()
            stats_source = workers.stats
        else:
            stats = Stats()
            limiter = Limiter(rrl, trusted=cookie_trusted) if rrl.enabled else None
            closers = await start_listeners(
                controller.ref, list(options.listens), query_log=options.query_log, stats=stats, rrl=limiter
            )
            stats_source = stats.export
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1

    admin_runner = None
    sync = None
    app = None
    if options.admin is not None:
        app = make_admin_app(controller, options.admin_token, stats=stats_source, health=health, hosts=options.admin_hosts)
        if health is not None:
            health.add_routes(app)
            from geodns.control import zone_sync

            sync = zone_sync.attach(app, health, node.zone_sync)
    latency = None
    if health is not None:
        latency = latency_probe.attach(app, health, latency_settings, controller)
    if app is not None:
        try:
            admin_runner = await start_admin(app, options.admin.host, options.admin.port)
        except OSError as exc:
            log.error("cannot listen for the admin API on %s: %s", options.admin, exc)
            return 1
    if health is not None:
        await health.start()
    if sync is not None:
        await sync.start()
    if latency is not None:
        await latency.start()

    def on_hup() -> None:
        with contextlib.suppress(ReloadFailed):
            controller.reload()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if hup_while_starting:
        on_hup()
    watcher = asyncio.create_task(controller.watch())
    from geodns.control.capacity import CapacityPoller, capacity_sources

    poller = CapacityPoller(lambda: capacity_sources(controller.config.zones), controller.set_utilisation)
    controller.capacity_notes = poller.notes
    capacity_task = asyncio.create_task(poller.run())
    geo = controller.geo
    log.info(
        "serving listen=%s admin=%s workers=%s zones=%s generation=%d geoip=%s health=%s rrl=%s",
        ",".join(str(x) for x in options.listens),
        options.admin if admin_runner else "off",
        options.workers if workers else 1,
        ",".join(snapshot.zones),
        snapshot.generation,
        f"{geo.path} ({geo.database_type})" if geo else "none",
        "on" if health else "off (verdicts from the admin state file)",
        rrl.describe(),
    )
    if ready is not None:
        ready()
    await stop.wait()
    log.info("stopping")
    watcher.cancel()
    capacity_task.cancel()
    if sync is not None:
        await sync.stop()
    if latency is not None:
        await latency.stop()
    if health is not None:
        await health.stop()
    if admin_runner is not None:
        await admin_runner.cleanup()
    if workers is not None:
        await workers.stop()
    for close in closers:
        close()
    return 0


def rrl_settings(options: ServeOptions, node: NodeFile | None = None) -> RRLSettings:
    """Rate limiting as configured: the node settings file's `rrl:` mapping, if any, with the
    `--rrl-*` flags given on the command line over it. Raises RRLSettingsError."""
    base = node.rrl if node is not None else None
    if base is None:
        return options.rrl
    flags = {name: getattr(options.rrl, name) for name in options.rrl_flags}
    return settings_from_mapping(flags, base, source="--rrl flags") if flags else base


def _set_cookie_secrets(options: ServeOptions, node: NodeFile | None) -> bool:
    """The DNS cookie secret for this node (the workers get the parent's); False if it is wrong."""
    from geodns.control.cookie_settings import either
    from geodns.health.settings import NodeSettingsError

    try:
        keys = either(node.cookies if node else None, options.node_file, options.cookie_secret_file)
    except NodeSettingsError as exc:
        log.error("not starting: %s", exc)
        return False
    if keys is None:
        cookies.configure(cookies.CookieSecrets.random())
        log.info(
            "cookie secret: random, made at start: other nodes will not accept this node's DNS cookies "
            "(set cookie_secret in the node settings to share one)"
        )
    else:
        cookies.configure(keys)
        log.info("cookie secret: from %s previous=%s", keys.origin, "yes" if keys.previous else "no")
    return True


def run(controller: Controller, options: ServeOptions) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return asyncio.run(serve(controller, options))
    return uvloop.run(serve(controller, options))
