"""DNSSEC end to end: Knot signs the parent, geodns signs the child, unbound validates.

    unbound (validator, subnetcache; trust anchor: example.test's key)
      --stub--> knotd: example.test, signed by Knot (automatic signing), with
                the DS records `geodns keys ds` printed for gslb.example.test
      --ECS--> geodns 127.0.6.53:53 and 127.0.6.54:53 (same key files)

Through unbound: the steered answer for a London subnet validates (AD,
192.0.2.30), so do a name that does not exist and a type that does not
(compact denial, RFC 9824); with a wrong DS at the parent the same query is
SERVFAIL, proving validation ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dnsclient
import pytest

from tests.e2e import conftest as e2e
from tests.e2e.test_delegation import KNOT_CONF as DELEGATION_KNOT_CONF
from tests.e2e.test_delegation import NODES, PARENT, UNBOUND_CONF, can_bind_53

pytestmark = pytest.mark.slow

KNOT_CONF = (
    DELEGATION_KNOT_CONF.replace(
        "template:", "policy:\n  - id: csk\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n    nsec3: off\ntemplate:"
    )
    + "    dnssec-signing: on\n    dnssec-policy: csk\n    zonefile-sync: -1\n"
)
"""test_delegation's Knot, signing example.test itself (one CSK, NSEC), never writing the zone file."""


