"""The admin port against DNS rebinding and odd credentials, on a real `geodns serve`.

A page on `evil.example` whose name is rebound to the node's address makes the
browser send `Host: evil.example`: the node refuses it (421) on every admin
route, reads and writes, while its own addresses, localhost and the names
given with `--admin-host` keep working (curl, urllib, the status page).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from geodns.control.admin import _host_name, admin_host
from tests.e2e.conftest import (
    GEOIP,
    ROOT,
    TOKEN,
    GeoNode,
    copy_zones,
    free_port,
    spawn,
    start_geodns,
    wait_dns,
)

HOST = "127.0.5.42"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeoNode]:
    tmp = tmp_path_factory.mktemp("admin-host")
    node = start_geodns(
        tmp, HOST, free_port(HOST), copy_zones(tmp), name="admin-host",
        extra=["--admin-host", "admin.gslb.example", "--admin-host", "Ops.Example."],
    )
    try:
        yield node
    finally:
        node.proc.stop()


def request(node: GeoNode, method: str, path: str, host: str | None, headers: dict[str, str | bytes] | None = None, body: bytes | None = None) -> tuple[int, str]:
    """One request with exactly the Host header given (None: no Host header at all)."""
    conn = http.client.HTTPConnection(node.host, node.admin_port, timeout=5)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_own_addresses_localhost_and_configured_names_are_served(served: GeoNode) -> None:
    port = served.admin_port
    for host in (f"{HOST}:{port}", HOST, f"localhost:{port}", "LOCALHOST", f"admin.gslb.example:{port}",
                 "ADMIN.gslb.example.", f"ops.example:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        status, text = request(served, "GET", "/v1/status", host)
        assert status == 200, (host, text)
        assert json.loads(text)["zones"]
    for path in ("/", "/metrics", "/v1/explain?name=www.gslb.example.test&client=81.2.69.160"):
        assert request(served, "GET", path, f"admin.gslb.example:{port}")[0] == 200, path


def test_a_rebound_name_is_refused_on_every_route(served: GeoNode) -> None:
    port = served.admin_port
    bad_hosts = (f"evil.example:{port}", "evil.example", f"admin.gslb.example.evil.example:{port}",
                 f"10.9.8.7:{port}", f"[2001:db8::1]:{port}", "admin.gslb.example:http", "a b", "", f"{HOST}:{port}:{port}")
    for host in bad_hosts:
        for path in ("/", "/v1/status", "/metrics", "/static/app.js", "/v1/explain?name=www.gslb.example.test&client=81.2.69.160"):
            status, text = request(served, "GET", path, host)
            assert status == 421, (host, path, status)
            assert "DNS rebinding" in json.loads(text)["error"] and "--admin-host" in text
    # Writes too, even with the right token: a rebinding page must not drain a region.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v1/drain", "/v1/undrain", "/v1/reload"):
        status, text = request(served, "POST", path, f"evil.example:{port}", auth, json.dumps({"target": "eu-west"}).encode())
        assert status == 421, (path, text)
    status, text = request(served, "GET", "/v1/status", HOST)
    assert json.loads(text)["drains"] == {}
    assert not served.state.exists()


def test_non_utf8_authorization_is_a_401(served: GeoNode) -> None:
    body = json.dumps({"target": "eu-west"}).encode()
    for value in (b"Bearer \xff\xfe\xfd", b"\xc3\x28 token", b"Bearer " + TOKEN.encode() + b"\xff"):
        status, text = request(served, "POST", "/v1/drain", HOST, {"Authorization": value}, body)
        assert status == 401, (value, status, text)
        assert "bearer token" in json.loads(text)["error"]
    assert not served.state.exists()
    # The right token still works, and the drain is made.
    status, text = request(served, "POST", "/v1/drain", HOST, {"Authorization": f"Bearer {TOKEN}"}, body)
    assert status == 200 and json.loads(text)["drained"] is True, text
    request(served, "POST", "/v1/undrain", HOST, {"Authorization": f"Bearer {TOKEN}"}, body)


def test_malformed_requests_are_one_log_line_each(served: GeoNode) -> None:
    """A request aiohttp's parser refuses (no Host, a bad method, a NUL in a header,
    two Content-Lengths) is a 400 and one line in the node's log, never a traceback."""
    import socket
    import time

    bad = (b"GET /v1/status HTTP/1.1\r\n\r\n", b"GARBAGE\r\n\r\n",
           b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX: a\x00b\r\n\r\n",
           b"POST /v1/drain HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    for raw in bad:
        with socket.create_connection((served.host, served.admin_port), timeout=5) as sock:
            sock.sendall(raw)
            assert sock.recv(100).startswith(b"HTTP/1.0 400 "), raw
    assert request(served, "GET", "/v1/status", HOST)[0] == 200
    deadline = time.monotonic() + 5
    while served.proc.output().count("event=bad_request") < len(bad) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = served.proc.output()
    assert log.count("event=bad_request") >= len(bad), log
    assert "Traceback" not in log and "Error handling request" not in log, log


@pytest.mark.slow
def test_default_loopback_admin_works_with_curl(tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    # The default admin address, 127.0.0.1 (on a free port rather than 8053).
    port, dns_port = free_port("127.0.0.1"), free_port(HOST)
    argv = [sys.executable, "-m", "geodns", "serve", "--zones", str(copy_zones(tmp_path)), "--geoip", str(GEOIP),
            "--listen", f"{HOST}:{dns_port}", "--admin", f"127.0.0.1:{port}", "--state", "none", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GEODNS_ADMIN_TOKEN", None)
    node = spawn("loopback", argv, tmp_path, env)
    wait_dns(HOST, dns_port, "www.gslb.example.test", timeout=20, proc=node)
    try:
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/v1/status", f"http://127.0.0.1:{port}/metrics"):
            out = subprocess.run([curl, "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", url],
                                 capture_output=True, text=True, timeout=10)
            assert out.stdout == "200", (url, out.stdout, out.stderr)
        out = subprocess.run([curl, "-sS", "--noproxy", "*", "-H", "Host: rebound.example", f"http://127.0.0.1:{port}/v1/status"],
                             capture_output=True, text=True, timeout=10)
        assert "DNS rebinding" in out.stdout
    finally:
        node.stop()


def test_bad_admin_host_names_stop_the_command_line() -> None:
    out = subprocess.run([sys.executable, "-m", "geodns", "serve", "--admin-host", "http://x.example:80"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "not a host name or IP address" in out.stderr


@pytest.mark.parametrize(("header", "name"), [
    ("Example.COM:8053", "example.com"), ("example.com.", "example.com"), ("[::1]:80", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"), ("127.0.0.1", "127.0.0.1"), ("x_y.example", "x_y.example"),
    ("[::1", None), ("[::1]x", None), ("host:", None), ("a/b", None), ("ex ample", None), ("é.example", None), ("", None),
])
def test_host_header_names(header: str, name: str | None) -> None:
    assert _host_name(header) == name


def test_admin_host_names() -> None:
    assert admin_host(" Admin.Example. ") == "admin.example"
    assert admin_host("[2001:DB8::1]") == "2001:db8::1"
    for bad in ("", "a..b", "x" * 64 + ".example", "name:8053", "http://x"):
        with pytest.raises(ValueError):
            admin_host(bad)
