"""The optional query log: one line per sampled query with client, subnet, name, type, rcode and answer."""

import ipaddress
import subprocess
import sys
import time

import dns.exception
import dnsclient
from dnsclient import ask, ecs_of, exchange, fqdn
from netutil import free_port as _free_port
from netutil import wait_until


def _serve(tmp_path, *extra: str):
    host = "127.0.0.81"
    port = _free_port(host)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geodns", "serve", "--listen", f"{host}:{port}", "--admin", "none",
         "--workers", "1", "--state", "none", *extra],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    query = dnsclient.query(fqdn("www"), "A", ecs="81.2.69.0/24")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            ask((host, port), query, timeout=0.5)
            break
        except dns.exception.Timeout:
            continue
    return proc, (host, port), query, log


def _lines(log):
    return [line for line in log.read_text().splitlines() if "geodns.query" in line]


def test_sampled_query_log_lines_say_who_asked_what_and_got_what(tmp_path):
    proc, server, query, log = _serve(tmp_path, "--query-log", "--query-log-sample", "0.5")
    try:
        for _ in range(400):  # each line is written as its query is answered
            ask(server, query, timeout=2)
    finally:
        proc.terminate()
        proc.wait(10)
    lines = _lines(log)
    assert 120 <= len(lines) <= 290, len(lines)  # ~200 of 400 (+1 readiness probe), far from 0 or all
    assert "client=127.0.0.1" in lines[-1] and "subnet=81.2.69.0/24" in lines[-1]
    assert "name=www.gslb.example.test type=1 " in lines[-1] and "rcode=0 answer=192.0.2.30" in lines[-1]


def test_no_query_log_unless_asked(tmp_path):
    proc, server, query, log = _serve(tmp_path)
    try:
        for _ in range(20):
            ask(server, query, timeout=2)
    finally:
        proc.terminate()
        proc.wait(10)
    assert _lines(log) == []


def test_a_bad_sample_rate_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "geodns", "serve", "--query-log-sample", "2", "--admin", "none"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2 and "--query-log-sample" in result.stderr


def test_query_log_lines_say_why(tmp_path):
    """`reason`: the deciding step, the regions, the client's place and the network the answer
    covers for steered names; the kind of answer for the rest; 'malformed' for junk."""
    proc, server, query, log = _serve(tmp_path, "--query-log")
    try:
        london = ask(server, query, timeout=2)  # www, London by ECS
        scope = ecs_of(london).scopelen
        ask(server, fqdn("geo"), "A", ecs="198.51.100.0/24", timeout=2)
        ask(server, fqdn("@"), "TXT", timeout=2)
        ask(server, fqdn("nope"), "A", timeout=2)
        ask(server, fqdn("www"), "A", timeout=2)
        two_questions = b"\x12\x34\x00\x00\x00\x02" + bytes(20)
        assert exchange(server, two_questions, timeout=2) is not None  # FORMERR
        wait_until(lambda: any("malformed" in line for line in _lines(log)[-1:]), 5, lambda: "\n".join(_lines(log)[-6:]))
    finally:
        proc.terminate()
        proc.wait(10)
    lines = _lines(log)[-6:]
    www, geo, txt, nope, by_source, junk = lines
    # The network is the one the answer covers: the ECS scope the client was told.
    network = ipaddress.ip_network(f"81.2.69.0/{scope}", strict=False)
    assert f"reason=geo_proximity regions=eu-west failopen=false by=ECS network={network} " in www
    assert 'place="' in www and "GB" in www
    assert "reason=geolocation regions=us-west" in geo and "network=198.51.100.0/24" in geo
    assert txt.endswith("reason=static")
    assert nope.endswith("reason=nxdomain")
    assert "by=source-address" in by_source and "reason=" in by_source
    assert "malformed" in junk and "reason" not in junk
