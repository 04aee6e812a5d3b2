"""`exchange: {nats: ...}` in the node settings: the NATS JetStream exchange.

```yaml
exchange:
  nats:
    servers: ["nats://10.0.0.4:4222", "nats://10.0.1.4:4222"]   # one or more, nats:// or tls://
    credentials: geodns.creds       # optional: a NATS .creds file (JWT + nkey), relative to the node file
    tls:                            # optional
      ca_file: nats-ca.pem          # trust these CAs for the servers' certificates
      cert_file: ams1.pem           # client certificate (mutual TLS), with key_file
      key_file: ams1-key.pem
    prefix: geodns                  # bucket names: PREFIX-views, PREFIX-drains (default geodns)
    replicas: 1                     # JetStream replicas of the buckets this node creates (1-5)
```

Pure validation: `parse_nats(raw, fail, base_dir)` returns `NatsSettings` or
raises what `fail(path, message)` makes (the caller's `file:line: field:`
error). With it, `peers` still lists every node's public key (messages stay
signed by each node's own key) but their `url` is optional: health views never
go over HTTP then.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["NatsSettings", "NatsTls", "parse_nats"]

_KEYS = {"servers", "credentials", "tls", "prefix", "replicas"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file"}
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SERVER = re.compile(r"(nats|tls)://[^\s/]+")


@dataclass(frozen=True, slots=True)
class NatsTls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...]
    """NATS URLs, tried in turn and on reconnect."""
    credentials: str | None = None
    """A `.creds` file (absolute after parsing)."""
    tls: NatsTls | None = None
    prefix: str = "geodns"
    """Names this cluster's buckets (`PREFIX-views`, `PREFIX-drains`): two clusters can share a NATS."""
    replicas: int = 1


def parse_nats(raw: Any, fail: Callable[[str, str], Exception], base_dir: str) -> NatsSettings:
    """Validate `exchange.nats`; `fail("exchange.nats.servers", "...")` builds the error to raise."""
    where = "exchange.nats"
    if not isinstance(raw, dict):
        raise fail(where, "expected a mapping (servers, credentials, tls, prefix, replicas)")
    if importlib.util.find_spec("nats") is None:
        raise fail(where, "needs the nats-py package: pip install 'geodns[nats]'")
    for key in raw:
        if key not in _KEYS:
            raise fail(f"{where}.{key}", f"unknown setting (known: {', '.join(sorted(_KEYS))})")
    servers = raw.get("servers")
    if isinstance(servers, str):
        servers = [servers]
    if not isinstance(servers, list) or not servers:
        raise fail(f"{where}.servers", "required: a list of NATS URLs (nats://HOST:PORT or tls://HOST:PORT)")
    for s in servers:
        if not isinstance(s, str) or not _SERVER.fullmatch(s):
            raise fail(f"{where}.servers", f"{s!r} is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT)")

    def readable(path_key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise fail(path_key, f"expected a file name, got {value!r}")
        path = os.path.join(base_dir, value)
        if not os.access(path, os.R_OK):
            raise fail(path_key, f"cannot read {value!r}")
        return path

    credentials = raw.get("credentials")
    if credentials is not None:
        credentials = readable(f"{where}.credentials", credentials)
    tls = None
    raw_tls = raw.get("tls")
    if raw_tls is not None:
        if not isinstance(raw_tls, dict):
            raise fail(f"{where}.tls", "expected a mapping (ca_file, cert_file, key_file)")
        for key in raw_tls:
            if key not in _TLS_KEYS:
                raise fail(f"{where}.tls.{key}", f"unknown setting (known: {', '.join(sorted(_TLS_KEYS))})")
        files = {k: readable(f"{where}.tls.{k}", v) for k, v in raw_tls.items() if v is not None}
        if ("cert_file" in files) != ("key_file" in files):
            raise fail(f"{where}.tls", "cert_file and key_file go together (a client certificate and its key)")
        tls = NatsTls(**files)
    prefix = raw.get("prefix", "geodns")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise fail(f"{where}.prefix", f"expected 1-32 letters, digits, '-' or '_', got {prefix!r}")
    replicas = raw.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise fail(f"{where}.replicas", f"expected an integer from 1 to 5, got {replicas!r}")
    return NatsSettings(tuple(servers), credentials, tls, prefix, replicas)
