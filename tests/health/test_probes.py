"""Probes against real servers on 127.0.0.x: every outcome is a ProbeResult."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest
from aiohttp import web

from geodns.config.model import Check
from geodns.health.probes import EXEC_ENVIRONMENT, probe

from .conftest import free_port


async def test_http_up(backend_factory):
    b = await backend_factory("127.0.0.2")
    r = await probe(Check(kind="http", port=b.port, path="/health"), "127.0.0.2")
    assert r.ok, r
    assert r.detail == "HTTP 200"
    assert b.seen[-1][:2] == ("GET", "/health")


async def test_http_status_host_header_and_method(backend_factory):
    b = await backend_factory("127.0.0.2")
    b.status = 204
    check = Check(kind="http", port=b.port, method="HEAD", host_header="www.example.com",
                  expect_status=(200, 204))
    r = await probe(check, "127.0.0.2")
    assert r.ok, r
    assert b.seen[-1] == ("HEAD", "/", "www.example.com")
    b.status = 503
    r = await probe(check, "127.0.0.2")
    assert not r.ok and "HTTP 503" in r.detail


async def test_http_body_contains(backend_factory):
    b = await backend_factory("127.0.0.3")
    b.body = "status: green"
    assert (await probe(Check(kind="http", port=b.port, body_contains="green"), "127.0.0.3")).ok
    r = await probe(Check(kind="http", port=b.port, body_contains="red"), "127.0.0.3")
    assert not r.ok and "lacks" in r.detail


async def test_check_host_and_port_override_the_endpoint(backend_factory):
    b = await backend_factory("127.0.0.4")
    # The answer guarded is 192.0.2.1 (a public VIP); the check probes 127.0.0.4.
    r = await probe(Check(kind="http", host="127.0.0.4", port=b.port), "192.0.2.1")
    assert r.ok, r


async def test_http_refused_is_failure():
    port = free_port("127.0.0.5")
    r = await probe(Check(kind="http", port=port, timeout=1), "127.0.0.5")
    assert not r.ok
    assert r.rtt < 1


async def test_http_hang_is_cut_at_timeout(backend_factory):
    b = await backend_factory("127.0.0.2")
    b.hang = True
    t0 = time.monotonic()
    r = await probe(Check(kind="http", port=b.port, timeout=0.3), "127.0.0.2")
    elapsed = time.monotonic() - t0
    assert not r.ok and "timeout" in r.detail
    assert 0.25 <= elapsed < 1.0


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        pytest.skip("openssl not available to make a test certificate")
    return cert, key


async def test_https_verify_on_by_default_and_off_on_request(self_signed):
    cert, key = self_signed
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    async def ok(request):
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.6")
    await web.TCPSite(runner, "127.0.0.6", port, ssl_context=ctx).start()
    try:
        r = await probe(Check(kind="https", port=port), "127.0.0.6")
        assert not r.ok and "ertificate" in r.detail, r
        r = await probe(Check(kind="https", port=port, verify_tls=False), "127.0.0.6")
        assert r.ok, r
    finally:
        await runner.cleanup()


async def test_tcp_up_and_refused():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.7", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await probe(Check(kind="tcp", port=port), "127.0.0.7")).ok
    finally:
        server.close()
        await server.wait_closed()
    r = await probe(Check(kind="tcp", port=port), "127.0.0.7")
    assert not r.ok


async def test_tcp_hanging_listener_is_cut_at_timeout():
    # A real listener that accepts and then says nothing: the connection is
    # made, the HTTP answer never comes, and the probe must not wait for it.
    async def hold(reader, writer):
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, "127.0.0.8", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        r = await probe(Check(kind="http", port=port, timeout=0.3), "127.0.0.8")
        assert not r.ok and "timeout" in r.detail
        assert time.monotonic() - t0 < 1.0
    finally:
        server.close()


async def test_dns_probe_against_a_real_udp_server():
    import dns.message
    import dns.rcode

    class Responder(asyncio.DatagramProtocol):
        rcode = dns.rcode.NOERROR

        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            q = dns.message.from_wire(data)
            resp = dns.message.make_response(q)
            resp.set_rcode(self.rcode)
            self.transport.sendto(resp.to_wire(), addr)

    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Responder, local_addr=("127.0.0.9", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        check = Check(kind="dns", port=port, qname="www.example.com", timeout=1)
        r = await probe(check, "127.0.0.9")
        assert r.ok, r
        proto.rcode = dns.rcode.SERVFAIL
        r = await probe(check, "127.0.0.9")
        assert not r.ok and "SERVFAIL" in r.detail
    finally:
        transport.close()
    # Nobody answering: cut at the timeout.
    r = await probe(Check(kind="dns", port=port, qname="x.", timeout=0.3), "127.0.0.9")
    assert not r.ok


async def test_exec_exit_status_and_timeout():
    ok = Check(kind="exec", command=(sys.executable, "-c",
                                     "import os,sys; sys.exit(os.environ['GEODNS_ADDRESS']!='127.0.0.1')"))
    assert (await probe(ok, "127.0.0.1")).ok
    bad = Check(kind="exec", command=(sys.executable, "-c", "print('disk full'); raise SystemExit(2)"))
    r = await probe(bad, "127.0.0.1")
    assert not r.ok and r.detail == "exit 2: disk full"
    t0 = time.monotonic()
    slow = Check(kind="exec", command=(sys.executable, "-c", "import time; time.sleep(30)"), timeout=0.5)
    r = await probe(slow, "127.0.0.1")
    assert not r.ok and "timeout" in r.detail
    assert time.monotonic() - t0 < 2


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (killed, waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def test_exec_timeout_kills_the_whole_process_group(tmp_path):
    # A wrapper shell that starts a sleeping grandchild, then hangs itself.
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    r = await probe(Check(kind="exec", command=("/bin/sh", "-c", script), timeout=0.5), "127.0.0.1")
    assert not r.ok and "timeout" in r.detail
    grandchild = int(pidfile.read_text())
    try:
        assert _wait_gone(grandchild), "the grandchild outlived the probe's timeout"
    finally:
        if not _gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


async def test_exec_leaves_nothing_running_and_does_not_wait_for_leftovers(tmp_path):
    # The command exits 0 at once but leaves a child holding its stdout: the probe is up
    # straight away, and the leftover is killed with the command's process group.
    pidfile = tmp_path / "leftover.pid"
    script = f"sleep 60 & echo $! > {pidfile}; echo ready"
    t0 = time.monotonic()
    r = await probe(Check(kind="exec", command=("/bin/sh", "-c", script), timeout=5), "127.0.0.1")
    assert r.ok and r.detail == "exit 0: ready", r
    assert time.monotonic() - t0 < 2
    leftover = int(pidfile.read_text())
    try:
        assert _wait_gone(leftover)
    finally:
        if not _gone(leftover):
            os.kill(leftover, signal.SIGKILL)


async def test_exec_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("GEODNS_ADMIN_TOKEN", "s3cret-admin-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret-key")
    monkeypatch.setenv("LANG", "C.UTF-8")
    # The command reports what it sees in one short line (a probe's detail is its last line).
    code = ("import os, sys, json; e = os.environ; print(json.dumps([sorted(e), e['GEODNS_ADDRESS'], e['GEODNS_PORT'],"
            " e['PATH'] == sys.argv[1], any('s3cret' in v for v in e.values())]))")
    r = await probe(Check(kind="exec", command=(sys.executable, "-c", code, os.environ["PATH"]), port=8080), "127.0.0.7")
    assert r.ok, r
    names, address, port, same_path, leaked = json.loads(r.detail.split(": ", 1)[1])
    assert not leaked and "GEODNS_ADMIN_TOKEN" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    assert (address, port, same_path) == ("127.0.0.7", "8080", True)
    assert "LANG" in names and set(names) <= {*EXEC_ENVIRONMENT, "GEODNS_ADDRESS", "GEODNS_PORT"}
    # A command found through PATH still runs.
    assert (await probe(Check(kind="exec", command=("true",)), "127.0.0.1")).ok


async def test_exec_output_is_bounded():
    # Endless output: read up to the limit, then the pipe closes and the command dies of SIGPIPE.
    t0 = time.monotonic()
    r = await probe(Check(kind="exec", command=("yes", "flood"), timeout=5), "127.0.0.1")
    assert not r.ok and r.detail.startswith("killed by SIGPIPE (output over 65536 bytes"), r
    assert time.monotonic() - t0 < 2
    # A command that ignores SIGPIPE is judged by its exit status; the detail stays one short line.
    code = "import os, signal; signal.signal(signal.SIGPIPE, signal.SIG_IGN)\n" \
           "try:\n    os.write(1, b'x' * 200000)\nexcept OSError:\n    pass\nos._exit(0)"
    r = await probe(Check(kind="exec", command=(sys.executable, "-c", code), timeout=5), "127.0.0.1")
    assert r.ok and len(r.detail) < 200, r


async def test_shared_session_is_reused(backend_factory):
    import aiohttp

    b = await backend_factory("127.0.0.2")
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert (await probe(Check(kind="http", port=b.port), "127.0.0.2", s)).ok
    assert b.hits == 3


async def test_source_address_is_what_the_backend_sees(backend_factory):
    from geodns.health.probes import probe_session

    b = await backend_factory("127.0.0.2")
    b.deny_from = {"127.0.0.12"}
    check = Check(kind="http", port=b.port)
    assert (await probe(check, "127.0.0.2", source="127.0.0.11")).ok
    assert not (await probe(check, "127.0.0.2", source="127.0.0.12")).ok
    async with probe_session(source="127.0.0.12") as s:
        r = await probe(check, "127.0.0.2", s)
    assert not r.ok and "503" in r.detail
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.7", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await probe(Check(kind="tcp", port=port), "127.0.0.7", source="127.0.0.13")).ok
    finally:
        server.close()


async def test_tcp_connect_that_never_completes_is_cut_at_timeout():
    import socket

    # A listener that never accepts, with its accept queue filled: the kernel
    # drops further SYNs, so a connect hangs, as to a blackholed backend.
    listener = socket.socket()
    listener.bind(("127.0.0.14", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.14", port))
            fillers.append(s)
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        r = await probe(Check(kind="tcp", port=port, timeout=0.3), "127.0.0.14")
        elapsed = time.monotonic() - t0
        assert not r.ok and r.detail == "timeout after 0.3s", r
        assert 0.25 <= elapsed < 1.0
    finally:
        for s in fillers:
            s.close()
        listener.close()
