"""DNS cookies (RFC 7873, RFC 9018) against real `geodns serve` processes over UDP and TCP:
dig's view, two nodes sharing a secret, the lifetime rules with cookies we make ourselves,
and Knot accepting our cookies (and we Knot's) with the same secret."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import dnsclient
import pytest
from dnsclient import cookie_of

from geodns.dns.cookies import packed_address, server_cookie
from tests.e2e.conftest import KNOT_SERVER

from .conftest import Server, next_host, start_server, zone_head

pytestmark = pytest.mark.slow

SECRET = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
OLD_SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
ZONE = zone_head("cookie.test", 30) + """\
regions:
  eu: {coordinates: [51.5, -0.1], endpoints: [192.0.2.30]}
  us: {coordinates: [38.9, -77.0], endpoints: [192.0.2.10]}
records:
  www: {steer: [healthy, geo_proximity, {limit: 1}], default: us}
  static: {A: 192.0.2.99}
"""


def zones(tmp: Path) -> Path:
    (tmp / "zones").mkdir(parents=True, exist_ok=True)
    (tmp / "zones" / "cookie.yaml").write_text(ZONE)
    return tmp / "zones"


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Node A takes the secret from its node settings (with a previous one), node B from
    --cookie-secret-file; each runs the default number of workers."""
    tmp = tmp_path_factory.mktemp("cookies")
    node_file = tmp / "node-a.yaml"
    node_file.write_text(f'node: a\ncookie_secret: "{SECRET.hex()}"\ncookie_secret_previous: "{OLD_SECRET.hex()}"\n')
    secret_file = tmp / "cookie.key"
    secret_file.write_text(SECRET.hex() + "\n")
    a = start_server(tmp / "a", zones(tmp), None, ipv6=True, extra=["--node", str(node_file), "--state", "none"])
    try:
        b = start_server(tmp / "b", zones(tmp), None, ipv6=True,
                         extra=["--cookie-secret-file", str(secret_file), "--state", "none"])
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()
    assert "cookie secret: from" in a.log_text() and "previous=yes" in a.log_text()
    assert "cookie secret: from" in b.log_text() and "previous=no" in b.log_text()


def dig_bin() -> str:
    path = shutil.which("dig")
    if path is None:
        pytest.skip("dig is not installed (Debian package dnsutils)")
    return path


def dig(server: Server, name: str, cookie: str = "", tcp: bool = False, source: str | None = None) -> tuple[str, str, str]:
    """(status, the COOKIE dig printed in hex, dig's verdict on it: 'good', 'bad' or '')."""
    argv = [dig_bin(), f"@{server.host}", "-p", str(server.port), name, "A", "+time=3", "+tries=2", "+nobadcookie",
            f"+cookie={cookie}" if cookie else "+cookie"]
    if tcp:
        argv.append("+tcp")
    if source:
        argv += ["-b", source]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    status = re.search(r"status: (\w+)", out)
    found = re.findall(r"^; COOKIE: ([0-9a-f]+)(?: \((\w+)\))?", out, re.M)
    assert status and found, out
    return status.group(1), found[-1][0], found[-1][1]


def test_dig_gets_a_server_cookie_that_the_second_node_accepts(two_nodes):
    a, b = two_nodes
    status, cookie, verdict = dig(a, "www.cookie.test", source=a.host)
    assert status == "NOERROR" and verdict == "good"
    assert len(cookie) == 48, "8 bytes of client cookie, then 16 of server cookie"
    assert cookie[16:24] == "01000000", "RFC 9018: version 1, three reserved bytes"
    issued = int(cookie[24:32], 16)
    assert abs(issued - time.time()) < 30
    time.sleep(1.1)  # a new cookie made now would carry another timestamp
    # Node B accepts it: a valid cookie younger than half an hour comes back as it went.
    for over_tcp in (False, True):
        status, again, verdict = dig(b, "static.cookie.test", cookie, tcp=over_tcp, source=a.host)
        assert (status, again, verdict) == ("NOERROR", cookie, "good")
    # From another address the same cookie is not valid: a fresh one, same answer.
    status, other, verdict = dig(b, "static.cookie.test", cookie, source=next_host())
    assert status == "NOERROR" and verdict == "good" and other[:16] == cookie[:16] and other != cookie