def geodns_keys(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "geodns", "keys", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(e2e.ROOT)},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def signed_parent(tmp: Path, knot_host: str, ds: str, procs: list[e2e.Proc]) -> tuple[int, str]:
    """Knot serving example.test signed, with `ds` for the child; returns its port and the
    DNSKEY (257) to trust."""
    (tmp / "knot-db").mkdir(parents=True, exist_ok=True)  # Knot keeps its keys (KASP) there
    port = e2e.free_port(knot_host)
    (tmp / "example.test.zone").write_text(PARENT.format(knot=knot_host, ns1=NODES[0], ns2=NODES[1]) + ds)
    (tmp / "knot.conf").write_text(KNOT_CONF.format(dir=tmp, host=knot_host, port=port))
    check = subprocess.run([e2e.need("knotc", "knot"), "-c", str(tmp / "knot.conf"), "conf-check"], capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stdout + check.stderr
    knot = e2e.spawn(f"knotd-{knot_host}", [e2e.need("knotd", "knot"), "-c", str(tmp / "knot.conf")], tmp)
    procs.append(knot)
    e2e.wait_dns(knot_host, port, "example.test", timeout=15, proc=knot)
    deadline = time.monotonic() + 20
    while True:  # signing runs just after the load
        reply = dnsclient.ask((knot_host, port), "example.test.", "DNSKEY", do=True, rd=True, timeout=2)
        keys = [r for rrset in reply.answer if rrset.rdtype == dns.rdatatype.DNSKEY for r in rrset if r.flags == 257]
        if keys:
            return port, f"example.test. 3600 IN DNSKEY {keys[0].to_text()}"
        assert time.monotonic() < deadline, knot.output()
        time.sleep(0.2)


def validating_resolver(tmp: Path, host: str, knot_host: str, knot_port: int, anchor: str, procs: list[e2e.Proc]) -> int:
    port = e2e.free_port(host)
    conf = UNBOUND_CONF.format(dir=tmp, unbound=host, port=port, net=e2e.NET, knot=knot_host, knot_port=knot_port)
    conf = conf.replace('module-config: "subnetcache iterator"', 'module-config: "subnetcache validator iterator"')
    conf = conf.replace("    cache-min-ttl: 0\n", f'    cache-min-ttl: 0\n    trust-anchor: "{anchor}"\n    val-log-level: 2\n')
    (tmp / "unbound.conf").write_text(conf)
    check = subprocess.run([e2e.need("unbound-checkconf", "unbound"), str(tmp / "unbound.conf")], capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stdout + check.stderr
    resolver = e2e.spawn(f"unbound-{host}", [e2e.need("unbound", "unbound"), "-d", "-c", str(tmp / "unbound.conf")], tmp)
    procs.append(resolver)
    e2e.wait_dns(host, port, "example.test", timeout=15, proc=resolver)
    return port


def ask(host: str, port: int, name: str, rdtype: str, subnet: str | None = None) -> dns.message.Message:
    """A DO query to a resolver (RD set), with ECS when `subnet` is given."""
    return dnsclient.ask((host, port), name, rdtype, do=True, ecs=subnet, rd=True, timeout=8)


@dataclass
class Chain:
    """The running chain: geodns nodes, the signed parent, the validating resolver."""

    tmp: Path
    nodes: list
    resolver: e2e.Proc
    host: str
    port: int
    anchor: str


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Iterator[Chain]:
    e2e.need("knotd", "knot")
    e2e.need("unbound", "unbound")
    if not all(can_bind_53(h) for h in NODES):
        e2e.unavailable("cannot bind port 53 on 127.0.6.53/54 (run as root or with CAP_NET_BIND_SERVICE)")
    tmp = tmp_path_factory.mktemp("dnssec-chain")
    procs: list[e2e.Proc] = []
    try:
        # The child: keys made and the DS printed by geodns, the same key files on both nodes.
        zones = e2e.copy_zones(tmp)
        geodns_keys("generate", "gslb.example.test", "--dir", str(tmp / "keys"))
        example = zones / "example.yaml"
        # The apex MX points out of the zone: dnsviz 0.11 fails (TypeError) analysing an apex
        # whose MX target is inside the zone itself, whatever the server.
        text = example.read_text().replace('MX: ["10 mail"]', 'MX: ["10 mail.example.net."]')
        example.write_text(text + "\ndnssec:\n  keys: ../keys\n")
        ds = geodns_keys("ds", "gslb.example.test", "--dir", str(tmp / "keys"))
        assert ds.startswith("gslb.example.test. 3600 IN DS ")
        nodes = [e2e.start_geodns(tmp, host, 53, zones, name=f"geodns-{i + 1}") for i, host in enumerate(NODES)]
        procs.extend(n.proc for n in nodes)
        knot_host, resolver_host = f"{e2e.NET}.10", f"{e2e.NET}.20"
        knot_port, anchor = signed_parent(tmp / "parent", knot_host, ds, procs)
        port = validating_resolver(tmp, resolver_host, knot_host, knot_port, anchor, procs)
        yield Chain(tmp, nodes, procs[-1], resolver_host, port, anchor)
        assert all(n.proc.popen.poll() is None for n in nodes)
    finally:
        for p in reversed(procs):
            p.stop()


def addresses(reply: dns.message.Message) -> list[str]:
    return [r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset]


def test_unbound_validates_the_signed_steered_child(chain: Chain) -> None:
    host, port, log = chain.host, chain.port, chain.resolver.output
    reply = ask(host, port, "www.gslb.example.test.", "A", "81.2.69.0/24")
    assert reply.rcode() == dns.rcode.NOERROR, log()[-3000:]
    assert reply.flags & dns.flags.AD, log()[-3000:]
    assert addresses(reply) == ["192.0.2.30"]
    assert any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in reply.answer)

    other = ask(host, port, "www.gslb.example.test.", "A", "8.8.8.0/24")
    assert other.flags & dns.flags.AD and addresses(other) == ["192.0.2.20"]

    # Denial validates: a name that does not exist, and a type that does not.
    for name, rdtype in (("nope.gslb.example.test.", "A"), ("mail.gslb.example.test.", "TXT")):
        reply = ask(host, port, name, rdtype)
        assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and not reply.answer, (name, reply)
        assert reply.flags & dns.flags.AD, (name, log()[-3000:])

    # A CNAME chain into the steered name, and a wildcard, validate as well.
    for name in ("api.gslb.example.test.", "x.cdn.gslb.example.test."):
        reply = ask(host, port, name, "A", "81.2.69.0/24")
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD, (name, log()[-3000:])


def test_a_wrong_ds_at_the_parent_is_servfail(chain: Chain, procs: list[e2e.Proc]) -> None:
    """Another key's DS at a fresh parent, a fresh resolver, the same child: bogus."""
    geodns_keys("generate", "gslb.example.test", "--dir", str(chain.tmp / "other-keys"))
    bad_ds = geodns_keys("ds", "gslb.example.test", "--dir", str(chain.tmp / "other-keys"))
    knot2, resolver2 = f"{e2e.NET}.11", f"{e2e.NET}.21"
    knot2_port, anchor2 = signed_parent(chain.tmp / "bad-parent", knot2, bad_ds, procs)
    (chain.tmp / "bad").mkdir()
    port2 = validating_resolver(chain.tmp / "bad", resolver2, knot2, knot2_port, anchor2, procs)
    reply = ask(resolver2, port2, "www.gslb.example.test.", "A", "81.2.69.0/24")
    assert reply.rcode() == dns.rcode.SERVFAIL, reply
    # ...while the parent itself still validates through that resolver.
    assert ask(resolver2, port2, "example.test.", "SOA").flags & dns.flags.AD


def test_dnsviz_finds_no_errors(chain: Chain) -> None:
    """dnsviz's authoritative analysis of the child (many query shapes: EDNS sizes and flags,
    no EDNS, TCP, random names) with the child's key as trust anchor: every answer and denial
    SECURE, and no error or warning but the two that loopback addresses cause."""
    dnsviz = shutil.which("dnsviz")
    if dnsviz is None:
        e2e.unavailable("dnsviz is not installed (pip install dnsviz; it needs named and pygraphviz)")
    for tool, package in (("named", "bind9"), ("named-checkconf", "bind9-utils")):
        e2e.need(tool, package)  # dnsviz serves the explicit delegation (-x) with a local named
    knot_port = int(re.search(r"listen: \S+@(\d+)", (chain.tmp / "parent" / "knot.conf").read_text()).group(1))
    names = [f"{n}gslb.example.test" for n in ("", "www.", "nope.", "mail.", "x.cdn.", "api.")]
    probe = subprocess.run(
        [dnsviz, "probe", "-4", "-A", "-x", f"example.test+:ns.example.test={e2e.NET}.10:{knot_port}", "-o", str(chain.tmp / "probe.json"), *names],
        capture_output=True, text=True, timeout=240,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    (chain.tmp / "child-anchor").write_text(
        subprocess.run([e2e.need("grep", "grep"), "-h", "DNSKEY", *map(str, (chain.tmp / "keys").glob("*.key"))], capture_output=True, text=True).stdout
    )
    grok = subprocess.run(
        [dnsviz, "grok", "-r", str(chain.tmp / "probe.json"), "-t", str(chain.tmp / "child-anchor"), "-l", "info"],
        capture_output=True, text=True, timeout=120,
    )
    assert grok.returncode == 0, grok.stderr[-3000:]
    report = json.loads(grok.stdout)
    problems, statuses = [], {}

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("errors", "error", "warnings", "warning"):
                    problems.extend((path, e.get("code")) for e in value if e.get("code") not in LOOPBACK_ONLY)
                elif key in ("answer", "nodata", "nxdomain") and isinstance(value, list):
                    statuses.update({f"{path} {key}": item.get("status") for item in value})
                else:
                    walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(report, "")
    assert not problems, problems
    checked = {k: v for k, v in statuses.items() if "/IN/DS " not in k}  # the parent is a stub here
    assert len(checked) > 15 and set(checked.values()) == {"SECURE"}, statuses


LOOPBACK_ONLY = {"NS_NAME_PRIVATE_IP", "GLUE_PRIVATE_IP"}
"""dnsviz errors that only say the name servers are on loopback addresses."""
