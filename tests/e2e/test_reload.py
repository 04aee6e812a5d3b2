"""Reload without dropping a query: SIGHUP and `geodns reload`, good and bad, under steady load.

Two clients (UDP and TCP) query without pause while the zones and the GeoIP
file change under a running `geodns serve`. Every query must be answered,
and correctly; a bad configuration must be refused with file:line in the log
while the previous one keeps serving.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.rcode
import pytest
from dnsclient import addresses, ask, fqdn

from tests.e2e.conftest import (
    GEOIP,
    NET,
    ROOT,
    TOKEN,
    Proc,
    copy_zones,
    free_port,
    http_json,
    start_geodns,
)

pytestmark = pytest.mark.slow

HOST = f"{NET}.30"


class Load:
    """Queries in a loop until stopped; counts every one that was lost or wrong."""

    def __init__(self, host: str, port: int, tcp: bool) -> None:
        self.host, self.port, self.tcp = host, port, tcp
        self.sent = self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            try:
                r = ask((self.host, self.port), fqdn("www"), "A", ecs="81.2.69.160/24",
                        over="tcp" if self.tcp else "udp", timeout=2)
            except Exception as exc:  # noqa: BLE001 - every way to fail is counted
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            found = addresses(r)
            if r.rcode() != dns.rcode.NOERROR or found != ["192.0.2.30"]:
                self.failures.append(f"{dns.rcode.to_text(r.rcode())} {found}")
            else:
                self.ok += 1


def generation(admin: str) -> int:
    return http_json(f"http://{admin}/v1/status")[1]["generation"]


def wait_generation(admin: str, above: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (g := generation(admin)) <= above:
        assert time.monotonic() < deadline, f"generation stayed at {g}"
        time.sleep(0.05)
    return g


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEODNS_ADMIN_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "geodns", *args], capture_output=True, text=True, timeout=30, env=env)


def test_reloads_lose_no_query(tmp_path: Path, procs: list[Proc]) -> None:
    zones = copy_zones(tmp_path)
    geoip = tmp_path / "geoip.mmdb"
    shutil.copy(GEOIP, geoip)
    port = free_port(HOST)
    node = start_geodns(tmp_path, HOST, port, zones, workers=2, extra=["--geoip", str(geoip)])
    procs.append(node.proc)
    pid = node.proc.popen.pid
    zone = zones / "example.yaml"
    good = zone.read_text()

    loads = [Load(HOST, port, tcp=False), Load(HOST, port, tcp=False), Load(HOST, port, tcp=True)]
    for load in loads:
        load.thread.start()
    try:
        g = generation(node.admin)
        for round_ in range(3):
            # good, by SIGHUP: a new TTL for www
            zone.write_text(good.replace("  www:\n    ttl: 30", f"  www:\n    ttl: {20 + round_}"))
            os.kill(pid, signal.SIGHUP)
            g = wait_generation(node.admin, g)
            # bad, by SIGHUP: refused, the old generation keeps serving
            zone.write_text(good.replace("coordinates: [53.3, -6.3]", "coordinates: [153.3, -6.3]"))
            failures_before = http_json(f"http://{node.admin}/v1/status")[1]["reload"]["failures"]
            os.kill(pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while http_json(f"http://{node.admin}/v1/status")[1]["reload"]["failures"] == failures_before:
                assert time.monotonic() < deadline, "the bad reload was not refused"
                time.sleep(0.05)
            assert generation(node.admin) == g
            # bad, by `geodns reload`: a clear refusal and a non-zero exit
            (zones / "extra.yaml").write_text("zone: extra.test\nttl: 30\nregions:\n  x:\n    coordinates: [91, 0]\n")
            result = cli("reload", "--admin", node.admin)
            assert result.returncode == 1, result
            assert "reload refused" in result.stderr and re.search(r"extra\.yaml:\d+:", result.stderr), result.stderr
            assert generation(node.admin) == g
            (zones / "extra.yaml").unlink()
            # good, by `geodns reload`
            zone.write_text(good)
            result = cli("reload", "--admin", node.admin)
            assert result.returncode == 0, result.stderr
            g = wait_generation(node.admin, g - 1)
            # the GeoIP file replaced under the server: reopened, no query lost
            fresh = tmp_path / "geoip.new"
            shutil.copy(GEOIP, fresh)
            os.replace(fresh, geoip)
            g = wait_generation(node.admin, g, timeout=10)
        time.sleep(0.3)
    finally:
        for load in loads:
            load.stop.set()
        for load in loads:
            load.thread.join(10)

    sent = sum(load.sent for load in loads)
    failures = [f for load in loads for f in load.failures]
    assert not failures, f"{len(failures)} of {sent} queries lost or wrong: {failures[:5]}"
    assert sent > 300, sent
    log = node.proc.output()
    refused = re.findall(r"reload refused: (\S+?):(\d+): (.*)", log)
    assert any(path.endswith("example.yaml") and "coordinates" in text for path, _line, text in refused), log[-3000:]
    assert any(path.endswith("extra.yaml") for path, _line, _text in refused), log[-3000:]
    assert "geoip reopened" in log