def test_every_worker_of_a_node_has_the_same_secret(two_nodes):
    a, b = two_nodes
    client = bytes(range(8))
    full = client + server_cookie(SECRET, client, packed_address(a.host), int(time.time()) - 60)
    # Queries from many source ports spread over the workers (the kernel hashes the 4-tuple).
    for i in range(24):
        status, echoed = ask(b, "www.cookie.test", full, source=a.host, qid=i)
        assert status == 0 and echoed == full, i
    # The same query bytes from another address (the echoed answers above are cached for
    # their client only): not valid there, so a new cookie for that address, every time.
    other = next_host()
    for i in range(8):
        status, got = ask(b, "www.cookie.test", full, source=other, qid=i)
        assert status == 0 and got != full and got[:8] == client, i


def ask(server: Server, name: str, cookie: bytes | None, source: str, qid: int = 7, tcp: bool = False) -> tuple[int, bytes | None]:
    """(rcode, the COOKIE option of the response) for a query sent from `source`."""
    port = server.hosts[-1][1] if ":" in source else server.port
    host = source if ":" in source else server.host
    msg = dnsclient.ask(server, name, "A", cookie=cookie, edns=0, qid=qid, rd=True, over="tcp" if tcp else "udp",
                        host=host, port=port, source=source)
    assert msg.id == qid
    return msg.rcode(), cookie_of(msg)


@pytest.mark.parametrize("over_tcp", [False, True])
def test_lifetime_and_bad_cookies_over_the_wire(two_nodes, over_tcp):
    a, _ = two_nodes
    source = a.host
    address = packed_address(source)
    client = b"\xc0\x0c\x1e\x00\x01\x02\x03\x04"
    now = int(time.time())

    def made(secret: bytes, age: int) -> bytes:
        return client + server_cookie(secret, client, address, now - age)

    def fresh(got: bytes | None) -> bool:
        """A new cookie of ours for this client, made just now."""
        if got is None or len(got) != 24 or got[:8] != client:
            return False
        stamp = int.from_bytes(got[12:16], "big")
        return abs(stamp - time.time()) < 30 and got[8:] == server_cookie(SECRET, client, address, stamp)

    for name in ("www.cookie.test", "static.cookie.test", "nothere.cookie.test", "example.com"):
        rcode, got = ask(a, name, made(SECRET, 600), source, tcp=over_tcp)
        assert got == made(SECRET, 600), f"{name}: a valid cookie 10 minutes old is echoed"
        assert rcode in (0, 3, 5)
    assert fresh(ask(a, "www.cookie.test", client, source, tcp=over_tcp)[1]), "client cookie alone"
    assert fresh(ask(a, "www.cookie.test", made(SECRET, 2400), source, tcp=over_tcp)[1]), "older than 30 min: renewed"
    assert fresh(ask(a, "www.cookie.test", made(OLD_SECRET, 600), source, tcp=over_tcp)[1]), "previous secret: renewed"
    for bad in (made(SECRET, 7200), made(b"\x01" * 16, 60), made(SECRET, 60)[:-1] + b"\0", client + bytes(16)):
        rcode, got = ask(a, "static.cookie.test", bad, source, tcp=over_tcp)
        assert rcode == 0 and fresh(got), "a bad server cookie gets the normal answer and a new cookie (5.2.3)"
    for length in (4, 12, 41):
        rcode, got = ask(a, "static.cookie.test", bytes(length), source, tcp=over_tcp)
        assert rcode == 1 and got is None, f"a {length}-byte COOKIE option is FORMERR"
    rcode, got = ask(a, "static.cookie.test", None, source, tcp=over_tcp)
    assert rcode == 0 and got is None, "no cookie in, no cookie out"


