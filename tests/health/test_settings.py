"""Node settings: YAML in, NodeSettings out, errors name file, line and field."""

from __future__ import annotations

import pytest

from geodns.health import keys
from geodns.health.settings import NodeSettingsError, Peer, load_node_settings

NYC = keys.public_key_text(keys.generate())
AGENT = keys.public_key_text(keys.generate())


def write(tmp_path, text: str) -> str:
    p = tmp_path / "node.yaml"
    p.write_text(text)
    return str(p)


def own_key(tmp_path, mode=0o600):
    key = keys.generate()
    path = tmp_path / "ams1.key"
    keys.write_private_key(str(path), key)
    path.chmod(mode)
    return key


def test_full_settings(tmp_path):
    key = own_key(tmp_path)
    s = load_node_settings(write(tmp_path, f"""
node: ams1
private_key_file: ams1.key
peers:
  - {{name: nyc1, url: "http://127.0.0.2:8053/", public_key: "{NYC}"}}
  - {{name: agent1, url: "http://127.0.0.3:8053", public_key: "{AGENT.removeprefix('ed25519:')}"}}
quorum: 2
exchange_interval: 0.5
state_dir: state
max_probes_in_flight: 8
observer_only: true
source_address: 127.0.0.1
"""))
    assert s.name == "ams1"
    assert s.peers == (Peer("nyc1", "http://127.0.0.2:8053", NYC), Peer("agent1", "http://127.0.0.3:8053", AGENT))
    assert keys.public_key_text(s.private_key) == keys.public_key_text(key)
    assert s.warnings == ()
    assert s.quorum == 2 and s.exchange_interval == 0.5 and s.max_probes_in_flight == 8
    assert s.observer_only and s.state_dir == str(tmp_path / "state")
    assert s.members == ("agent1", "ams1", "nyc1")
    assert "PRIVATE" not in repr(s) and "private_key" not in repr(s)


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
        (f"node: a\npeers:\n  - {{name: b, url: 'http://x', public_key: '{NYC}'}}\n",
         "private_key_file: required with peers"),
        ("node: a\npeers:\n  - {name: b, url: 'http://x'}\n", "item 0: expected {name: NAME, url"),
        (f"node: a\npeers:\n  - {{name: a, url: 'http://x', public_key: '{NYC}'}}\n", "duplicate node name"),
        ("node: a\npeers:\n  - {name: b, url: 'http://x', public_key: 'ed25519:AAAA'}\n",
         "item 0 (b): public_key: an Ed25519 public key is 32 bytes"),
        ("node: a\npeers:\n  - {name: b, url: 'http://x', public_key: 'not base64!'}\n", "public_key: not base64"),
        (f"node: a\npeers:\n  - {{name: b, url: 'http://x', public_key: '{NYC}'}}\n"
         f"  - {{name: c, url: 'http://y', public_key: '{NYC}'}}\n", "item 1 (c): public_key is already another peer's"),
        ("node: a\nprivate_key_file: missing.key\n", "node.yaml:2: private_key_file: cannot read"),
        ("node: a\nsecret: 0123456789abcdef\n", "node.yaml:2: secret: the shared peer secret is no longer accepted"),
        ("node: a\nsecret_file: peer.key\n", "secret_file: the shared peer secret is no longer accepted"),
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


