#!/usr/bin/env python3
"""A simulated fleet on this machine, over both exchanges: failover time, bytes and CPU per node.

S real `geodns serve` processes (default 5) and O lightweight observer agents
(default 50, simulated in this process: each has its own Ed25519 key and signs
its own messages) watch R regions x E endpoints (default 20 x 100 = 2,000
targets). Every endpoint is observed by `--observers` of the S + O members
(rendezvous hashing, as configured nodes do); each region's endpoints are
probed at the region's one aiohttp backend (`host:` in the check), so killing
that backend kills the whole region. The agents probe each backend once a
period for all of them and keep rise/fall counts.

- http: each member pushes its views to every other member each period (the
  built-in exchange); the agents' peer routes are one aiohttp server here
  (a path per agent) answering with signed replies.
- nats: a `nats-server` with JetStream on loopback; every member writes its
  message to the views bucket each period and the serving nodes watch it.

Measured per exchange: during a steady window, bytes of peer messages
(`geodns_peer_bytes_total`, both directions) and CPU seconds (/proc) per serving
node per second; then region r00's backend is stopped and every serving node is
asked (DNS over TCP) until none answers r00's endpoints: seconds from the
region dying to the last node dropping it.

    python3 bench/fleet.py                       # both exchanges, ~2 min, prints a Markdown table
    python3 bench/fleet.py --exchange nats --agents 20 --regions 5

Only loopback; every process is started and stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aiohttp  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
from aiohttp import web  # noqa: E402
from natsutil import nats_servers  # noqa: E402
from netutil import free_port  # noqa: E402

from geodns.config import load_zone_text  # noqa: E402
from geodns.health import keys  # noqa: E402
from geodns.health.nats_exchange import KIND, envelope, key_token  # noqa: E402
from geodns.health.peers import CONTENT_TYPE, NONCE_HEADER, OBSERVATIONS_PATH, Verifier, encode  # noqa: E402
from geodns.health.plan import plan_zones  # noqa: E402

TOKEN = "fleet-bench-token"
NAME = "www.fleet.test"
FALL, RISE = 2, 2


def zone_text(backends: list[tuple[str, int]], endpoints: int, interval: float, observers: int) -> str:
    regions = []
    for i, (host, port) in enumerate(backends):
        eps = ", ".join(f"198.18.{i}.{j + 1}" for j in range(endpoints))
        regions.append(
            f"  r{i:02d}:\n    coordinates: [0, {i}]\n    endpoints: [{eps}]\n"
            f"    check: {{type: http, host: {host}, port: {port}, path: /, interval: {interval}, timeout: 0.5,"
            f" jitter: 0.1, fall: {FALL}, rise: {RISE}, observers: {observers}}}\n")
    return ("zone: fleet.test\nsoa: {mname: ns1, rname: hostmaster, serial: 1}\n"
            "nameservers: [{name: ns1, glue: [127.0.0.53]}]\nregions:\n" + "".join(regions) +
            "records:\n  www:\n    regions: [r00, r01]\n    steer: [{failover: [r00, r01]}]\n")


class Agents:
    """O observer agents: shared probing of the region backends, one signed message per agent."""

    def __init__(self, names: list[str], zone, members: list[str], backends, interval: float) -> None:
        self.names = names
        self.keys = {n: keys.generate() for n in names}
        self.signers = {n: Verifier(n, self.keys[n], {}) for n in names}
        plan = plan_zones([zone], names[0], members)
        self.observed: dict[str, dict[str, list[str]]] = {n: {} for n in names}
        for target, tp in plan.targets.items():
            for n in tp.observers & set(names):
                self.observed[n].setdefault(tp.region, []).append(target)
        self.backends = backends
        self.interval = interval
        self.fails = [0] * len(backends)
        self.oks = [RISE] * len(backends)
        self.state = ["unknown"] * len(backends)
        self.since = [time.time()] * len(backends)
        self.at = time.time()

    async def probe(self, http: aiohttp.ClientSession) -> None:
        async def one(i: int, host: str, port: int) -> None:
            try:
                async with http.get(f"http://{host}:{port}/", timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                    ok = r.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            self.fails[i], self.oks[i] = (0, self.oks[i] + 1) if ok else (self.fails[i] + 1, 0)
            new = "up" if self.oks[i] >= RISE else "down" if self.fails[i] >= FALL else self.state[i]
            if new != self.state[i]:
                self.state[i], self.since[i] = new, time.time()

        self.at = time.time()
        await asyncio.gather(*(one(i, h, p) for i, (h, p) in enumerate(self.backends)))

    def message(self, name: str) -> bytes:
        now = time.time()
        rows = []
        for region, targets in self.observed[name].items():
            i = int(region[1:])
            rows.append([self.state[i], int((self.since[i] - now) * 1000), int(self.interval * 1000),
                         int((self.at - now) * 1000), 0, targets])
        return encode({"v": 2, "node": name, "sent_at": now, "want_views": False, "details": ["sim"],
                       "views": rows, "drains": []})


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def peer_bytes(http: aiohttp.ClientSession, admin: str) -> float:
    async with http.get(f"http://{admin}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("geodns_peer_bytes_total{"))


def answers(host: str, port: int) -> set[str] | None:
    q = dns.message.make_query(NAME, "A")
    try:
        r = dns.query.tcp(q, host, port=port, timeout=2)
    except Exception:  # noqa: BLE001 - not answering yet
        return None
    return {rr.address for rrset in r.answer for rr in rrset if rrset.rdtype == 1}


async def run(exchange: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    backend_host = "127.0.0.240"
    backends = [(backend_host, free_port(backend_host)) for _ in range(args.regions)]
    runners = []
    for host, port in backends:
        app = web.Application()
        app.router.add_get("/", lambda r: web.Response(text="ok"))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    text = zone_text(backends, args.endpoints, args.interval, args.observers)
    zone = load_zone_text(text, "fleet.yaml")
    (tmp / "zones").mkdir()
    (tmp / "zones" / "fleet.yaml").write_text(text)
    servers = [f"s{i + 1}" for i in range(args.serving)]
    agent_names = [f"a{i + 1:03d}" for i in range(args.agents)]
    members = servers + agent_names
    agents = Agents(agent_names, zone, members, backends, args.interval)
    sim_host = "127.0.0.241"
    sim_port = free_port(sim_host)
    node_keys = {s: keys.generate() for s in servers}
    public = {**{s: keys.public_key_text(k) for s, k in node_keys.items()},
              **{a: keys.public_key_text(k) for a, k in agents.keys.items()}}
    hosts = {s: f"127.0.0.{242 + i}" for i, s in enumerate(servers)}
    ports = {s: (free_port(hosts[s]), free_port(hosts[s])) for s in servers}
    stack = contextlib.ExitStack()
    nats_url = None
    if exchange == "nats":
        nats_url = stack.enter_context(nats_servers(tmp / "nats", "127.0.0.241"))[0].url
    procs = {}
    try:
        for s in servers:
            d = tmp / s
            d.mkdir()
            keys.write_private_key(str(d / "node.key"), node_keys[s])
            peers = []
            for m in members:
                if m == s:
                    continue
                url = f"http://{hosts[m]}:{ports[m][1]}" if m in hosts else f"http://{sim_host}:{sim_port}/{m}"
                peers.append(f"  - {{name: {m}, public_key: '{public[m]}'" + ("" if nats_url else f", url: '{url}'") + "}")
            extra = f"exchange: {{nats: {{servers: ['{nats_url}']}}}}\n" if nats_url else ""
            (d / "node.yaml").write_text(f"node: {s}\nprivate_key_file: node.key\npeers:\n" + "\n".join(peers) +
                                         f"\nexchange_interval: {args.interval}\n{extra}")
            cmd = [sys.executable, "-m", "geodns", "serve", "--zones", str(tmp / "zones"), "--geoip", "none",
                   "--listen", f"{hosts[s]}:{ports[s][0]}", "--admin", f"{hosts[s]}:{ports[s][1]}",
                   "--admin-token", TOKEN, "--workers", "1", "--node", str(d / "node.yaml")]
            procs[s] = subprocess.Popen(cmd, stdout=(d / "serve.log").open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})

        # the agents' side: their peer routes (http) or the bucket (nats)
        async def route(request: web.Request) -> web.Response:
            agent = request.match_info["agent"]
            await request.read()
            body = encode({"v": 2, "node": agent, "sent_at": time.time(), "drains": []})
            headers = agents.signers[agent].sign("reply", request.headers.get("X-Geodns-Node", ""), body,
                                                 nonce=request.headers[NONCE_HEADER])
            return web.Response(body=body, headers={**headers, "Content-Type": CONTENT_TYPE})

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{agent}" + OBSERVATIONS_PATH, route)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, sim_host, sim_port).start()
        runners.append(runner)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        kv = nc = None
        if nats_url:
            import nats

            nc = await nats.connect(nats_url)
            js = nc.jetstream()
            for _ in range(100):
                with contextlib.suppress(Exception):
                    kv = await js.key_value("geodns-views")
                    break
                await asyncio.sleep(0.2)

        async def agents_loop() -> None:
            while True:
                started = time.monotonic()
                await agents.probe(http)
                if kv is not None:
                    await asyncio.gather(*(kv.put(f"views.{key_token(a)}", envelope(
                        agents.signers[a].sign(KIND, "nats:geodns", b := agents.message(a)), b)) for a in agent_names),
                        return_exceptions=True)
                else:
                    async def push(a: str, s: str) -> None:
                        body = agents.message(a)
                        headers = {**agents.signers[a].sign("push", s, body), "Content-Type": CONTENT_TYPE}
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                            async with http.post(f"http://{hosts[s]}:{ports[s][1]}{OBSERVATIONS_PATH}", data=body,
                                                 headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as r:
                                await r.read()
                    await asyncio.gather(*(push(a, s) for a in agent_names for s in servers))
                await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))

        sim = asyncio.create_task(agents_loop())
        r00 = {f"198.18.0.{j + 1}" for j in range(args.endpoints)}
        deadline = time.monotonic() + 60
        async def ask_all() -> dict[str, set[str] | None]:
            # in threads: a slow node must not stop the agents' loop
            got = await asyncio.gather(*(asyncio.to_thread(answers, hosts[s], ports[s][0]) for s in servers))
            return dict(zip(servers, got, strict=True))

        while not all(a == r00 for a in (await ask_all()).values()):
            if time.monotonic() > deadline:
                got = {s: sorted(a or [])[:3] for s, a in (await ask_all()).items()}
                raise SystemExit(f"{exchange}: the fleet did not answer r00 within 60 s: {got}; "
                                 f"see {tmp}/s1/serve.log")
            await asyncio.sleep(0.5)
        await asyncio.sleep(args.interval * 3)
        cpu0 = {s: proc_cpu(p.pid) for s, p in procs.items()}
        bytes0 = {s: await peer_bytes(http, f"{hosts[s]}:{ports[s][1]}") for s in servers}
        t0 = time.monotonic()
        await asyncio.sleep(args.steady)
        elapsed = time.monotonic() - t0
        cpu = [(proc_cpu(procs[s].pid) - cpu0[s]) / elapsed for s in servers]
        sent = [(await peer_bytes(http, f"{hosts[s]}:{ports[s][1]}") - bytes0[s]) / elapsed for s in servers]
        killed = time.monotonic()
        await runners[0].cleanup()
        gone_at = {}
        while len(gone_at) < len(servers) and time.monotonic() - killed < 30:
            for s, a in (await ask_all()).items():
                if s not in gone_at and a is not None and not (a & r00):
                    gone_at[s] = time.monotonic() - killed
            await asyncio.sleep(0.05)
        sim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sim
        if nc is not None:
            await nc.close()
        await http.close()
        return {"failover_last": max(gone_at.values()) if len(gone_at) == len(servers) else float("inf"),
                "failover_first": min(gone_at.values(), default=float("inf")),
                "bytes": sum(sent) / len(sent), "cpu": sum(cpu) / len(cpu), "cpu_max": max(cpu)}
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for r in runners[1:]:
            await r.cleanup()
        stack.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exchange", choices=["http", "nats", "both"], default="both")
    ap.add_argument("--serving", type=int, default=5)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--regions", type=int, default=20)
    ap.add_argument("--endpoints", type=int, default=100)
    ap.add_argument("--observers", type=int, default=3, help="observers per endpoint (k of N)")
    ap.add_argument("--interval", type=float, default=1.0, help="probe interval and exchange period, seconds")
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of steady state measured")
    args = ap.parse_args()
    rows = []
    for exchange in (["http", "nats"] if args.exchange == "both" else [args.exchange]):
        with tempfile.TemporaryDirectory(prefix="geodns-fleet-") as tmp:
            r = asyncio.run(run(exchange, args, Path(tmp)))
        rows.append((exchange, r))
        print(f"{exchange}: {r}", file=sys.stderr)
    n = args.serving + args.agents
    print(f"\n{args.serving} serving nodes + {args.agents} agents ({n} members), "
          f"{args.regions * args.endpoints} targets, {args.observers} observers each, period {args.interval}s, "
          f"fall {FALL}\n")
    print("| exchange | region dies -> first node drops it | -> last node | peer bytes/s per serving node "
          "(sent + received) | CPU per serving node (mean / max) |")
    print("|---|---|---|---|---|")
    for exchange, r in rows:
        print(f"| {exchange} | {r['failover_first']:.2f} s | {r['failover_last']:.2f} s | {r['bytes'] / 1000:.0f} kB/s "
              f"| {r['cpu'] * 100:.0f}% / {r['cpu_max'] * 100:.0f}% of a core |")


if __name__ == "__main__":
    main()