@pytest.mark.parametrize("over_tcp", [False, True])
def test_ipv6_clients_get_cookies_for_their_address(two_nodes, over_tcp):
    a, b = two_nodes
    if len(a.hosts) < 2:
        pytest.skip("no IPv6 loopback")
    client = b"\x06" * 8
    rcode, got = ask(a, "www.cookie.test", client, "::1", tcp=over_tcp)
    assert rcode == 0 and got is not None and len(got) == 24
    stamp = int.from_bytes(got[12:16], "big")
    assert got[8:] == server_cookie(SECRET, client, packed_address("::1"), stamp), "hashed over the 16-byte address"
    older = client + server_cookie(SECRET, client, packed_address("::1"), stamp - 60)
    assert ask(b, "www.cookie.test", older, "::1", tcp=over_tcp) == (0, older), "valid (echoed) on the other node"


def test_a_node_without_a_secret_makes_one_and_says_so(tmp_path):
    server = start_server(tmp_path, zones(tmp_path), None, extra=["--state", "none"], workers=False)
    try:
        assert "cookie secret: random" in server.log_text()
        client = bytes(8)
        rcode, got = ask(server, "static.cookie.test", client, server.host)
        assert rcode == 0 and got is not None and len(got) == 24
    finally:
        server.stop()


def test_a_wrong_secret_stops_the_start(tmp_path):
    import sys

    from .conftest import REPO, _env

    (tmp_path / "key").write_text("not hex\n")
    out = subprocess.run(
        [sys.executable, "-m", "geodns", "serve", "--zones", str(zones(tmp_path)), "--geoip", "none",
         "--admin", "none", "--state", "none", "--listen", f"{next_host()}:0",
         "--cookie-secret-file", str(tmp_path / "key")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "--cookie-secret-file" in out.stderr and "32 hex digits" in out.stderr


KNOT_CONF = KNOT_SERVER + """\
database:
    storage: "{dir}/db"
mod-cookies:
  - id: shared
    secret: 0x{secret}
    badcookie-slip: 1
template:
  - id: default
    storage: "{dir}"
    global-module: mod-cookies/shared
zone:
  - domain: cookie.test
    file: "cookie.test.zone"
"""

KNOT_ZONE = """\
$ORIGIN cookie.test.
$TTL 3600
@ SOA ns1.cookie.test. hostmaster.cookie.test. 1 3600 600 604800 60
@ NS ns1.cookie.test.
ns1 A 127.0.0.53
static A 192.0.2.99
"""


def test_knot_with_the_same_secret_accepts_our_cookies_and_we_its(two_nodes, tmp_path):
    """Interoperable server cookies (RFC 9018): Knot answers a cookie of ours with NOERROR and
    an invalid one with BADCOOKIE; a cookie Knot made comes back from us as it went (valid)."""
    from netutil import free_port

    from tests.e2e.conftest import need, spawn, wait_dns

    knotd = need("knotd", "knot")
    a, _ = two_nodes
    host = next_host()
    port = free_port(host)
    (tmp_path / "knot.conf").write_text(KNOT_CONF.format(dir=tmp_path, host=host, port=port, secret=SECRET.hex()))
    (tmp_path / "cookie.test.zone").write_text(KNOT_ZONE)
    knot = spawn("knotd", [knotd, "-c", str(tmp_path / "knot.conf")], tmp_path)
    try:
        wait_dns(host, port, "static.cookie.test", timeout=20, proc=knot)
        knot_server = Server(host, port, knot.popen, knot.log, tmp_path, None, [(host, port)])
        source = a.host
        client = b"\x4b\x6e\x6f\x74\x00\x01\x02\x03"
        _, ours = ask(a, "static.cookie.test", client, source)
        rcode, echoed = ask(knot_server, "static.cookie.test", ours, source)
        assert rcode == 0 and echoed[:8] == client, knot.output()
        bad = ours[:-1] + bytes([ours[-1] ^ 0xFF])
        rcode, _ = ask(knot_server, "static.cookie.test", bad, source)
        assert rcode == 23, "BADCOOKIE: Knot tells a cookie it cannot validate from ours"
        # A cookie Knot made (its answer to a client cookie alone is BADCOOKIE with the cookie
        # to retry with), sent to us a second later.
        _, knots = ask(knot_server, "static.cookie.test", client, source)
        assert knots is not None and len(knots) == 24 and knots[:8] == client
        time.sleep(1.1)
        assert ask(a, "static.cookie.test", knots, source) == (0, knots)
    finally:
        knot.stop()
