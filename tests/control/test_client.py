"""`geodns status | drain | undrain | reload` against a real node."""

from __future__ import annotations

import json
import urllib.request

import pytest

from geodns.cli import build_parser
from geodns.control.client import format_status
from tests.control.conftest import TOKEN, Node, a_records, free_port


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def test_status_prints_regions(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "--admin", node.admin]) == 0
    out = capsys.readouterr().out
    assert "generation" in out and "gslb.example.test" in out
    assert "eu-west" in out and "192.0.2.30" in out
    with urllib.request.urlopen(f"http://{node.admin}/v1/status", timeout=5) as r:
        region = json.load(r)["regions"]["eu-west"]
    assert region["state"] == "up" and {e["state"] for e in region["endpoints"]} == {"up"}


def test_status_shows_how_each_verdict_was_reached() -> None:
    """The STATE column is the verdict's state: capitals when it keeps the target out of
    answers, and up-but-unproven states (unknown, fallback) in their own words."""
    endpoint = {"address": "192.0.2.30", "cause": ""}
    doc = {
        "generation": 3, "zones": [], "now": 0,
        "regions": {
            "eu-west": {"up": True, "state": "unknown", "cause": "no observer has decided yet", "endpoints": [
                {**endpoint, "up": True, "state": "unknown"}, {**endpoint, "address": "192.0.2.31", "up": True, "state": "fallback"}]},
            "us-east": {"up": False, "state": "forced", "cause": "marked down", "endpoints": [{**endpoint, "up": False, "state": "forced"}],
                        "balancer": {"up": False, "cause": "haproxy www: 0/3 servers up", "state": "down"}},
            "ap-southeast": {"up": False, "cause": "written by an older node", "endpoints": []},
        },
    }
    doc["drain_history"] = {"eu-west": [{"revision": 1, "active": True, "by": "n1", "at": -90, "reason": "kernel"},
                                        {"revision": 2, "active": False, "by": "n2", "at": -30, "reason": ""}]}
    lines = format_status(doc).splitlines()
    at = lines.index("drain history (NATS), newest first:")
    assert lines[at + 1:at + 3] == ["  30s ago eu-west undrained by n2", "  90s ago eu-west drained by n1: kernel"]
    assert any(line.startswith("eu-west") and " unknown " in line for line in lines)
    assert any("192.0.2.30" in line and "unknown" in line for line in lines)
    assert any("192.0.2.31" in line and "fallback" in line for line in lines)
    assert any(line.startswith("us-east") and " FORCED " in line for line in lines)
    assert "  balancer DOWN: haproxy www: 0/3 servers up" in lines
    assert any(line.startswith("ap-southeast") and " DOWN " in line for line in lines)


def test_drain_and_undrain(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["drain", "eu-west", "--reason", "kernel upgrade", "--admin", node.admin, "--token", TOKEN]) == 0
    assert "drained eu-west: kernel upgrade" in capsys.readouterr().out
    assert a_records(node.query("www.gslb.example.test", "81.2.69.160")) == ["192.0.2.10"]
    assert run(["status", "--admin", node.admin]) == 0
    out = capsys.readouterr().out
    assert "DRAINED" in out and "kernel upgrade" in out and "recent verdict changes" in out
    with urllib.request.urlopen(f"http://{node.admin}/v1/status", timeout=5) as r:
        assert json.load(r)["regions"]["eu-west"]["state"] == "drained"
    assert run(["undrain", "eu-west", "--admin", node.admin, "--token", TOKEN]) == 0
    assert "undrained eu-west" in capsys.readouterr().out
    assert a_records(node.query("www.gslb.example.test", "81.2.69.160")) == ["192.0.2.30"]


def test_token_from_the_environment(node: Node, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GEODNS_ADMIN_TOKEN", TOKEN)
    assert run(["reload", "--admin", node.admin]) == 0
    assert "reloaded: generation" in capsys.readouterr().out


def test_errors_are_clear_and_non_zero(node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEODNS_ADMIN_TOKEN", raising=False)
    assert run(["drain", "eu-west", "--admin", node.admin]) == 1
    assert "bearer token" in capsys.readouterr().err
    assert run(["drain", "atlantis", "--admin", node.admin, "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert "unknown target 'atlantis'" in err and "known targets:" in err and "eu-west" in err
    (node.zones / "broken.yaml").write_text("zone: broken.test\nregions: {x: {coordinates: [1]}}\n")
    assert run(["reload", "--admin", node.admin, "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert "reload refused" in err and "broken.yaml:" in err
    port = free_port("127.0.5.10")
    assert run(["status", "--admin", f"127.0.5.10:{port}"]) == 1
    assert "cannot reach the admin API" in capsys.readouterr().err


def test_a_reader_that_leaves_is_no_traceback(node: Node) -> None:
    """`geodns status | head -1`: the pipe closes before the command writes; it
    exits quietly (141, as a shell reports SIGPIPE), not with a BrokenPipeError."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "geodns", "status", "--admin", node.admin],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
