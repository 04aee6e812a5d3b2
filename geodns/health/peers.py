"""Observation exchange between nodes over HTTP; each node signs for itself.

Every `exchange_interval` a node POSTs its latest views and the drains it
holds to each peer at `/v1/peer/observations`; the peer answers with its own
(push-pull), so a node that just restarted learns every peer's views with its
first push.

Identity: every node has its own Ed25519 key (`geodns.health.keys`) and the
public key of every peer in its settings. A message carries

    X-Geodns-Node:       the sender's name
    X-Geodns-Timestamp:  epoch seconds
    X-Geodns-Nonce:      32 hex digits, fresh per request
    X-Geodns-Signature:  ed25519=<base64 signature>

over `geodns-peer-v2`, the kind (`push`, `reply`, `health`), the sender, the
recipient, the timestamp, the nonce and the SHA-256 of the body, one per
line. The signature is checked under the key listed for the name the message
claims, so a node can only ever speak as itself; naming the recipient stops
a message for one peer being replayed to another. A reply is signed by the
peer that answers and carries the request's nonce, so it answers that request
and no other. Pushes are remembered by (sender, nonce) for the replay window
and refused a second time.

Bodies are JSON (NaN and Infinity refused), compressed with zlib: views are
rows of `[target, state, since, until, at, seq, detail]`, times relative to
`sent_at` and details listed once, so 10,000 targets fit in a few hundred
kilobytes. The peer routes read their body with their own limit
(`MAX_BODY`), not the admin app's.

`GET /v1/health` (this node's status, endpoints and drains included) needs a
signature of kind `health` from a peer, or the admin bearer token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from geodns.health import keys, strictjson

__all__ = [
    "NODE_HEADER",
    "TIMESTAMP_HEADER",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "CONTENT_TYPE",
    "OBSERVATIONS_PATH",
    "HEALTH_PATH",
    "ADMIN_TOKEN",
    "MAX_BODY",
    "MAX_CONTAINERS",
    "MAX_DECODED",
    "MAX_VALUES",
    "Rejected",
    "Verifier",
    "encode",
    "decode",
    "add_routes",
    "push",
]

NODE_HEADER = "X-Geodns-Node"
TIMESTAMP_HEADER = "X-Geodns-Timestamp"
NONCE_HEADER = "X-Geodns-Nonce"
SIGNATURE_HEADER = "X-Geodns-Signature"
CONTENT_TYPE = "application/vnd.geodns.peer+json+zlib"
OBSERVATIONS_PATH = "/v1/peer/observations"
HEALTH_PATH = "/v1/health"
ADMIN_TOKEN = web.AppKey("peer_admin_token", str)
"""Set on an app by its owner (the admin app) to let `GET /v1/health` take its bearer token."""

MAX_BODY = 8 * 1024 * 1024
"""Compressed bytes a peer message may have: 10,000 targets take about 0.2 MB."""
MAX_DECODED = 64 * 1024 * 1024
"""Bytes a peer message may decompress to (a zlib bomb stops here)."""
MAX_CONTAINERS = 500_000
MAX_VALUES = 1_000_000
"""Arrays and objects, and values, a peer message may hold (counted, before it is
parsed, as its `[`/`{` and `,` bytes). 64 MiB of `{},` would parse into 22 M
dicts: 1.7 GB and 12 s of a blocked event loop. A full 10,000-target view is
about 10,000 arrays and 70,000 values; these caps hold the worst message to
about 150 MB and half a second."""
MAX_REPLAY_MEMORY = 200_000
_PROTOCOL = b"geodns-peer-v2"
_NONCE_CHARS = frozenset("0123456789abcdef")


class Rejected(Exception):
    """A peer message refused; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason

    @property
    def status(self) -> int:
        return {"malformed": 400, "unknown_peer": 403, "too_large": 413}.get(self.reason, 401)


def _signed_bytes(kind: str, sender: str, recipient: str, ts: str, nonce: str, body: bytes) -> bytes:
    fields = [kind, sender, recipient, ts, nonce, hashlib.sha256(body).hexdigest()]
    return b"\n".join([_PROTOCOL, *(f.encode() for f in fields)])