def test_key_file_problems(tmp_path):
    key = own_key(tmp_path, mode=0o644)
    s = load_node_settings(write(tmp_path, "node: ams1\nprivate_key_file: ams1.key\n"))
    assert s.warnings and "readable by group or others" in s.warnings[0]
    mine = keys.public_key_text(key)
    with pytest.raises(NodeSettingsError, match="nyc1: public_key is this node's own key"):
        load_node_settings(write(tmp_path, f"node: ams1\nprivate_key_file: ams1.key\npeers:\n"
                                           f"  - {{name: nyc1, url: 'http://x', public_key: '{mine}'}}\n"))
    (tmp_path / "junk.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(NodeSettingsError, match="node.yaml:2: private_key_file: .*not an unencrypted PEM"):
        load_node_settings(write(tmp_path, "node: ams1\nprivate_key_file: junk.key\n"))


def test_keygen_writes_a_private_key_and_prints_the_public_one(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "keys"
    run = subprocess.run([sys.executable, "-m", "geodns", "keygen", "--out", str(out), "--name", "ams1"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    path = out / "ams1.key"
    assert path.stat().st_mode & 0o777 == 0o600
    key, warnings = keys.load_private_key(str(path))
    assert warnings == [] and keys.public_key_text(key) in run.stdout
    again = subprocess.run([sys.executable, "-m", "geodns", "keygen", "--out", str(out), "--name", "ams1"],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert keys.load_private_key(str(path))[0].private_bytes_raw() == key.private_bytes_raw()
    # --out naming the key file itself (a file, not a directory) says so, and writes nothing
    wrong = subprocess.run([sys.executable, "-m", "geodns", "keygen", "--out", str(path)],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2 and "is not a directory" in wrong.stderr, wrong.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ams1.key"]


def test_nats_exchange_settings(tmp_path):
    own_key(tmp_path)
    (tmp_path / "geodns.creds").write_text("creds")
    (tmp_path / "ca.pem").write_text("ca")
    s = load_node_settings(write(tmp_path, f"""
node: ams1
private_key_file: ams1.key
peers:
  - {{name: nyc1, public_key: "{NYC}"}}
  - {{name: agent1, url: "http://127.0.0.3:8053", public_key: "{AGENT}"}}
exchange:
  nats:
    servers: ["nats://127.0.0.1:4222", "tls://127.0.0.2:4222"]
    credentials: geodns.creds
    tls: {{ca_file: ca.pem}}
    prefix: fleet-eu
    replicas: 3
"""))
    assert s.nats is not None
    assert s.nats.servers == ("nats://127.0.0.1:4222", "tls://127.0.0.2:4222")
    assert s.nats.credentials == str(tmp_path / "geodns.creds")
    assert s.nats.tls.ca_file == str(tmp_path / "ca.pem") and s.nats.tls.cert_file is None
    assert (s.nats.prefix, s.nats.replicas) == ("fleet-eu", 3)
    # over NATS a peer's url is optional: its public key is what matters
    assert s.peers[0] == Peer("nyc1", "", NYC)
    assert load_node_settings(write(tmp_path, "node: ams1\n")).nats is None


@pytest.mark.parametrize("exchange, message", [
    ("exchange: nats", "node.yaml:4: exchange: expected {nats:"),
    ("exchange: {http: {}}", "node.yaml:4: exchange: expected {nats:"),
    ("exchange:\n  nats:\n    prefix: x", "node.yaml:5: exchange.nats.servers: required"),
    ("exchange:\n  nats:\n    servers: [http://127.0.0.1:4222]", "node.yaml:6: exchange.nats.servers: 'http://127.0.0.1:4222' is not a NATS URL"),
    ("exchange:\n  nats:\n    servers: [nats://a:1]\n    credentials: missing.creds", "node.yaml:7: exchange.nats.credentials: cannot read 'missing.creds'"),
    ("exchange:\n  nats:\n    servers: [nats://a:1]\n    tls: {cert_file: ams1.key}", "node.yaml:7: exchange.nats.tls: cert_file and key_file go together"),
    ("exchange:\n  nats:\n    servers: [nats://a:1]\n    tls:\n      ca: x", "node.yaml:8: exchange.nats.tls.ca: unknown setting"),
    ("exchange:\n  nats:\n    servers: [nats://a:1]\n    replicas: 7", "node.yaml:7: exchange.nats.replicas: expected an integer from 1 to 5"),
    ("exchange:\n  nats:\n    servers: [nats://a:1]\n    prefix: a.b", "node.yaml:7: exchange.nats.prefix: expected 1-32"),
    ("exchange:\n  nats:\n    servers: [nats://a:1]\n    subject: x", "node.yaml:7: exchange.nats.subject: unknown setting"),
])
def test_nats_exchange_errors_name_file_and_line(tmp_path, exchange, message):
    own_key(tmp_path)
    path = write(tmp_path, f"node: ams1\nprivate_key_file: ams1.key\npeers: [{{name: nyc1, public_key: '{NYC}'}}]\n{exchange}\n")
    with pytest.raises(NodeSettingsError) as e:
        load_node_settings(path)
    assert str(e.value).startswith(f"{tmp_path}/{message}"), str(e.value)


def test_without_nats_a_peer_needs_its_url_and_nats_needs_a_key(tmp_path):
    own_key(tmp_path)
    with pytest.raises(NodeSettingsError, match=r"node.yaml:3: peers: item 0: expected \{name: NAME, url:"):
        load_node_settings(write(tmp_path, f"node: ams1\nprivate_key_file: ams1.key\npeers: [{{name: nyc1, public_key: '{NYC}'}}]\n"))
    with pytest.raises(NodeSettingsError, match=r"node.yaml:2: exchange.nats: needs private_key_file"):
        load_node_settings(write(tmp_path, "node: ams1\nexchange: {nats: {servers: [nats://a:1]}}\n"))
