"""Drains where they enter, and the one place they are kept on disk.

A drain comes from three places: the admin API (through `HealthService.drain`
or, on a node without health checking, straight into the admin state file),
a peer's message, and the node's own disk at start. Each goes through
`check_drain`, which turns raw JSON into a `Drain` or says why not: the target
must exist, `at` must be a finite time not beyond the allowed clock skew,
`by` and the reason are bounded. A drain that passes can never make a
recompute raise.

A drain is signed by the node that took it (`by`), so a node relays the
drains it holds but cannot make one up in another node's name.

`DrainStore` is the only code that writes drains: one file per node
(`state_dir/drains.json` with health checking, the `--state` file without),
written by `geodns.fsutil.write_json_atomic` (temporary file, fsync, rename). Reading is
defensive: a bad entry is dropped with a log line; a bad file is logged and
set aside, never a failed start.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from geodns.fsutil import write_json_atomic
from geodns.health import keys
from geodns.health.quorum import Drain

__all__ = [
    "MAX_BY",
    "MAX_REASON",
    "EARLIEST",
    "DrainRefused",
    "check_drain",
    "drain_to_json",
    "sign_drain",
    "DrainStore",
    "read_json_file",
]

log = logging.getLogger("geodns.health")

MAX_BY = 64
"""Characters of a node name in `by`."""
MAX_REASON = 500
"""Characters of a drain's reason (the admin API's limit too)."""
EARLIEST = 946684800.0
"""2000-01-01T00:00:00Z: no drain is older (a zero or negative `at` is a bug or an attack)."""


class DrainRefused(ValueError):
    """A drain that cannot be taken; the message says why."""


def _signed_bytes(target: str, active: bool, reason: str, at: float, by: str) -> bytes:
    return json.dumps(["geodns-drain-v1", target, active, reason, at, by],
                      separators=(",", ":"), ensure_ascii=True).encode()


def sign_drain(drain: Drain, key: Ed25519PrivateKey) -> Drain:
    sig = key.sign(_signed_bytes(drain.target, drain.active, drain.reason, drain.at, drain.by))
    return replace(drain, signature=base64.b64encode(sig).decode())


def check_drain(
    raw: Any,
    *,
    now: float,
    skew: float,
    known: Callable[[str], bool],
    key_of: Callable[[str], Ed25519PublicKey | None] | None = None,
) -> Drain:
    """A drain from JSON, validated; raises DrainRefused.

    `known(target)`: the target exists. `key_of(by)`: the public key that must
    have signed it (None from key_of: that node is not trusted); without
    `key_of` signatures are not checked."""
    if not isinstance(raw, Mapping):
        raise DrainRefused("not an object")
    target, active, reason, at, by = (raw.get(k) for k in ("target", "active", "reason", "at", "by"))
    if not isinstance(target, str) or not known(target):
        raise DrainRefused(f"unknown target {str(target)[:80]!r}")
    if not isinstance(active, bool):
        raise DrainRefused("active must be true or false")
    reason = "" if reason is None else reason
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise DrainRefused(f"reason must be a string of at most {MAX_REASON} characters")
    if not isinstance(by, str) or not 0 < len(by) <= MAX_BY or not by.isprintable():
        raise DrainRefused(f"by must be a node name of 1 to {MAX_BY} printable characters")
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise DrainRefused("at must be a number")
    try:
        at = float(at)
    except OverflowError:
        raise DrainRefused("at is out of range") from None
    if not math.isfinite(at) or at < EARLIEST or at > now + skew:
        raise DrainRefused(f"at {at!r} is not a time between 2000-01-01 and now + {skew:g}s")
    signature = raw.get("signature", "")
    if not isinstance(signature, str):
        raise DrainRefused("signature must be a string")
    if key_of is not None:
        public = key_of(by)
        if public is None:
            raise DrainRefused(f"signed by {by!r}, which is not a node this one trusts")
        try:
            sig = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            sig = b""
        if len(sig) != 64 or not keys.verify(public, sig, _signed_bytes(target, active, reason, at, by)):
            raise DrainRefused(f"signature does not verify under {by}'s key")
    return Drain(target, active, reason, at, by, signature)


def drain_to_json(drain: Drain) -> dict[str, Any]:
    return {"target": drain.target, "active": drain.active, "reason": drain.reason, "at": drain.at,
            "by": drain.by, "signature": drain.signature}


def read_json_file(path: str, what: str) -> Any:
    """A JSON file's content, or None (missing, unreadable or not JSON: logged)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.error("health cannot read %s path=%s error=%s", what, path, json.dumps(str(e)))
        return None
    try:
        # Not strictjson: one NaN must not cost the file's good entries. Every
        # value read from here is checked (check_drain refuses a NaN `at`).
        return json.loads(data or b"null")
    except (ValueError, RecursionError) as e:
        log.error("health %s is not valid JSON, ignored path=%s error=%s", what, path, json.dumps(str(e)))
        return None


class DrainStore:
    """One file of drains; `load` is defensive, `save` is the one writer.

    The document is `{"drains": [drain, ...]}`; other top-level keys found in
    the file are kept as they are (the admin state file also holds `down` and
    `up`). `reasons=True` keeps the admin state file's own form,
    `{"drains": {target: reason}}`, which the controller reads."""

    def __init__(self, path: str | None, *, reasons: bool = False) -> None:
        self.path = path
        self.reasons = reasons

    def load(self, accept: Callable[[Any], Drain]) -> dict[str, Drain]:
        """The drains `accept` takes (it raises DrainRefused to drop one, with a log line)."""
        if not self.path:
            return {}
        doc = read_json_file(self.path, "drains file")
        if doc is None:
            return {}
        raw = doc.get("drains") if isinstance(doc, dict) else None
        if isinstance(raw, dict):  # the admin state file's {target: reason}
            raw = [{"target": t, "active": True, "reason": r, "at": None, "by": None} for t, r in raw.items()]
        if not isinstance(raw, list):
            log.error("health drains file has no drains list, ignored path=%s", self.path)
            return {}
        out: dict[str, Drain] = {}
        for i, entry in enumerate(raw):
            try:
                d = accept(entry)
            except DrainRefused as e:
                log.error("health drain dropped from disk path=%s entry=%d error=%s", self.path, i,
                          json.dumps(str(e)))
                continue
            out[d.target] = d
        return out

    def save(self, drains: Iterable[Drain]) -> None:
        """Write every drain at once (atomic). Raises OSError."""
        if not self.path:
            return
        doc = read_json_file(self.path, "drains file")
        doc = dict(doc) if isinstance(doc, dict) else {}
        drains = sorted(drains, key=lambda d: d.target)
        if self.reasons:
            doc["drains"] = {d.target: d.reason for d in drains if d.active}
        else:
            doc["drains"] = [drain_to_json(d) for d in drains]
        write_json_atomic(self.path, doc)