class Verifier:
    """This node's key, its peers' public keys, and the memory of recent nonces."""

    def __init__(self, name: str, key: Ed25519PrivateKey | None,
                 peer_keys: Mapping[str, Ed25519PublicKey], window: float = 30.0) -> None:
        self.name = name
        self.key = key
        self.peer_keys = dict(peer_keys)
        self.window = window
        self._seen: dict[tuple[str, str], float] = {}
        self._seen_per_sender: dict[str, int] = {}

    def sign(self, kind: str, recipient: str, body: bytes, *, nonce: str | None = None,
             now: float | None = None) -> dict[str, str]:
        """Headers that sign `body` as this node for `recipient`."""
        if self.key is None:
            raise Rejected("no_key", "this node has no private_key_file")
        ts = f"{time.time() if now is None else now:.3f}"
        nonce = nonce or secrets.token_hex(16)
        signature = self.key.sign(_signed_bytes(kind, self.name, recipient, ts, nonce, body))
        return {
            NODE_HEADER: self.name,
            TIMESTAMP_HEADER: ts,
            NONCE_HEADER: nonce,
            SIGNATURE_HEADER: "ed25519=" + base64.b64encode(signature).decode(),
        }

    def verify(self, kind: str, headers: Mapping[str, str], body: bytes, now: float, *,
               sender: str | None = None, nonce: str | None = None) -> str:
        """The name of the peer that signed this message; Rejected otherwise.

        `sender`/`nonce`: a reply must come from that peer and carry the nonce
        of our request (and is then not kept in the replay memory: the nonce
        already makes it unique)."""
        claimed, ts, given_nonce, sig = (headers.get(h) for h in
                                         (NODE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER))
        if not claimed or not ts or not given_nonce or not sig:
            raise Rejected("unsigned")
        if sender is not None and claimed != sender:
            raise Rejected("wrong_peer", f"reply signed as {claimed[:64]!r}, expected {sender!r}")
        public = self.peer_keys.get(claimed)
        if public is None or claimed == self.name:
            raise Rejected("unknown_peer", claimed[:64])
        try:
            at = float(ts)
        except ValueError:
            raise Rejected("bad_timestamp", ts[:40]) from None
        if not math.isfinite(at):
            raise Rejected("bad_timestamp", ts[:40])
        if abs(now - at) > self.window:
            raise Rejected("stale", f"timestamp {now - at:+.1f}s away from now")
        if not 16 <= len(given_nonce) <= 64 or not set(given_nonce) <= _NONCE_CHARS:
            raise Rejected("bad_nonce", given_nonce[:64])
        if nonce is not None and not hmac.compare_digest(given_nonce, nonce):
            raise Rejected("wrong_nonce", "the reply answers another request")
        scheme, _, encoded = sig.partition("=")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            signature = b""
        if scheme != "ed25519" or len(signature) != 64 or not keys.verify(
                public, signature, _signed_bytes(kind, claimed, self.name, ts, given_nonce, body)):
            raise Rejected("bad_signature")
        if nonce is None:
            self._remember(claimed, given_nonce, now)
        return claimed

    def _remember(self, sender: str, nonce: str, now: float) -> None:
        # A timestamp may be up to `window` ahead of our clock and is valid
        # until `window` after itself: remember nonces for twice the window.
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= 2 * self.window:
                break
            del self._seen[key]
            self._seen_per_sender[key[0]] -= 1
        if (sender, nonce) in self._seen:
            raise Rejected("replay")
        # Each peer gets its share of the memory: one peer sending thousands of
        # messages a second fills its own share, never the others' (which would
        # refuse every peer's pushes and isolate this node).
        if self._seen_per_sender.get(sender, 0) >= MAX_REPLAY_MEMORY // max(1, len(self.peer_keys)):
            raise Rejected("replay", "replay memory full for this peer")
        self._seen[(sender, nonce)] = now
        self._seen_per_sender[sender] = self._seen_per_sender.get(sender, 0) + 1


def encode(message: Any) -> bytes:
    return zlib.compress(json.dumps(message, separators=(",", ":"), allow_nan=False).encode(), 1)


