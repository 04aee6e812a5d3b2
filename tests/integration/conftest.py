"""Start the real `geodns serve` as a subprocess on 127.0.2.x and talk to it over sockets.

Each server gets its own loopback address (127.0.2.10, .11, ...) and a free
port on it, so servers of different modules never collide. Servers are
module-scoped where the tests only read from them; tests that reload or
replace files start their own.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netutil import free_port

REPO = Path(__file__).resolve().parents[2]
ZONES = REPO / "zones"
BUNDLED_GEOIP = REPO / "data" / "geoip-bundle.mmdb"
NET = "127.0.2"
"""This suite's own loopback /24, away from the other suites' addresses."""

_hosts = itertools.count(10)


def next_host() -> str:
    """A loopback address no other server of this test run uses."""
    return f"{NET}.{next(_hosts) % 250 + 2}"




def zone_head(origin: str, ttl: int) -> str:
    """The first lines of a small test zone: its name, TTL, SOA and one name server."""
    return (
        f"zone: {origin}\nttl: {ttl}\n"
        "soa: {mname: ns1, rname: hostmaster, serial: 1, refresh: 3600, retry: 600, expire: 604800, minimum: 60}\n"
        "nameservers:\n  - {name: ns1, glue: [127.0.0.53]}\n"
    )


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@functools.cache
def serve_flags() -> str:
    """`geodns serve --help`, to see which optional flags this build has."""
    out = subprocess.run(
        [sys.executable, "-m", "geodns", "serve", "--help"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("GEODNS_ZONES", None)
    env.pop("GEODNS_GEOIP", None)
    return env


def workers_args() -> list[str]:
    """`--workers N` from GEODNS_TEST_WORKERS, when this build knows the flag."""
    workers = os.environ.get("GEODNS_TEST_WORKERS")
    if workers and "--workers" in serve_flags():
        return ["--workers", workers]
    return []


def probe_query(qid: int = 0x5EED) -> bytes:
    """A root NS query: any response (REFUSED included) means the server answers."""
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01"


@dataclass
class Server:
    host: str
    port: int
    process: subprocess.Popen
    log: Path
    zones: Path
    geoip: Path | None
    hosts: list[tuple[str, int]] = field(default_factory=list)
    """Every (host, port) it listens on; the first is (host, port)."""

    def __iter__(self):  # so that `host, port, process = server` works
        return iter((self.host, self.port, self.process))

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the process we started, by its pid (SIGTERM, then SIGKILL to its own group)."""
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Workers (if any) are in the group we created with start_new_session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def wait_answering(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for host, port in server.hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        while True:
            if not server.alive():
                raise RuntimeError(
                    f"geodns serve exited with {server.process.returncode}:\n{server.log_text()}"
                )
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"geodns serve did not answer on {host}:{port}:\n{server.log_text()}"
                )
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.settimeout(0.2)
                    s.sendto(probe_query(), (host, port))
                    data = s.recv(4096)
                if data[:2] != probe_query()[:2]:
                    continue
                with socket.create_connection((host, port), timeout=1):
                    pass
                break
            except OSError:
                time.sleep(0.1)


def start_server(
    tmp: Path,
    zones: Path = ZONES,
    geoip: Path | None = BUNDLED_GEOIP,
    *,
    ipv6: bool = False,
    extra: Sequence[str] = (),
    workers: bool = True,
) -> Server:
    """Start `python -m geodns serve` and return once it answers over UDP and TCP."""
    host = next_host()
    port = free_port(host)
    listens = [(host, port)]
    if ipv6 and ipv6_loopback():
        listens.append(("::1", free_port("::1")))
    args = [sys.executable, "-m", "geodns", "serve", "--zones", str(zones)]
    args += ["--geoip", str(geoip) if geoip is not None else "none", "--admin", "none"]
    for h, p in listens:
        args += ["--listen", f"[{h}]:{p}" if ":" in h else f"{h}:{p}"]
    if workers:
        args += workers_args()
    args += list(extra)
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"geodns-{host}-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(host, port, proc, log, Path(zones), geoip, listens)
    try:
        wait_answering(server)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running(tmp: Path, **kwargs) -> Iterator[Server]:
    server = start_server(tmp, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def example_server(tmp_path_factory) -> Iterator[Server]:
    """The example zone and the bundled GeoIP default, on 127.0.2.x (and [::1] when there is one)."""
    with running(tmp_path_factory.mktemp("example"), ipv6=True) as server:
        yield server
        assert server.alive(), f"the server died during the module:\n{server.log_text()}"


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory):
    """Start servers with other zones or GeoIP files; all stopped at the end of the module."""
    started: list[Server] = []

    def make(**kwargs) -> Server:
        server = start_server(tmp_path_factory.mktemp("server"), **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
