"""Smaller protocol points against the running server (issue 12, section 3): NOTIMP echoes no
RD or CD, a TCP answer past 65,535 bytes is truncated cleanly, per-type counters stay a bounded
set of Prometheus series, and a second `geodns serve` on a served address refuses to start."""

from __future__ import annotations

import random
import re
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import dns.flags
import dns.message
import pytest
from dnsclient import fqdn, header, query, raw_tcp, raw_udp
from netutil import free_port, wait_until

from .conftest import REPO, _env, next_host, start_server, wait_answering, zone_head

pytestmark = pytest.mark.slow

RD, CD = 0x0100, 0x0010


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 6, 15])
@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_notimp_does_not_echo_rd_or_cd(example_server, opcode, over):
    wire = bytearray(query(fqdn("www"), "A", edns=0).to_wire())
    flags = (opcode << 11) | RD | CD
    wire[2:4] = struct.pack("!H", flags)
    response = (raw_udp if over == "udp" else raw_tcp)(example_server, bytes(wire))
    assert response is not None
    _, rflags, *_ = header(response)
    assert rflags & 0xF == 4, "NOTIMP"
    assert (rflags >> 11) & 0xF == opcode, "the opcode is echoed"
    assert not rflags & RD and not rflags & CD, "RD and CD are QUERY's flags: not echoed"
    # A QUERY still gets its RD and CD back.
    wire[2:4] = struct.pack("!H", RD | CD)
    _, qflags, *_ = header((raw_udp if over == "udp" else raw_tcp)(example_server, bytes(wire)))
    assert qflags & (RD | CD) == RD | CD and qflags & 0xF == 0


BIG_ZONE_HEAD = zone_head("big.test", 300) + """\
records:
  small: {A: 192.0.2.1}
  big:
    A:
"""


@pytest.fixture(scope="module")
def big_server(tmp_path_factory):
    """A zone whose `big` name has 5,000 A records: ~80 kB, more than a TCP message can hold."""
    tmp = tmp_path_factory.mktemp("big")
    (tmp / "zones").mkdir()
    lines = [f"      - 10.{i // 250}.{i % 250}.1" for i in range(5000)]
    (tmp / "zones" / "big.yaml").write_text(BIG_ZONE_HEAD + "\n".join(lines) + "\n")
    server = start_server(tmp, tmp / "zones", None, extra=["--state", "none"])
    yield server
    server.stop()


@pytest.mark.parametrize("edns", [None, 0])
def test_a_tcp_answer_that_cannot_fit_65535_bytes_is_truncated(big_server, edns):
    for _ in range(2):  # a miss, then the cached answer
        q = query("big.big.test.", "A", edns=edns)
        response = raw_tcp(big_server, q.to_wire())
        assert response is not None, f"no answer over TCP:\n{big_server.log_text()}"
        msg = dns.message.from_wire(response)
        assert msg.id == q.id and msg.rcode() == 0
        assert msg.flags & dns.flags.TC and not msg.answer, "TC, the question, no records"
        assert (msg.edns == 0) is (edns == 0)
    assert raw_udp(big_server, query("big.big.test.", "A").to_wire())[2] & 0x02, "and TC over UDP"
    small = dns.message.from_wire(raw_tcp(big_server, query("small.big.test.", "A").to_wire()))
    assert [rd.address for rrset in small.answer for rd in rrset] == ["192.0.2.1"]
    assert big_server.alive()
    assert "Traceback" not in big_server.log_text()


def queries_counted(metrics: str) -> float:
    return sum(float(n) for n in re.findall(r"^geodns_queries_total\{.*\} (\S+)$", metrics, re.M))


def test_random_query_types_make_a_bounded_set_of_series(tmp_path):
    host = next_host()
    admin_port = free_port(host)
    server = start_server(tmp_path, extra=["--admin", f"{host}:{admin_port}", "--state", "none"], workers=False)
    try:
        rng = random.Random(12)
        qtypes = rng.sample(range(1, 65536), 200)
        for qtype in qtypes:
            for name in ("www", "nope"):
                assert raw_udp(server, query(fqdn(name), qtype).to_wire()) is not None
        # Workers push their counters once a second: wait until every query is counted.
        def metrics() -> str:
            try:  # the admin app starts after the workers answer: it may not listen yet
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://{host}:{admin_port}/metrics", timeout=10
                ) as response:
                    text = response.read().decode()
            except OSError:
                return ""
            return text

        wait_until(lambda: queries_counted(metrics()) >= 2 * len(qtypes), 15, "every query counted in /metrics", step=0.3)
        text = metrics()
    finally:
        server.stop()
    types = set(re.findall(r'^geodns_queries_total\{[^}]*type="([^"]*)"', text, re.M))
    assert queries_counted(text) >= 2 * len(qtypes), text
    assert "other" in types
    assert not any(t.isdigit() for t in types), types
    from dnslib import QTYPE

    assert types <= set(QTYPE.forward.values()) | {"other", "none"}
    assert len(types) <= 25, f"{len(types)} type labels from 200 random query types"


def serve(listen: str, zones: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "geodns", "serve", "--zones", str(zones or REPO / "zones"), "--geoip", "none",
            "--admin", "none", "--state", "none", "--listen", listen]


def test_a_second_serve_on_a_served_address_refuses_to_start(example_server):
    where = f"{example_server.host}:{example_server.port}"
    for workers in ("1", "2"):
        out = subprocess.run(serve(where) + ["--workers", workers], cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode != 0
        assert where in out.stderr and "already" in out.stderr, out.stderr
    wait_answering(example_server, timeout=5)  # the first one still answers, alone
