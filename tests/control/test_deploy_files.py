"""deploy/: files that cannot run here are at least parsed and checked."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from geodns.cli import build_parser
from geodns.control import latency_probe
from geodns.control.controller import load_config
from geodns.control.cookie_settings import COOKIE_KEYS, load_cookie_secrets
from geodns.health.settings import load_node_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def unit_options(path: Path) -> dict[str, list[str]]:
    """systemd's format: sections, Key=Value, repeated keys, backslash continuations."""
    options: dict[str, list[str]] = defaultdict(list)
    section = ""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        options[f"{section}.{key.strip()}"].append(value.strip())
    return options


def serve_args(argv: list[str]) -> None:
    """The arguments must be ones `geodns serve` accepts, and turn response rate limiting on
    with the numbers docs/runbook.md documents."""
    assert argv[:2] == ["geodns", "serve"], argv
    args = build_parser().parse_args(argv[1:])
    assert (args.rrl_rate, args.rrl_slip, args.rrl_window) == (50, 2, 2), argv
    assert not args.rrl_log_only
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    assert "--rrl-rate 50 --rrl-slip 2 --rrl-window 2" in runbook


def test_systemd_unit_is_hardened_and_binds_53_only() -> None:
    o = unit_options(DEPLOY / "systemd" / "geodns.service")
    assert o["Service.DynamicUser"] == ["yes"]
    assert o["Service.NoNewPrivileges"] == ["yes"]
    assert o["Service.AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert o["Service.CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictNamespaces", "RestrictSUIDSGID",
                "LockPersonality", "MemoryDenyWriteExecute", "SystemCallFilter", "RestrictAddressFamilies"):
        assert o[f"Service.{key}"], key
    assert o["Service.ProtectSystem"] == ["strict"]
    assert o["Service.StateDirectory"] == ["geodns"]
    assert "kill -HUP $MAINPID" in o["Service.ExecReload"][0]
    exec_start = shlex.split(o["Service.ExecStart"][0])
    assert exec_start[0].endswith("/geodns")
    serve_args(["geodns", *exec_start[1:]])
    assert "--state" in exec_start and exec_start[exec_start.index("--state") + 1].startswith("/var/lib/geodns/")
    assert o["Install.WantedBy"] == ["multi-user.target"]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _pip_install(command: str) -> list[str] | None:
    """`[python3 -m] pip install [opts] TARGET` -> ['pip', 'install', TARGET] (options dropped)."""
    words = shlex.split(command)
    if words[:2] in (["python3", "-m"], ["python", "-m"]):
        words = words[2:]
    if words[:2] != ["pip", "install"]:
        return None
    return ["pip", "install", *[w for w in words[2:] if not w.startswith("-")]]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip().lstrip("$ ")
            commands.extend(part.strip() for part in line.split("&&") if part.strip())
    return commands


def test_dockerfile_runs_the_readme_commands() -> None:
    steps = dockerfile_instructions(DEPLOY / "Dockerfile")
    runs = [cmd for op, rest in steps if op == "RUN" for cmd in rest.split("&&")]
    pips = [p for p in map(_pip_install, runs) if p]
    assert pips == [["pip", "install", "."]], runs
    readme = readme_commands()
    readme_pips = [p for p in map(_pip_install, readme) if p]
    # The README installs the same project (editable or not): `pip install [-e] .`
    assert ["pip", "install", "."] in readme_pips, readme
    cmd = [yaml.safe_load(rest) for op, rest in steps if op == "CMD"]
    assert len(cmd) == 1 and isinstance(cmd[0], list)
    serve_args(cmd[0])
    assert any(c.startswith("geodns serve") for c in readme), readme
    assert ("USER", "65534:65534") in steps
    assert any(op == "EXPOSE" and "53/udp" in rest and "53/tcp" in rest for op, rest in steps)