def decode(body: bytes) -> Any:
    """A peer body back to JSON values: bounded inflate, strict JSON. Raises Rejected."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body, MAX_DECODED)
    except zlib.error as e:
        raise Rejected("malformed", f"not zlib: {e}") from None
    if inflater.unconsumed_tail:
        raise Rejected("too_large", f"decompresses to more than {MAX_DECODED} bytes")
    if not inflater.eof or inflater.unused_data:
        raise Rejected("malformed", "truncated or trailing bytes")
    containers = data.count(b"[") + data.count(b"{")
    if containers > MAX_CONTAINERS or containers + data.count(b",") > MAX_VALUES:
        raise Rejected("too_large", f"more than {MAX_CONTAINERS} arrays and objects or {MAX_VALUES} values")
    try:
        return strictjson.loads(data)
    except (ValueError, RecursionError) as e:
        raise Rejected("malformed", f"not JSON: {e}") from None


class PeerService(Protocol):
    """What the routes need from the health service."""

    verifier: Verifier

    def reply_body(self, sender: str, message: Any) -> bytes: ...

    def accept_peer_message(self, sender: str, message: Any, received: float) -> None:
        """Raise Rejected("malformed") if it cannot be taken."""

    def record_rejection(self, reason: str, claimed: str | None, remote: str | None,
                         detail: str = "") -> None: ...

    def record_bytes(self, sent: int, received: int) -> None: ...

    def status(self) -> dict[str, Any]: ...


async def _read_limited(stream: aiohttp.StreamReader, declared: int | None) -> bytes:
    """The whole body, refused past MAX_BODY (declared or actual)."""
    if declared is not None and declared > MAX_BODY:
        raise Rejected("too_large", f"Content-Length {declared} > {MAX_BODY}")
    chunks, size = [], 0
    while chunk := await stream.read(256 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise Rejected("too_large", f"body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _refused(service: PeerService, request: web.Request, e: Rejected) -> web.Response:
    service.record_rejection(e.reason, request.headers.get(NODE_HEADER), request.remote, str(e))
    return web.json_response({"error": e.reason}, status=e.status)


def add_routes(app: web.Application, service: PeerService) -> None:
    """Mount `POST /v1/peer/observations` and `GET /v1/health` on an app."""

    async def observations(request: web.Request) -> web.Response:
        now = time.time()
        try:
            body = await _read_limited(request.content, request.content_length)
            sender = service.verifier.verify("push", request.headers, body, now)
            message = decode(body)
            service.accept_peer_message(sender, message, now)
        except Rejected as e:
            return _refused(service, request, e)
        reply = service.reply_body(sender, message)
        service.record_bytes(len(reply), len(body))
        headers = service.verifier.sign("reply", sender, reply, nonce=request.headers[NONCE_HEADER])
        return web.Response(body=reply, headers={**headers, "Content-Type": CONTENT_TYPE})

    async def health(request: web.Request) -> web.Response:
        token = request.app.get(ADMIN_TOKEN)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if token and scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode("utf-8", "surrogateescape"), token.encode()):
            pass
        else:
            try:
                service.verifier.verify("health", request.headers, b"", time.time())
            except Rejected as e:
                return _refused(service, request, e)
        return web.json_response(service.status(), dumps=lambda o: json.dumps(o, indent=1))

    app.router.add_post(OBSERVATIONS_PATH, observations)
    app.router.add_get(HEALTH_PATH, health)


async def push(
    session: aiohttp.ClientSession,
    peer: str,
    url: str,
    body: bytes,
    verifier: Verifier,
    timeout: float,
) -> tuple[Any, float, int, int]:
    """POST our encoded message to one peer; return its verified reply, when it
    came, and the bytes sent and received.

    Raises Rejected (refused, or the reply failed verification),
    aiohttp.ClientError, or TimeoutError.
    """
    headers = verifier.sign("push", peer, body)
    async with session.post(
        url + OBSERVATIONS_PATH,
        data=body,
        headers={**headers, "Content-Type": CONTENT_TYPE},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        if resp.status != 200:
            text = await resp.content.read(4096)
            try:
                reason = json.loads(text).get("error", "")
            except (ValueError, AttributeError):
                reason = ""
            raise Rejected("refused_by_peer", f"HTTP {resp.status} {reason}".strip())
        reply = await _read_limited(resp.content, resp.content_length)
        received = time.time()
        verifier.verify("reply", resp.headers, reply, received, sender=peer, nonce=headers[NONCE_HEADER])
        return decode(reply), received, len(body), len(reply)
