"""`geodns serve`: one node, control plane and data plane in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from geodns.control.controller import Controller, ReloadFailed
from geodns.dns.server import Listen, start_listeners

log = logging.getLogger("geodns.serve")


async def serve(controller: Controller, listens: list[Listen], query_log: bool = False, ready=None) -> int:
    loop = asyncio.get_running_loop()
    try:
        snapshot = controller.start()
    except ReloadFailed as exc:
        for line in exc.errors:
            log.error("%s", line)
        log.error("not starting: the configuration has %d error(s)", len(exc.errors))
        return 2
    try:
        closers = await start_listeners(controller.ref, listens, log_queries=query_log)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    stop = asyncio.Event()

    def on_hup() -> None:
        with contextlib.suppress(ReloadFailed):
            controller.reload()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    watcher = asyncio.create_task(controller.watch())
    geo = controller.geo
    log.info(
        "serving listen=%s zones=%s generation=%d geoip=%s",
        ",".join(str(x) for x in listens),
        ",".join(snapshot.zones),
        snapshot.generation,
        f"{geo.path} ({geo.database_type})" if geo else "none",
    )
    if ready is not None:
        ready()
    await stop.wait()
    log.info("stopping")
    watcher.cancel()
    for close in closers:
        close()
    return 0


def run(controller: Controller, listens: list[Listen], query_log: bool = False) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return asyncio.run(serve(controller, listens, query_log))
    return uvloop.run(serve(controller, listens, query_log))
