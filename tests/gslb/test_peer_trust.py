"""Attacks on the peer exchange, against three real `geodns serve` nodes.

The attacker holds n3's key (valid credentials: a stolen agent key, a
compromised node). It cannot speak for n1 or n2, cannot forge their drains,
and cannot poison a node with a drain from the far future: every node keeps
deciding, and a node restarted over a poisoned drains.json starts cleanly.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from natsutil import nats_servers, needs_nats

from geodns.health import keys
from geodns.health.drains import drain_to_json, sign_drain
from geodns.health.peers import CONTENT_TYPE, OBSERVATIONS_PATH, Verifier, encode
from geodns.health.quorum import Drain

from .cluster import all_answer, wait_port
from .test_failover import TOKEN, start_cluster, stop_cluster

pytestmark = pytest.mark.slow

EAST, WEST = ["192.0.2.10"], ["192.0.2.20"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def cluster(tmp_path: Path, first_host: int, backend_hosts: tuple[str, str]):
    nodes, zones, east, west = await start_cluster(tmp_path, backend_hosts, first_host)
    for node in nodes:
        node.start(zones, TOKEN)
    await all_answer(nodes, EAST, 15)
    return nodes, zones, east, west


def attacker(nodes) -> Verifier:
    """What whoever stole n3's key file can sign."""
    n3 = nodes[2]
    key, _ = keys.load_private_key(str(n3.dir / "n3.key"))
    return Verifier("n3", key, {})


def as_claimed(signer: Verifier, name: str) -> Verifier:
    """The same key, claiming another node's name."""
    return Verifier(name, signer.key, {})


def forged_message(node: str, state: str, targets: list[str], drains=()) -> dict:
    return {"v": 2, "node": node, "sent_at": time.time(), "details": ["forged"],
            "views": [[state, -9000, 60000, -100, 0, targets]], "drains": list(drains)}


async def send(http: aiohttp.ClientSession, node, signer: Verifier, message: dict) -> tuple[int, str]:
    body = encode(message)
    headers = {**signer.sign("push", node.name, body), "Content-Type": CONTENT_TYPE}
    async with http.post(f"http://{node.admin}{OBSERVATIONS_PATH}", data=body, headers=headers) as r:
        return r.status, (await r.read()).decode("latin-1")


