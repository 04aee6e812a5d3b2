"""A small geodns cluster for end-to-end tests: real `geodns serve` processes on 127.0.0.x."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dnsclient
from dnsclient import addresses
from netutil import async_wait_until, free_port, stop_process, wait_port


def ask(host: str, port: int, name: str, subnet: str | None = None) -> list[str] | None:
    """The A addresses a node answers for a name (None: no answer in time)."""
    try:
        response = dnsclient.ask((host, port), name, "A", ecs=subnet, edns=0, timeout=1)
    except dns.exception.Timeout:
        return None
    return addresses(response)


def east_west_zone(name: str, steer: str, east: str = "", west: str = "") -> str:
    """The gslb tests' zone: us-east (192.0.2.10) and us-west (192.0.2.20), each region with
    its extra YAML (`east`, `west`: `check: {...}`, `balancer: {...}`, `capacity_url: ...`),
    and one steered name, `name`, that falls back to us-east."""
    indent = "\n    "
    return f"""
zone: gslb.example.test
soa: {{mname: ns1, rname: hostmaster, serial: 1}}
nameservers: [{{name: ns1, glue: [127.0.0.53]}}]
regions:
  us-east:
    coordinates: [38.9, -77.0]
    endpoints: [192.0.2.10]{indent + east if east else ""}
  us-west:
    coordinates: [45.6, -121.2]
    endpoints: [192.0.2.20]{indent + west if west else ""}
records:
  {name}:
    steer: {steer}
    default: us-east
"""


async def all_answer(nodes: list[Node], want: list[str], within: float, name: str = "www.gslb.example.test",
                     step: float = 0.05) -> float:
    """Seconds until every node answers `want` for `name` over DNS (AssertionError after `within`)."""
    answers: dict[str, list[str] | None] = {}

    async def every() -> bool:
        for n in nodes:
            answers[n.name] = await asyncio.to_thread(n.ask, name)
        return all(a == want for a in answers.values())

    return await async_wait_until(every, within, lambda: f"wanted {want} from every node; last answers {answers}", step)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@dataclass
class Node:
    name: str
    host: str
    dns_port: int
    admin_port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def admin(self) -> str:
        return f"{self.host}:{self.admin_port}"

    def command(self, zones: Path, token: str) -> list[str]:
        return [
            sys.executable, "-m", "geodns", "serve", "--zones", str(zones), "--geoip", "none",
            "--listen", f"{self.host}:{self.dns_port}", "--admin", self.admin, "--admin-token", token,
            "--workers", "1", "--node", str(self.dir / "node.yaml"), "--state", str(self.dir / "admin.json"),
        ]

    def start(self, zones: Path, token: str) -> None:
        self.proc = start(self.command(zones, token), self.dir / "serve.log")
        wait_port(self.host, self.dns_port)
        wait_port(self.host, self.admin_port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def ask(self, name: str) -> list[str] | None:
        return ask(self.host, self.dns_port, name)


def make_cluster(tmp: Path, names: list[str], first_host: int, exchange_interval: float = 0.3,
                 extra: str = "", nats: list[str] | None = None) -> list[Node]:
    """Nodes with their own Ed25519 keys (as `geodns keygen` writes them) and
    every peer's public key in their node.yaml. With `nats` (server URLs) the
    nodes exchange through NATS JetStream: their peers have no url."""
    from geodns.health import keys

    nodes = []
    public = {}
    for i, name in enumerate(names):
        host = f"127.0.0.{first_host + i}"
        directory = tmp / name
        directory.mkdir()
        key = keys.generate()
        keys.write_private_key(str(directory / f"{name}.key"), key)
        public[name] = keys.public_key_text(key)
        nodes.append(Node(name, host, free_port(host), free_port(host), directory))
    for node in nodes:
        url = "" if nats else "url: 'http://{}', "
        peers = "".join(f"\n  - {{name: {p.name}, {url.format(p.admin)}public_key: '{public[p.name]}'}}"
                        for p in nodes if p is not node)
        if nats:
            extra_nats = f"exchange: {{nats: {{servers: [{', '.join(nats)}], replicas: {min(3, len(nats))}}}}}\n"
        else:
            extra_nats = ""
        (node.dir / "node.yaml").write_text(
            f"node: {node.name}\nprivate_key_file: {node.name}.key\npeers:{peers}\n"
            f"exchange_interval: {exchange_interval}\nstate_dir: {node.dir / 'state'}\n{extra_nats}{extra}"
        )
    return nodes
