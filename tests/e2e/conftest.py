"""End-to-end helpers: real processes (geodns serve, knotd, unbound, chromium) on 127.0.6.x.

A missing tool skips the test with the reason, except in CI (`CI=true`),
where it fails: CI must install what these tests need.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import pytest
from dnsclient import ask
from netutil import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
GEOIP = ROOT / "data" / "geoip-bundle.mmdb"
NET = "127.0.6"
"""This suite's own loopback /24."""
TOKEN = "e2e-token-0123456789"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or next((p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{tool}", os.X_OK)), None)
    if path is None:
        unavailable(f"{tool} is not installed (Debian package {package})")
    return path




def copy_zones(dest: Path, glue: tuple[str, str] = (f"{NET}.53", f"{NET}.54")) -> Path:
    """The example zones, with the latency table beside them and our glue addresses."""
    zones = dest / "zones"
    zones.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "data" / "latency.yaml", dest / "latency.yaml")
    for src in (ROOT / "zones").glob("*.yaml"):
        text = src.read_text().replace("../data/latency.yaml", "../latency.yaml")
        text = text.replace("glue: [127.0.0.53]", f"glue: [{glue[0]}]").replace("glue: [127.0.0.54]", f"glue: [{glue[1]}]")
        (zones / src.name).write_text(text)
    return zones


KNOT_SERVER = """\
server:
    rundir: "{dir}"
    pidfile: "{dir}/knot.pid"
    listen: {host}@{port}
log:
  - target: stderr
    any: info
"""
"""The head of every knotd configuration the tests write (`.format(dir=, host=, port=)`)."""


@dataclass
class Proc:
    """A process we started; stopped by its pid only."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.popen, timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def spawn(name: str, argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> Proc:
    log = tmp / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp, env=env)
    handle.close()
    return Proc(name, popen, log)


@dataclass
class GeoNode:
    proc: Proc
    host: str
    port: int
    admin_port: int
    zones: Path
    state: Path

    @property
    def admin(self) -> str:
        return f"{self.host}:{self.admin_port}"


def start_geodns(tmp: Path, host: str, port: int, zones: Path, name: str = "geodns", workers: int = 1, extra: list[str] | None = None) -> GeoNode:
    admin_port = free_port(host)
    state = tmp / f"{name}-state.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("GEODNS_ADMIN_TOKEN", None)
    argv = [
        sys.executable, "-m", "geodns", "serve",
        "--zones", str(zones), "--geoip", str(GEOIP),
        "--listen", f"{host}:{port}", "--admin", f"{host}:{admin_port}", "--admin-token", TOKEN,
        "--state", str(state), "--workers", str(workers), *(extra or []),
    ]
    node = GeoNode(spawn(name, argv, tmp, env), host, port, admin_port, zones, state)
    try:
        wait_dns(host, port, "www.gslb.example.test", timeout=20, proc=node.proc)
        wait_http(f"http://{node.admin}/v1/status", timeout=10)
    except BaseException:
        node.proc.stop()
        raise
    return node


def wait_dns(host: str, port: int, name: str, timeout: float, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()}")
        with contextlib.suppress(OSError, dns.exception.DNSException):
            ask((host, port), name, "A", rd=True, timeout=0.3)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no DNS answer from {host}:{port} within {timeout}s" + (f":\n{proc.output()}" if proc else ""))
        time.sleep(0.1)


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            with opener.open(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def http_json(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; all stopped at the end, by pid."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            p.stop()