def _with_project_path() -> dict[str, str]:
    """The environment for running a deploy script against this checkout's geodns."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(DEPLOY.parent), os.environ.get("PYTHONPATH")]))}


def test_compose_runs_three_regions_with_backends(tmp_path: Path) -> None:
    doc = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = doc["services"]
    nodes = {n: s for n, s in services.items() if n.startswith("geodns-")}
    # The node files are templates: the one-shot `demo-keys` service fills in keys and the
    # cookie secret made at first start. Run that same script here, as the service does.
    keygen = services["demo-keys"]
    assert keygen["restart"] == "no" and "demo-nodes:/etc/geodns/nodes" in keygen["volumes"]
    made = tmp_path / "nodes"
    run = subprocess.run([sys.executable, str(DEPLOY / "compose" / "demo_keys.py"), str(DEPLOY / "compose" / "nodes"),
                          str(made)], capture_output=True, text=True, timeout=30, env=_with_project_path())
    assert run.returncode == 0, run.stderr
    assert not list((DEPLOY / "compose").rglob("*.key")), "no private key of the demo is in the repository"
    backends = {n: s for n, s in services.items() if n.startswith("backend-")}
    assert len(nodes) == 3 and len(backends) == 3
    config = load_config(DEPLOY / "compose" / "zones")
    (zone,) = config.zones
    ips = {n: s["networks"]["gslb"]["ipv4_address"] for n, s in services.items() if "networks" in s}
    assert set(zone.regions) == {n.removeprefix("geodns-") for n in nodes}
    for name, region in zone.regions.items():
        assert [str(e.address) for e in region.endpoints] == [ips[f"backend-{name}"]]
        assert region.check is not None
    assert sorted(str(a) for ns in zone.nameservers for a in ns.glue) == sorted(ips[n] for n in nodes)
    cookie_secrets: set[bytes] = set()
    for name, service in nodes.items():
        region = name.removeprefix("geodns-")
        serve_args(service["command"])
        node_file = service["command"][service["command"].index("--node") + 1]
        local = made / Path(node_file).name
        assert (made / "keys" / f"{region}.key").stat().st_mode & 0o077 == 0
        settings = load_node_settings(str(local), extra_keys=(*COOKIE_KEYS, *latency_probe.KEYS))
        assert settings.name == region
        # Each node measures as the region it stands in (a region of the zone).
        assert latency_probe.load_settings(str(local), {p.name for p in settings.peers}).region == region
        cookie_secrets.add(load_cookie_secrets(str(local)).current)
        assert {p.url for p in settings.peers} == {f"http://{ips[n]}:8053" for n in nodes if n != name}
        assert set(service["depends_on"]) == {*backends, "demo-keys"}
        assert service["depends_on"]["demo-keys"]["condition"] == "service_completed_successfully"
        assert any(v.startswith("./zones:/etc/geodns/zones") for v in service["volumes"])
        assert "demo-nodes:/etc/geodns/nodes:ro" in service["volumes"]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        udp = [p for p in service["ports"] if p.endswith("/udp")]
        assert udp and all(p.startswith("127.0.0.1:") for p in service["ports"])
    assert len(cookie_secrets) == 1, "every node shares one DNS cookie secret"
    # The admin token is made with the keys, never a default in the file: each node reads it
    # from the volume.
    token = made / "keys" / "admin-token"
    assert token.stat().st_mode & 0o077 == 0 and len(token.read_text().strip()) >= 16
    assert "change-me" not in (DEPLOY / "compose" / "compose.yaml").read_text()
    for service in nodes.values():
        env = service["environment"]
        assert "GEODNS_ADMIN_TOKEN" not in env
        assert env["GEODNS_ADMIN_TOKEN_FILE"] == "/etc/geodns/nodes/keys/admin-token"
    # Each node knows every other node's real public key, and a second run keeps them.
    first = {p.name: p.public_key for p in load_node_settings(str(made / "us-east.yaml"), extra_keys=(
        *COOKIE_KEYS, *latency_probe.KEYS)).peers}
    again = subprocess.run([sys.executable, str(DEPLOY / "compose" / "demo_keys.py"), str(DEPLOY / "compose" / "nodes"),
                            str(made)], capture_output=True, text=True, timeout=30, env=_with_project_path())
    assert again.returncode == 0 and first["eu-west"] in again.stdout and first["ap-southeast"] in again.stdout


def test_kubernetes_manifest(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "geodns.yaml").read_text()))
    by_kind = defaultdict(list)
    for d in docs:
        by_kind[d["kind"]].append(d)
    (cm,) = by_kind["ConfigMap"]
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    assert load_config(tmp_path).zones
    workloads = by_kind["Deployment"] + by_kind["DaemonSet"]
    assert len(workloads) == 1
    pod = workloads[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    serve_args(container["args"])
    assert {(p["containerPort"], p["protocol"]) for p in container["ports"]} >= {(5353, "UDP"), (5353, "TCP")}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["zones"]["configMap"]["name"] == cm["metadata"]["name"]
    assert container["args"][container["args"].index("--zones") + 1] == mounts["zones"]
    selector = workloads[0]["spec"]["selector"]["matchLabels"]
    dns = [s for s in by_kind["Service"] if any(p["port"] == 53 for p in s["spec"]["ports"])]
    assert len(dns) == 1
    assert {p["protocol"] for p in dns[0]["spec"]["ports"]} == {"UDP", "TCP"}
    assert dns[0]["spec"]["selector"] == selector
    names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in names for p in dns[0]["spec"]["ports"])


def test_delegation_examples_match_each_other() -> None:
    """BIND, Knot and the hosted-provider batch delegate to the same servers."""
    pairs = set()
    for name in ("bind.zone", "knot.zone"):
        for line in (DEPLOY / "delegation" / name).read_text().splitlines():
            fields = line.split(";")[0].split()
            if len(fields) == 5 and fields[3] in ("NS", "A"):
                pairs.add((name, fields[0], fields[3], fields[4]))
    bind = {p[1:] for p in pairs if p[0] == "bind.zone"}
    knot = {p[1:] for p in pairs if p[0] == "knot.zone"}
    assert bind == knot and len(bind) == 4
    import json

    batch = json.loads((DEPLOY / "delegation" / "route53-change-batch.json").read_text())
    values = {v["Value"] for c in batch["Changes"] for v in c["ResourceRecordSet"]["ResourceRecords"]}
    assert values == {p[2] for p in bind}
