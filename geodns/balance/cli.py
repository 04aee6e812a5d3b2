"""`geodns balance`: command-line entry (registered by geodns.cli, or `python -m geodns.balance`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from geodns.balance import config as config_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="balancer YAML file (see deploy/balance/)")
    parser.add_argument("--check", action="store_true", help="validate the file and exit")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    parser.add_argument(
        "--workers", "-w", type=int, default=0, metavar="N",
        help="proxy processes sharing the listen addresses (SO_REUSEPORT); 0 (default): one per CPU",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # INDEX:FD, set by the parent for its workers


async def _serve(config: config_mod.BalancerConfig, path: str) -> int:
    from geodns.balance.server import Balancer

    return await _run_until_stopped(Balancer(config, path))


async def _supervise(config: config_mod.BalancerConfig, path: str, count: int, argv: list[str]) -> int:
    from geodns.balance.workers import Supervisor

    return await _run_until_stopped(Supervisor(config, path, count, argv))


async def _run_until_stopped(service) -> int:
    """Start a balancer (one process) or a supervisor (workers); SIGHUP reloads, TERM/INT stop it."""
    await service.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[object]] = set()

    def on_hup() -> None:
        task = loop.create_task(service.reload())
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
        await service.stop()
    return 0


def _uvloop():  # noqa: ANN202 (the uvloop module, when it can be imported)
    """uvloop when it imports (about 20% less CPU per proxied request than asyncio's own
    loop, bench/RESULTS-http.md); else None, and asyncio's loop serves, with one log line."""
    try:
        import uvloop
    except ImportError as exc:
        logging.getLogger("geodns.balance").warning("event=no_uvloop detail=%r loop=asyncio", str(exc))
        return None
    return uvloop


def run(args: argparse.Namespace) -> int:
    """Run the balancer until SIGTERM/SIGINT; SIGHUP reloads the file. Returns the exit code."""
    worker = getattr(args, "worker", None)
    prefix = f"worker={worker.split(':')[0]} " if worker else ""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format=f"%(asctime)s %(levelname)s %(name)s {prefix}%(message)s",
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
    if worker:
        from geodns.balance.workers import serve_worker

        index, fd = (int(x) for x in worker.split(":"))
        main = serve_worker(config, args.config, fd, index)
    else:
        from geodns.balance.workers import default_workers

        count = args.workers or default_workers()
        if count == 1:
            main = _serve(config, args.config)
        else:
            argv = ["--log-level", args.log_level, *(["--no-uvloop"] if args.no_uvloop else [])]
            main = _supervise(config, args.config, count, argv)
    loop = None if args.no_uvloop else _uvloop()
    try:
        if loop is not None:
            return loop.run(main)
        return asyncio.run(main)
    except (OSError, RuntimeError) as exc:
        print(f"geodns balance: {exc}", file=sys.stderr)
        return 1
