"""Real `nats-server` processes with JetStream on loopback, for the NATS exchange tests.

`nats_servers(tmp, host, n)` writes one config per server (a cluster of n
routed servers when n > 1), starts them, waits for each to listen, and stops
them on exit. A server can be stopped and started again mid-test.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netutil import free_port, stop_process, wait_port

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)

needs_nats = pytest.mark.skipif(NATS_SERVER is None, reason="nats-server not installed (Debian package nats-server)")


@dataclass
class NatsServer:
    name: str
    host: str
    port: int
    cluster_port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> None:
        log = (self.dir / "server.log").open("a")
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.dir / "server.conf")], stdout=log,
                                     stderr=subprocess.STDOUT)
        wait_port(self.host, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


def _wait_jetstream(url: str, within: float = 20.0) -> None:
    """A routed cluster serves JetStream once it has elected its meta leader."""
    import asyncio

    import nats

    async def ready() -> bool:
        nc = await nats.connect(url, connect_timeout=2)
        try:
            await nc.jetstream(timeout=1).account_info()
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False
        finally:
            await nc.close()

    from concurrent.futures import ThreadPoolExecutor

    deadline = time.monotonic() + within
    # (its own loop in a thread: the caller may be inside a running loop)
    with ThreadPoolExecutor(1) as pool:
        while not pool.submit(asyncio.run, ready()).result():
            assert time.monotonic() < deadline, f"JetStream not ready at {url}"
            time.sleep(0.2)


@contextlib.contextmanager
def nats_servers(tmp: Path, host: str, n: int = 1) -> Iterator[list[NatsServer]]:
    servers = []
    for i in range(n):
        d = tmp / f"nats{i + 1}"
        d.mkdir(parents=True)
        servers.append(NatsServer(f"s{i + 1}", host, free_port(host), free_port(host), d))
    for s in servers:
        conf = [f"server_name: {s.name}", f"listen: {s.host}:{s.port}",
                f'jetstream {{ store_dir: "{s.dir / "js"}", max_memory_store: 64MB, max_file_store: 256MB }}']
        if n > 1:
            routes = ", ".join(f"nats-route://{o.host}:{o.cluster_port}" for o in servers if o is not s)
            conf.append(f"cluster {{ name: geodns-test, listen: {s.host}:{s.cluster_port}, routes: [{routes}] }}")
        (s.dir / "server.conf").write_text("\n".join(conf) + "\n")
    try:
        for s in servers:
            s.start()
        if n > 1:
            _wait_jetstream(servers[0].url)
        yield servers
    finally:
        for s in servers:
            s.stop()
