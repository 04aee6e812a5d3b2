"""A running `geodns serve` whose GeoIP file is overwritten in place keeps answering.

`cp new.mmdb geoip.mmdb` truncates the file it copies over, then writes it: a
node that mapped the file itself lost the pages under its mapping and died of
SIGBUS at the next lookup. The node reads a private copy (a sealed memfd), so it
answers from the old data while the file is empty or half written, refuses the
partial file, and takes the new one when it is whole.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dnsclient import addresses, ask
from netutil import wait_until

from tests.e2e.conftest import GEOIP, ROOT, copy_zones, free_port, spawn, wait_dns
from tests.geo.mmdb_files import write_city_db

pytestmark = pytest.mark.slow

HOST = "127.0.11.1"
WWW = "www.gslb.example.test"
LONDON = "81.2.69.0"
CLIENTS = [f"{a}.{b}.{c}.0" for a in (1, 5, 8, 24, 31, 41, 62, 77, 81, 91, 101, 121, 151, 177, 189, 200, 212)
           for b in (2, 77, 150) for c in (3, 69)]
"""Clients all over the address space: each one a cache miss, so each one walks the tree."""


def answer(port: int, client: str) -> list[str]:
    return addresses(ask((HOST, port), WWW, "A", ecs=f"{client}/24", timeout=2))


def refusals(node) -> int:
    """How many replaced GeoIP files the node has refused so far (one log line each)."""
    return node.output().count("geoip file replaced but unreadable")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_survives_its_geoip_file_overwritten_in_place(tmp_path: Path, workers: int) -> None:
    geoip = tmp_path / "geoip.mmdb"
    shutil.copy(GEOIP, geoip)
    # The new file puts London's network in Virginia: the answer tells which file is in use.
    new = write_city_db(tmp_path / "new.mmdb", {"81.2.69.0/24": dict(lat=38.9, lon=-77.0, country="US", continent="NA")})
    port = free_port(HOST)
    argv = [sys.executable, "-m", "geodns", "serve", "--zones", str(copy_zones(tmp_path)), "--geoip", str(geoip),
            "--listen", f"{HOST}:{port}", "--admin", "none", "--state", "none", "--workers", str(workers)]
    node = spawn(f"geodns-{workers}", argv, tmp_path, {**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_dns(HOST, port, WWW, timeout=20, proc=node)
        assert answer(port, LONDON) == ["192.0.2.30"]  # eu-west from the bundle
        with geoip.open("r+b") as f:  # what cp does first
            f.truncate(0)
        for client in CLIENTS[: len(CLIENTS) // 2]:
            assert len(answer(port, client)) == 1, client
        half = new.read_bytes()
        refused = refusals(node)
        geoip.write_bytes(half[: len(half) // 2])  # half written: refused, the old data serves on
        wait_until(lambda: refusals(node) > refused, 10, node.output)  # the node looks every second
        for client in CLIENTS[len(CLIENTS) // 2:]:
            assert len(answer(port, client)) == 1, client
        assert answer(port, LONDON) == ["192.0.2.30"]
        assert node.popen.poll() is None, node.output()
        # The real thing: cp over the file, in place. The node takes it once it is whole.
        subprocess.run(["cp", str(new), str(geoip)], check=True)
        wait_until(lambda: answer(port, LONDON) == ["192.0.2.10"], 10,
                   lambda: f"the new file was not taken:\n{node.output()}", step=0.2)
        assert node.popen.poll() is None
        log = node.output()
        assert "geoip file replaced but unreadable, keeping the old one" in log and "geoip reopened" in log
    finally:
        node.stop()
    assert node.popen.returncode == 0, node.output()


def test_serve_keeps_its_geoip_file_when_the_new_one_is_corrupt(tmp_path: Path) -> None:
    geoip = tmp_path / "geoip.mmdb"
    shutil.copy(GEOIP, geoip)
    good = write_city_db(tmp_path / "good.mmdb", {"81.2.69.0/24": dict(lat=38.9, lon=-77.0, country="US", continent="NA", city="Reston")})
    data = good.read_bytes()
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(data.replace(b"\x46Reston", b"\x46Rest\xc0\x80", 1))  # one record's string is not UTF-8
    port = free_port(HOST)
    argv = [sys.executable, "-m", "geodns", "serve", "--zones", str(copy_zones(tmp_path)), "--geoip", str(geoip),
            "--listen", f"{HOST}:{port}", "--admin", "none", "--state", "none", "--workers", "2"]
    node = spawn("geodns-corrupt", argv, tmp_path, {**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_dns(HOST, port, WWW, timeout=20, proc=node)
        assert answer(port, LONDON) == ["192.0.2.30"]
        os.replace(shutil.copy(bad, tmp_path / "bad.tmp"), geoip)  # the atomic way, with a corrupt file
        wait_until(lambda: refusals(node), 10, node.output, step=0.2)
        assert "string is not UTF-8" in node.output()
        for client in [LONDON, *CLIENTS[:20]]:
            assert len(answer(port, client)) == 1
        assert answer(port, LONDON) == ["192.0.2.30"]  # still the bundle
        os.replace(shutil.copy(good, tmp_path / "good.tmp"), geoip)  # and a sound one is taken
        wait_until(lambda: answer(port, LONDON) == ["192.0.2.10"], 10, node.output, step=0.2)
    finally:
        node.stop()
    assert node.popen.returncode == 0, node.output()