def metric(node, name: str, labels: dict[str, str]) -> float:
    req = urllib.request.Request(f"http://{node.admin}/metrics", headers=AUTH)
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            inner = line[len(name) + 1:line.index("}")]
            if ",".join(sorted(inner.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_node_with_valid_credentials_cannot_speak_for_another(tmp_path: Path) -> None:
    nodes, _, east, west = await cluster(tmp_path, 151, ("127.0.0.161", "127.0.0.162"))
    n1, n2, _ = nodes
    targets = ["us-east/192.0.2.10"]
    n3 = attacker(nodes)
    try:
        async with aiohttp.ClientSession() as http:
            forged_drain = drain_to_json(sign_drain(Drain("us-east", True, "forged", time.time(), "n2"), n3.key))
            deadline = time.monotonic() + 3.0
            answers = []
            while time.monotonic() < deadline:
                for victim in (n1, n2):
                    # n3's signature over a body that says n2: refused, whoever it names.
                    status, text = await send(http, victim, n3, forged_message("n2", "down", targets))
                    assert status == 400 and "malformed" in text, text
                    # n3's key, claiming to be n1 or n2 in the signed headers: refused.
                    for name in ("n1", "n2"):
                        if name != victim.name:
                            status, text = await send(http, victim, as_claimed(n3, name),
                                                      forged_message(name, "down", targets))
                            assert status == 401 and "bad_signature" in text, text
                    # A drain in n2's name, signed with n3's key, relayed by n3: dropped.
                    status, _ = await send(http, victim, n3, {**forged_message("n3", "up", []), "views": None,
                                                              "drains": [forged_drain]})
                    assert status == 200
                answers.append({n.name: await asyncio.to_thread(n.ask, "www.gslb.example.test") for n in nodes})
                await asyncio.sleep(0.1)
        # The forged views never reached a quorum: every node kept answering us-east.
        assert all(a == {"n1": EAST, "n2": EAST, "n3": EAST} for a in answers), answers
        for victim in (n1, n2):
            assert metric(victim, "geodns_peer_messages_rejected_total", {"reason": "malformed", "peer": "n3"}) >= 5
            assert metric(victim, "geodns_peer_messages_rejected_total", {"reason": "bad_drain", "peer": "n3"}) >= 5
            other = "n2" if victim is n1 else "n1"
            assert metric(victim, "geodns_peer_messages_rejected_total",
                          {"reason": "bad_signature", "peer": other}) >= 5
            log = (victim.dir / "serve.log").read_text()
            # Logged once for the minute per claimed name, however many came.
            assert log.count(f"peer message refused claimed={other} ") == 1, log[-3000:]
            assert log.count("peer message refused claimed=n3 ") == 1
        # /v1/health is not for whoever can connect; the admin token reads it.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{n1.admin}/v1/health") as r:
                assert r.status == 401
            async with http.get(f"http://{n1.admin}/v1/health", headers=AUTH) as r:
                doc = await r.json()
        assert doc["node"] == "n1" and not doc["drains"]
        cause = doc["verdicts"]["us-east/192.0.2.10"]["cause"]
        assert cause.startswith("0/3 observers say down"), cause
    finally:
        await stop_cluster(nodes, east, west)


async def test_poisoned_drains_are_refused_and_every_node_keeps_deciding_and_restarts(tmp_path: Path) -> None:
    nodes, zones, east, west = await cluster(tmp_path, 171, ("127.0.0.181", "127.0.0.182"))
    n1, n2, _ = nodes
    n3 = attacker(nodes)
    try:
        async with aiohttp.ClientSession() as http:
            # Signed by n3 itself (valid credentials), but from the far future.
            far = drain_to_json(sign_drain(Drain("us-west", True, "poison", 1e300, "n3"), n3.key))
            soon = drain_to_json(sign_drain(Drain("us-west", True, "poison", time.time() + 3600, "n3"), n3.key))
            for victim in (n1, n2):
                status, _ = await send(http, victim, n3, {**forged_message("n3", "up", []), "views": None,
                                                          "drains": [far, soon]})
                assert status == 200
            # The admin API refuses NaN and an unbounded reason, and changes nothing.
            url = f"http://{n1.admin}/v1/drain"
            for body in (b'{"target": "us-west", "reason": NaN}', b'{"target": "us-west", "at": Infinity}',
                         json.dumps({"target": "us-west", "reason": "r" * 5000}).encode()):
                async with http.post(url, data=body, headers={**AUTH, "Content-Type": "application/json"}) as r:
                    assert r.status == 400, await r.text()
        for node in nodes:
            assert metric(node, "geodns_verdict_forced", {"target": "us-west"}) == 0
        # Every node keeps deciding: us-east dies, all of them move to us-west.
        await east.stop()
        moved = await all_answer(nodes, WEST, 10)
        print(f"\nafter the poisoned drains, us-east down -> all 3 nodes moved in {moved:.2f}s")

        # n1 restarts over a poisoned drains.json and admin state file: it starts.
        n1.stop()
        state = n1.dir / "state"
        (state / "drains.json").write_text(
            '{"drains": [{"target": "us-west", "active": true, "reason": "x", "at": 1e300, "by": "n1"},'
            ' {"target": "us-west", "active": true, "reason": "x", "at": NaN, "by": "n2"},'
            ' {"target": "us-west", "active": true, "reason": "x", "at": 1764000000.0, "by": "n2"},'
            ' "not a drain", {"target": 7}]}')
        (n1.dir / "admin.json").write_text('{"drains": {"us-west": 12}, "down": "us-west"}')
        n1.start(zones, TOKEN)
        wait_port(n1.host, n1.dns_port)
        await all_answer(nodes, WEST, 10)
        log = (n1.dir / "serve.log").read_text()
        assert log.count("health drain dropped from disk") >= 4, log[-3000:]
        assert n1.proc.poll() is None
        await east.start()
        back = await all_answer(nodes, EAST, 20)
        print(f"us-east back -> all 3 nodes answer it again after {back:.2f}s")
    finally:
        await stop_cluster(nodes, east, west)


@needs_nats
async def test_over_nats_a_leaked_credential_cannot_speak_for_a_node(tmp_path: Path) -> None:
    """The same attacker over NATS: n3's key and a working NATS connection (a
    leaked credential) write straight into the buckets. Messages claiming n1 or
    n2 but signed by n3, n3's message under n2's key, and a drain in n2's name
    are refused and counted as on the built-in exchange; answers never move."""
    import nats as nats_client

    from geodns.health.nats_exchange import KIND, envelope, key_token

    with nats_servers(tmp_path / "nats", "127.0.0.189") as servers:
        nodes, _, east, west = await start_cluster(tmp_path, ("127.0.0.191", "127.0.0.192"), 183,
                                                   nats=[s.url for s in servers])
        try:
            for node in nodes:
                node.start(_, TOKEN)
            await all_answer(nodes, EAST, 15)
            n1, n2, _n3 = nodes
            n3 = attacker(nodes)
            nc = await nats_client.connect(servers[0].url)
            js = nc.jetstream()
            views, drains = await js.key_value("geodns-views"), await js.key_value("geodns-drains")
            targets = ["us-east/192.0.2.10"]
            forged_drain = drain_to_json(sign_drain(Drain("us-east", True, "forged", time.time(), "n2"), n3.key))
            answers = []
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                for name in ("n1", "n2"):
                    # n3's key, claiming n1/n2 in the signed headers, under their own keys.
                    body = encode(forged_message(name, "down", targets))
                    await views.put(f"views.{key_token(name)}",
                                    envelope(as_claimed(n3, name).sign(KIND, "nats:geodns", body), body))
                # n3's own, correctly signed message, written under n2's key.
                body = encode(forged_message("n3", "down", targets))
                await views.put("views.n2", envelope(n3.sign(KIND, "nats:geodns", body), body))
                # A drain in n2's name signed with n3's key.
                await drains.put(f"drain.{key_token('us-east')}", json.dumps(forged_drain).encode())
                await views.put("views.n1", b"not a signed message")
                answers.append({n.name: await asyncio.to_thread(n.ask, "www.gslb.example.test") for n in nodes})
                await asyncio.sleep(0.1)
            await nc.close()
            assert all(a == {"n1": EAST, "n2": EAST, "n3": EAST} for a in answers), answers
            for victim in nodes:
                for other in [o for o in ("n1", "n2") if o != victim.name]:
                    assert metric(victim, "geodns_peer_messages_rejected_total",
                                  {"reason": "bad_signature", "peer": other}) >= 5, (victim.name, other)
                # (a name a node does not list as a peer, its own included, counts as unknown)
                assert metric(victim, "geodns_peer_messages_rejected_total",
                              {"reason": "bad_drain", "peer": "n2" if victim is not n2 else "unknown"}) >= 5
                if victim is not n2:
                    assert metric(victim, "geodns_peer_messages_rejected_total",
                                  {"reason": "wrong_peer", "peer": "n3" if victim is n1 else "unknown"}) >= 5
                if victim.name != "n1":
                    assert metric(victim, "geodns_peer_messages_rejected_total",
                                  {"reason": "unsigned", "peer": "unknown"}) >= 5, victim.name
                assert metric(victim, "geodns_verdict_forced", {"target": "us-east"}) == 0
            # The real nodes' next heartbeats put their own views back: failover still moves.
            await east.stop()
            moved = await all_answer(nodes, WEST, 10)
            print(f"\nover NATS, after the forged writes, us-east down -> all 3 nodes moved in {moved:.2f}s")
        finally:
            await stop_cluster(nodes, east, west)


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def test_a_signed_inflation_bomb_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """65 kB on the wire, signed with a peer's valid key, inflating to 64 MiB of
    `{},`: parsed, it was 22 M dicts, 1.7 GB and 12 s of a deaf admin port. It is
    refused (413) from a count of its brackets and commas; the node stays small
    and answers while it arrives."""
    import zlib

    from .cluster import make_cluster

    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "z.yaml").write_text("zone: gslb.example.test\nsoa: {mname: ns1, rname: hostmaster, serial: 1}\n"
                                  "nameservers: [{name: ns1, glue: [127.0.0.53]}]\nrecords:\n  www: {A: [192.0.2.1]}\n")
    n1, n2 = make_cluster(tmp_path, ["n1", "n2"], 131)
    key, _ = keys.load_private_key(str(n2.dir / "n2.key"))
    signer = Verifier("n2", key, {})
    n1.start(zones, TOKEN)
    try:
        bombs = [zlib.compress(b"[" + unit * ((64 * 1024 * 1024 - 2) // len(unit) - 1) + unit[:-1] + b"]", 9)
                 for unit in (b"{},", b"0,")]
        async with aiohttp.ClientSession() as http:
            for bomb in bombs:
                assert len(bomb) < 100_000
                headers = {**signer.sign("push", "n1", bomb), "Content-Type": CONTENT_TYPE}
                started = time.monotonic()
                async with http.post(f"http://{n1.admin}{OBSERVATIONS_PATH}", data=bomb, headers=headers) as r:
                    assert r.status == 413, await r.text()
                assert time.monotonic() - started < 5
            async with http.get(f"http://{n1.admin}/v1/status") as r:
                assert r.status == 200
        assert n1.ask("www.gslb.example.test") == ["192.0.2.1"]
        assert n1.proc is not None and _peak_rss_kb(n1.proc.pid) < 400_000
        assert metric(n1, "geodns_peer_messages_rejected_total", {"reason": "too_large", "peer": "n2"}) == 2
    finally:
        n1.stop()
