"""Node settings: YAML in, NodeSettings out, errors name file, line and field."""

from __future__ import annotations

import pytest

from geodns.health.settings import NodeSettingsError, Peer, load_node_settings


def write(tmp_path, text: str) -> str:
    p = tmp_path / "node.yaml"
    p.write_text(text)
    return str(p)


def test_full_settings(tmp_path):
    (tmp_path / "peer.key").write_text("0123456789abcdef0123\n")
    s = load_node_settings(write(tmp_path, """
node: ams1
peers:
  - {name: nyc1, url: "http://127.0.0.2:8053/"}
  - {name: agent1, url: "http://127.0.0.3:8053"}
secret_file: peer.key
quorum: 2
exchange_interval: 0.5
state_dir: state
max_probes_in_flight: 8
observer_only: true
source_address: 127.0.0.1
"""))
    assert s.name == "ams1"
    assert s.peers == (Peer("nyc1", "http://127.0.0.2:8053"), Peer("agent1", "http://127.0.0.3:8053"))
    assert s.secret == b"0123456789abcdef0123"
    assert s.quorum == 2 and s.exchange_interval == 0.5 and s.max_probes_in_flight == 8
    assert s.observer_only and s.state_dir == str(tmp_path / "state")
    assert s.members == ("agent1", "ams1", "nyc1")
    assert "0123" not in repr(s)


def test_defaults(tmp_path):
    s = load_node_settings(write(tmp_path, "node: solo\n"))
    assert s.peers == () and s.quorum == "majority" and s.exchange_interval == 1.0
    assert s.state_dir is None and not s.observer_only


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node: a\ncolour: blue\n", "node.yaml:2: colour: unknown setting"),
        ("peers: []\n", "node: required"),
        ("node: a\nquorum: most\n", "node.yaml:2: quorum: quorum must be one of"),
        ("node: a\nexchange_interval: fast\n", "node.yaml:2: exchange_interval: expected a number"),
        ("node: a\npeers:\n  - {name: b, url: 'http://x'}\n", "secret: peers need a shared secret"),
        ("node: a\nsecret: 0123456789abcdef\npeers:\n  - {name: a, url: 'http://x'}\n", "duplicate node name"),
        ("node: a\nsecret_file: missing.key\n", "node.yaml:2: secret_file: cannot read missing.key"),
        ("node: a\nmax_probes_in_flight: 0\n", "max_probes_in_flight: must be at least 1"),
        ("- a\n", "expected a mapping"),
    ],
)
def test_errors(tmp_path, text, message):
    with pytest.raises(NodeSettingsError) as e:
        load_node_settings(write(tmp_path, text))
    assert message in str(e.value)


def test_extra_keys_for_the_callers_own_settings(tmp_path):
    s = load_node_settings(write(tmp_path, "node: a\nlisten_dns: 127.0.0.1:53\n"), extra_keys={"listen_dns"})
    assert s.name == "a"
