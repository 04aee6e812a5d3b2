"""Node settings for health checking: who this node is, who its peers are.

```yaml
node: ams1                      # this node's name (unique in the cluster)
private_key_file: ams1.key      # this node's Ed25519 key (`geodns keygen`), relative to this file
peers:                          # every other node, serving or agent, with its public key
  - {name: nyc1, url: "http://10.0.1.53:8053", public_key: "ed25519:..."}
  - {name: sgp1, url: "http://10.0.2.53:8053", public_key: "ed25519:..."}
quorum: majority                # majority | any | all | k (number of observers saying down)
exchange_interval: 1.0          # seconds between pushes of our views to every peer
stale_intervals: 3              # an observer is dropped after this many check intervals of silence
replay_window: 30               # seconds a signed peer message stays valid
state_dir: /var/lib/geodns      # saved verdicts and drains (none: nothing saved)
max_probes_in_flight: 64
observer_only: false            # true for `geodns agent`
source_address: 10.0.0.53       # bind probes to this local address (optional)
listen: "10.0.0.53:8053"        # agent only: where to serve the peer routes (optional)
exchange:                       # optional: views and drains over NATS JetStream instead of HTTP pushes
  nats: {servers: ["nats://10.0.0.4:4222"]}   # see geodns.health.nats_settings; peers' urls optional then
```

Unknown keys are errors naming the file, line and field. `extra_keys` lets
the caller (the `serve` command's node file) accept its own keys in the same
file without this parser having to know them.

The old cluster-wide `secret` / `secret_file` are refused with a message that
says how to migrate: anyone holding a shared secret could speak for every
node, which is exactly what per-node keys prevent (docs/health.md).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from geodns.config import ConfigInvalid, error_text, read_yaml_file
from geodns.health import keys
from geodns.health.nats_settings import NatsSettings, parse_nats
from geodns.health.quorum import parse_quorum

__all__ = ["Peer", "NodeSettings", "NodeSettingsError", "load_node_settings", "parse_node_settings", "read_node_file"]


class NodeSettingsError(ValueError):
    """A node settings file is wrong; the message starts with `file:line: field:`."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    url: str
    """Base URL of the peer's admin/peer HTTP server, e.g. `http://10.0.1.53:8053`."""
    public_key: str = ""
    """The peer's Ed25519 public key, `ed25519:<base64>`: only messages it signs are its."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    name: str
    """This node's name; observers are named by it in views, logs and status."""
    peers: tuple[Peer, ...] = ()
    private_key: Ed25519PrivateKey | None = field(default=None, repr=False, compare=False)
    """This node's signing key (None: no peer exchange possible)."""
    quorum: str | int = "majority"
    exchange_interval: float = 1.0
    stale_intervals: float = 3.0
    """A view older than this many check intervals (plus exchange slack) drops out."""
    replay_window: float = 30.0
    state_dir: str | None = None
    max_probes_in_flight: int = 64
    observer_only: bool = False
    source_address: str | None = None
    listen: str | None = None
    nats: NatsSettings | None = None
    """`exchange: {nats: ...}`: views and drains go through NATS JetStream, not HTTP pushes."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """Things wrong but not fatal (a key file readable by others), logged at start."""

    @property
    def members(self) -> tuple[str, ...]:
        """Every observer of the cluster, this node included, in a stable order."""
        return tuple(sorted({self.name, *(p.name for p in self.peers)}))


_KEYS = {
    "node", "peers", "private_key_file", "quorum", "exchange_interval", "stale_intervals",
    "replay_window", "state_dir", "max_probes_in_flight", "observer_only", "source_address",
    "listen", "exchange",
}


def read_node_file(path: str) -> Any:
    """The node settings file parsed once, with the line of every key (`geodns.config`'s YAML
    reader), for each reader of a part of it. Raises NodeSettingsError (`file:line: ...`)."""
    try:
        return read_yaml_file(path)
    except ConfigInvalid as exc:
        raise NodeSettingsError(str(exc)) from None


def load_node_settings(path: str, extra_keys: Collection[str] = ()) -> NodeSettings:
    """Read and validate a node settings YAML file. Raises NodeSettingsError."""
    return parse_node_settings(read_node_file(path), path, extra_keys, base_dir=os.path.dirname(path))


def parse_node_settings(
    data: Any,
    source: str = "<settings>",
    extra_keys: Collection[str] = (),
    base_dir: str = ".",
) -> NodeSettings:
    """Validate the parsed file (`read_node_file`; a plain mapping gives errors without lines)."""

    def fail(key: str, msg: str) -> NodeSettingsError:
        return NodeSettingsError(error_text(source, data, key, msg))

    if not isinstance(data, dict):
        raise NodeSettingsError(f"{source}: expected a mapping of settings")
    for key in ("secret", "secret_file"):
        if key in data:
            raise fail(key, "the shared peer secret is no longer accepted: whoever holds it can speak for "
                            "every node. Give each node its own key: run `geodns keygen --out DIR` on each, "
                            "set private_key_file here and each peer's public_key in `peers` (see the "
                            "migration section of docs/health.md)")
    for key in data:
        if key not in _KEYS and key not in extra_keys:
            known = ", ".join(sorted(_KEYS))
            raise fail(str(key), f"unknown setting (known: {known})")

    def number(key: str, default: float, minimum: float = 0.0, integer: bool = False) -> Any:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise fail(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if value < minimum or (minimum == 0 and not integer and value == 0):
            raise fail(key, f"must be {'at least ' + str(minimum) if minimum else 'positive'}")
        return value

    def text(key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(key, f"expected a string, got {value!r}")
        return value

    name = text("node")
    if not name:
        raise fail("node", "required: this node's name")

    nats = None
    exchange = data.get("exchange")
    if exchange is not None:
        if not isinstance(exchange, dict) or set(exchange) != {"nats"}:
            raise fail("exchange", "expected {nats: {servers: [...], ...}} (without it, the built-in "
                                   "HTTP exchange pushes to every peer's url)")
        nats = parse_nats(exchange["nats"], fail, base_dir)

    peers: list[Peer] = []
    raw_peers = data.get("peers") or []
    if not isinstance(raw_peers, list):
        raise fail("peers", "expected a list of {name, url}")
    for i, p in enumerate(raw_peers):
        if nats is not None and isinstance(p, dict) and "url" not in p:
            p = {**p, "url": ""}  # over NATS a peer needs no URL (zone sync uses one when given)
        if not isinstance(p, dict) or set(p) - {"name", "url", "public_key"} \
                or not all(isinstance(p.get(k), str) for k in ("name", "url", "public_key")):
            want = "" if nats is not None else "url: http://HOST:PORT, "
            raise fail("peers", f"item {i}: expected {{name: NAME, {want}"
                                f"public_key: 'ed25519:...'}}, got {p!r}")
        if (nats is None or p["url"]) and not p["url"].startswith(("http://", "https://")):
            raise fail("peers", f"item {i}: url must start with http:// or https://")
        if not p["name"] or p["name"] == name or any(q.name == p["name"] for q in peers):
            raise fail("peers", f"item {i}: duplicate node name {p['name']!r}")
        try:
            public = keys.public_key_text(keys.parse_public_key(p["public_key"]))
        except keys.KeyFileError as e:
            raise fail("peers", f"item {i} ({p['name']}): public_key: {e}") from None
        if any(q.public_key == public for q in peers):
            raise fail("peers", f"item {i} ({p['name']}): public_key is already another peer's: "
                                "every node needs its own key")
        peers.append(Peer(p["name"], p["url"].rstrip("/"), public))

    private_key = None
    warnings: list[str] = []
    key_file = text("private_key_file")
    if key_file is not None:
        try:
            private_key, warnings = keys.load_private_key(os.path.join(base_dir, key_file))
        except keys.KeyFileError as e:
            raise fail("private_key_file", str(e)) from None
        own = keys.public_key_text(private_key)
        for p in peers:
            if p.public_key == own:
                raise fail("peers", f"{p.name}: public_key is this node's own key")
    elif nats is not None:
        raise fail("exchange.nats", "needs private_key_file: every message is signed by this node's own "
                                    "Ed25519 key (`geodns keygen --out DIR` writes one)")
    elif peers:
        raise fail("private_key_file", "required with peers: this node's Ed25519 key "
                                       "(`geodns keygen --out DIR` writes one)")

    try:
        quorum = parse_quorum(data.get("quorum", "majority"))
    except ValueError as e:
        raise fail("quorum", str(e)) from e

    observer_only = data.get("observer_only", False)
    if not isinstance(observer_only, bool):
        raise fail("observer_only", f"expected true or false, got {observer_only!r}")
    state_dir = text("state_dir")
    if state_dir is not None:
        state_dir = os.path.join(base_dir, state_dir)

    return NodeSettings(
        name=name,
        peers=tuple(peers),
        private_key=private_key,
        quorum=quorum,
        exchange_interval=float(number("exchange_interval", 1.0)),
        stale_intervals=float(number("stale_intervals", 3.0, minimum=1)),
        replay_window=float(number("replay_window", 30.0)),
        state_dir=state_dir,
        max_probes_in_flight=number("max_probes_in_flight", 64, minimum=1, integer=True),
        observer_only=observer_only,
        source_address=text("source_address"),
        listen=text("listen"),
        nats=nats,
        warnings=tuple(warnings),
    )
