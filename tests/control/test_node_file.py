"""The node settings file is read once, every part checked before the node does anything,
and every part's error says `file:line: field: message`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from netutil import free_port

from geodns.control import node_file
from geodns.dns.rrl import RRLSettings

REPO = Path(__file__).resolve().parents[2]
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
GOOD = f"""\
node: a
cookie_secret: "{SECRET}"
rrl:
  rate: 50
  exempt: 10.0.0.0/8
region: eu-west
latency_probe:
  rate: 5
zone_sync:
  interval: 2
"""


def test_every_part_from_one_read(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(GOOD)
    node = node_file.read(str(path))
    assert node.health.name == "a"
    assert node.cookies.current == bytes.fromhex(SECRET)
    assert node.rrl == RRLSettings(rate=50.0, exempt=("10.0.0.0/8",))
    assert (node.latency.region, node.latency.rate) == ("eu-west", 5.0)
    assert node.zone_sync.interval == 2.0
    path.write_text("node: a\n")
    node = node_file.read(str(path))
    assert (node.cookies, node.rrl, node.latency, node.zone_sync.interval) == (None, None, None, 5.0)


def test_the_file_is_opened_once(tmp_path):
    """A FIFO gives its text to one reader: a second open of it would wait for ever."""
    fifo = tmp_path / "node.yaml"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as f:
            f.write(GOOD)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    code = f"from geodns.control import node_file; print(node_file.read({str(fifo)!r}).rrl.rate)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (out.returncode, out.stdout.strip()) == (0, "50.0"), out.stderr
    writer.join(5)


@pytest.mark.parametrize(
    ("case", "text", "error"),
    [
        ("unknown top-level key", "node: a\ncolour: blue\n", ":2: colour: unknown setting"),
        ("YAML syntax", "node: a\nrrl: [\n", ":3: YAML syntax: "),
        ("duplicate key", "node: a\nnode: b\n", ":2: duplicate key 'node' (first at line 1)"),
        ("rrl unknown key", "node: a\nrrl:\n  rate: 10\n  slipp: 2\n", ":4: rrl.slipp: unknown setting (known: "),
        ("rrl out of range", "node: a\nrrl:\n  rate: -1\n", ":3: rrl.rate: -1.0 is not in 0..1000000 responses per second"),
        ("rrl wrong type", "node: a\nrrl:\n  slip: x\n", ":3: rrl.slip: expected int, got 'x'"),
        ("rrl bad network", "node: a\nrrl:\n  exempt: [10.0.0.0/8, 10.0.0.0/40]\n", ":3: rrl.exempt: '10.0.0.0/40' is not a network"),
        ("rrl not a mapping", "node: a\nrrl: 5\n", ":2: rrl: expected a mapping"),
        ("cookie secret", 'node: a\ncookie_secret: "abc"\n', ":2: cookie_secret: expected 32 hex digits"),
        ("latency", "node: a\nregion: eu\nlatency_probe:\n  top: 1.5\n", ":4: latency_probe.top: expected an integer"),
        ("zone sync", "node: a\nzone_sync:\n  push: 'yes'\n", ":3: zone_sync.push: expected true or false"),
        ("zone sync peers", "node: a\nzone_sync:\n  accept_from: [b]\n", ":3: zone_sync.accept_from: 'b' is not one of this node's peers"),
    ],
)
def test_every_part_says_file_line_and_field(tmp_path, case, text, error):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(node_file.NodeSettingsError) as info:
        node_file.read(str(path))
    assert str(info.value).startswith(f"{path}{error}"), (case, str(info.value))


@pytest.mark.slow
def test_a_refused_node_file_is_the_only_thing_said(tmp_path):
    """Refused before anything else: no cookie secret made, no zones loaded, no address claimed."""
    path = tmp_path / "node.yaml"
    path.write_text("node: a\nrrl:\n  rate: 10\n  slipp: 2\n")
    port = free_port("127.0.2.252")
    out = subprocess.run(
        [sys.executable, "-m", "geodns", "serve", "--listen", f"127.0.2.252:{port}", "--node", str(path),
         "--state", "none", "--log-format", "text"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"not starting: {path}:4: rrl.slipp: unknown setting "
                                                 "(known: exempt, ipv4_prefix, ipv6_prefix, log_only, rate, share, slip, slots, window)"), out.stderr
