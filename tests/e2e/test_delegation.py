"""Delegation end to end: Knot serves the parent zone, unbound resolves through it with ECS.

    unbound (subnetcache) --stub--> knotd: example.test, NS + glue for gslb.example.test
             \\--ECS 81.2.69.0/24--> geodns 127.0.6.53:53 and 127.0.6.54:53

Delegations carry no port, so the geodns nodes listen on port 53 (root,
CAP_NET_BIND_SERVICE or a low ip_unprivileged_port_start); Knot and unbound
use high ports.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    KNOT_SERVER,
    NET,
    Proc,
    copy_zones,
    free_port,
    need,
    spawn,
    start_geodns,
    unavailable,
    wait_dns,
)

pytestmark = pytest.mark.slow

NODES = (f"{NET}.53", f"{NET}.54")
KNOT = f"{NET}.10"
UNBOUND = f"{NET}.20"


def can_bind_53(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 53))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 53))
    except OSError:
        return False
    return True


PARENT = """\
$ORIGIN example.test.
$TTL 3600
@       SOA ns.example.test. hostmaster.example.test. 2026112601 3600 600 604800 60
@       NS  ns.example.test.
ns      A   {knot}
; the delegation an operator adds (deploy/delegation/)
gslb    NS  ns1.gslb.example.test.
gslb    NS  ns2.gslb.example.test.
ns1.gslb A  {ns1}
ns2.gslb A  {ns2}
"""

KNOT_CONF = KNOT_SERVER + """\
control:
    listen: "{dir}/knot.sock"
database:
    storage: "{dir}/knot-db"
template:
  - id: default
    storage: "{dir}"
    semantic-checks: on
zone:
  - domain: example.test
    file: "example.test.zone"
"""

UNBOUND_CONF = """\
server:
    interface: {unbound}@{port}
    port: {port}
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-ip6: no
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "subnetcache iterator"
    # send the client's subnet to our authoritative servers, and pass on ECS a client sent
    send-client-subnet: {net}.0/24
    client-subnet-always-forward: yes
    max-client-subnet-ipv4: 24
    qname-minimisation: no
    local-zone: "test." nodefault
    cache-min-ttl: 0
    infra-host-ttl: 60
stub-zone:
    name: "example.test"
    stub-addr: {knot}@{knot_port}
remote-control:
    control-enable: no
"""


def dig(dig_bin: str, server: str, port: int, name: str, subnet: str | None = None) -> tuple[str, list[tuple[str, int, str, str]]]:
    argv = [dig_bin, f"@{server}", "-p", str(port), name, "A", "+time=3", "+tries=2", "+nocookie"]
    if subnet:
        argv.append(f"+subnet={subnet}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    status = re.search(r"status: (\w+)", out)
    answers = []
    section = False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
            continue
        if section:
            if not line.strip():
                break
            owner, ttl, _cls, rtype, data = line.split(None, 4)
            answers.append((owner, int(ttl), rtype, data.strip()))
    return (status.group(1) if status else "NO-REPLY:\n" + out), answers


def test_resolver_reaches_geodns_through_the_delegation(tmp_path: Path, procs: list[Proc]) -> None:
    knotd = need("knotd", "knot")
    unbound = need("unbound", "unbound")
    dig_bin = need("dig", "bind9-dnsutils")
    if not all(can_bind_53(h) for h in NODES):
        unavailable("cannot bind port 53 on 127.0.6.53/54 (run as root or with CAP_NET_BIND_SERVICE)")

    zones = copy_zones(tmp_path)
    nodes = [start_geodns(tmp_path, host, 53, zones, name=f"geodns-{i + 1}") for i, host in enumerate(NODES)]
    procs.extend(n.proc for n in nodes)

    knot_port = free_port(KNOT)
    (tmp_path / "example.test.zone").write_text(PARENT.format(knot=KNOT, ns1=NODES[0], ns2=NODES[1]))
    (tmp_path / "knot.conf").write_text(KNOT_CONF.format(dir=tmp_path, host=KNOT, port=knot_port))
    knot = spawn("knotd", [knotd, "-c", str(tmp_path / "knot.conf")], tmp_path)
    procs.append(knot)
    wait_dns(KNOT, knot_port, "example.test", timeout=15, proc=knot)

    unbound_port = free_port(UNBOUND)
    conf = tmp_path / "unbound.conf"
    conf.write_text(UNBOUND_CONF.format(dir=tmp_path, unbound=UNBOUND, port=unbound_port, net=NET, knot=KNOT, knot_port=knot_port))
    check = subprocess.run([need("unbound-checkconf", "unbound"), str(conf)], capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stdout + check.stderr
    resolver = spawn("unbound", [unbound, "-d", "-c", str(conf)], tmp_path)
    procs.append(resolver)
    wait_dns(UNBOUND, unbound_port, "example.test", timeout=15, proc=resolver)

    # The parent delegates: NS for gslb.example.test comes from Knot, not from geodns.
    status, answers = dig(dig_bin, KNOT, knot_port, "example.test")
    assert status == "NOERROR"

    status, answers = dig(dig_bin, UNBOUND, unbound_port, "www.gslb.example.test", "81.2.69.0/24")
    assert status == "NOERROR", status + "\n" + resolver.output()
    assert [a[3] for a in answers if a[2] == "A"] == ["192.0.2.30"], answers
    assert all(ttl <= 30 for _o, ttl, rtype, _d in answers if rtype == "A"), answers

    # Another subnet, another region: the resolver kept them apart (subnetcache).
    status, answers = dig(dig_bin, UNBOUND, unbound_port, "www.gslb.example.test", "8.8.8.0/24")
    assert status == "NOERROR"
    assert [a[3] for a in answers if a[2] == "A"] == ["192.0.2.20"], answers

    # One geodns node down: the resolver still answers, from the other one.
    nodes[0].proc.stop()
    deadline = time.monotonic() + 30
    for name, subnet, want in (
        ("geo.gslb.example.test", "81.2.69.0/24", "192.0.2.30"),
        ("multi.gslb.example.test", "81.2.69.0/24", None),
        ("www.gslb.example.test", "1.128.0.0/24", "192.0.2.40"),
        ("fast.gslb.example.test", "8.8.8.0/24", None),
    ):
        status, answers = dig(dig_bin, UNBOUND, unbound_port, name, subnet)
        assert status == "NOERROR", (name, status, resolver.output()[-2000:])
        got = [a[3] for a in answers if a[2] == "A"]
        assert got, (name, answers)
        if want:
            assert got == [want], (name, subnet, got)
        assert time.monotonic() < deadline
    assert nodes[1].proc.popen.poll() is None
