"""`geodns balance`: command-line entry (registered by geodns.cli, or `python -m geodns.balance`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from geodns.balance import config as config_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="balancer YAML file (see deploy/balance/)")
    parser.add_argument("--check", action="store_true", help="validate the file and exit")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")


async def _serve(config: config_mod.BalancerConfig, path: str) -> int:
    from geodns.balance.server import Balancer

    balancer = Balancer(config, path)
    await balancer.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(balancer.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await balancer.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the balancer until SIGTERM/SIGINT; SIGHUP reloads the file. Returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"geodns balance: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok ({len(config.pools)} pools, {len(config.routes)} routes)")
        return 0
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run(_serve(config, args.config))
    try:
        return asyncio.run(_serve(config, args.config))
    except OSError as exc:
        print(f"geodns balance: {exc}", file=sys.stderr)
        return 1
