"""`geodns agent`: a checker-only node.

It probes the zones' endpoints from one more vantage point and pushes its
views to its peers, without serving DNS. With `listen:` in its node file it
also serves the peer routes (so peers' pushes get its views back at once and
`GET /v1/health` shows what it sees, to a peer's signed request or to the
bearer token in $GEODNS_ADMIN_TOKEN).

    geodns agent --node agent.yaml --zones zones/
    python -m geodns.health.agent --node agent.yaml --zones zones/
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from geodns.config.model import Zone
from geodns.health.peers import ADMIN_TOKEN
from geodns.health.service import HealthService
from geodns.health.settings import NodeSettings, NodeSettingsError, load_node_settings
from geodns.serverlog import ServerLog

__all__ = ["add_arguments", "run", "main", "serve_agent"]

log = logging.getLogger("geodns.health")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", required=True, metavar="FILE",
                        help="node settings YAML (name, private_key_file, peers, state_dir, listen)")
    parser.add_argument("--zones", required=True, metavar="PATH",
                        help="zone file or directory of *.yaml whose regions to check")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_agent(settings: NodeSettings, zones: Sequence[Zone], stop: asyncio.Event) -> None:
    """Run the agent until `stop` is set (the testable core of `run`)."""
    service = HealthService(settings, zones)
    runner = None
    if settings.listen:
        app = web.Application()
        token = os.environ.get("GEODNS_ADMIN_TOKEN")
        if token:
            app[ADMIN_TOKEN] = token
        service.add_routes(app)
        runner = web.AppRunner(app, logger=ServerLog(log))
        await runner.setup()
        host, port = _split_listen(settings.listen)
        await web.TCPSite(runner, host, port).start()
        log.info("agent listening node=%s listen=%s", settings.name, settings.listen)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
        if runner is not None:
            await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load_node_settings(args.node)
    except NodeSettingsError as e:
        print(f"geodns agent: {e}", file=sys.stderr)
        return 2
    from geodns.config import ConfigInvalid, load_zones

    try:
        zones = load_zones(args.zones)
    except ConfigInvalid as e:
        for err in e.errors:
            print(f"geodns agent: {err}", file=sys.stderr)
        return 2
    if not settings.observer_only:
        log.info("agent node=%s runs checker-only whatever observer_only says", settings.name)

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve_agent(settings, zones, stop)

    asyncio.run(main_loop())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geodns agent", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
