"""Observation exchange between nodes over HTTP, signed with a shared secret.

Every `exchange_interval` a node POSTs its latest views and drains to each
peer at `/v1/peer/observations`; the peer answers with its own (push-pull),
so a node that just restarted learns every peer's views with its first push.

Both directions are signed: `X-Geodns-Timestamp` (epoch seconds) and
`X-Geodns-Signature: sha256=<hex HMAC-SHA256(secret, timestamp "\\n" body)>`.
A request is rejected (and counted by reason) when it is unsigned, its
timestamp is outside the replay window, its signature is wrong, the same
signature was already seen inside the window (a replay), its body is not a
valid message, or it comes from a node that is not a configured peer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web

__all__ = [
    "TIMESTAMP_HEADER",
    "SIGNATURE_HEADER",
    "OBSERVATIONS_PATH",
    "HEALTH_PATH",
    "Rejected",
    "Verifier",
    "sign",
    "signed_headers",
    "add_routes",
    "push",
]

TIMESTAMP_HEADER = "X-Geodns-Timestamp"
SIGNATURE_HEADER = "X-Geodns-Signature"
OBSERVATIONS_PATH = "/v1/peer/observations"
HEALTH_PATH = "/v1/health"


class Rejected(Exception):
    """A peer message refused; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"\n" + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = f"{time.time() if now is None else now:.3f}"
    return {
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(secret, ts, body),
        "Content-Type": "application/json",
    }


class Verifier:
    """Checks signatures and remembers recent ones to refuse replays."""

    def __init__(self, secret: bytes, window: float = 30.0) -> None:
        self.secret = secret
        self.window = window
        self._seen: dict[str, float] = {}

    def verify(self, headers: Mapping[str, str], body: bytes, now: float, *, replay: bool = True) -> None:
        """Raise Rejected unless the message is signed, fresh and new."""
        ts, sig = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
        if not ts or not sig:
            raise Rejected("unsigned")
        if not self.secret:
            raise Rejected("no_secret", "this node has no shared secret configured")
        try:
            at = float(ts)
        except ValueError:
            raise Rejected("bad_timestamp", ts[:40]) from None
        if abs(now - at) > self.window:
            raise Rejected("stale", f"timestamp {now - at:+.1f}s away from now")
        if not hmac.compare_digest(sign(self.secret, ts, body), sig):
            raise Rejected("bad_signature")
        if replay:
            for old in [s for s, t in self._seen.items() if now - t > self.window]:
                del self._seen[old]
            if sig in self._seen:
                raise Rejected("replay")
            self._seen[sig] = at


class PeerService(Protocol):
    """What the routes need from the health service."""

    verifier: Verifier

    def peer_message(self) -> dict[str, Any]: ...

    def accept_peer_message(self, message: dict[str, Any], received: float) -> None:
        """Raise Rejected("malformed" | "unknown_peer") if it cannot be taken."""

    def record_rejection(self, reason: str, remote: str | None) -> None: ...

    def status(self) -> dict[str, Any]: ...


def add_routes(app: web.Application, service: PeerService) -> None:
    """Mount `POST /v1/peer/observations` and `GET /v1/health` on an app."""

    async def observations(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        try:
            service.verifier.verify(request.headers, body, now)
            try:
                message = json.loads(body)
            except ValueError:
                raise Rejected("malformed", "not JSON") from None
            service.accept_peer_message(message, now)
        except Rejected as e:
            service.record_rejection(e.reason, request.remote)
            status = 400 if e.reason == "malformed" else 403 if e.reason == "unknown_peer" else 401
            return web.json_response({"error": e.reason}, status=status)
        reply = json.dumps(service.peer_message()).encode()
        return web.Response(body=reply, headers=signed_headers(service.verifier.secret, reply))

    async def health(request: web.Request) -> web.Response:
        return web.json_response(service.status(), dumps=lambda o: json.dumps(o, indent=1))

    app.router.add_post(OBSERVATIONS_PATH, observations)
    app.router.add_get(HEALTH_PATH, health)


async def push(
    session: aiohttp.ClientSession,
    url: str,
    message: dict[str, Any],
    verifier: Verifier,
    timeout: float,
) -> tuple[dict[str, Any], float]:
    """POST our message to one peer; return its signed reply and when it came.

    Raises Rejected (the reply failed verification), aiohttp.ClientError,
    or TimeoutError.
    """
    body = json.dumps(message).encode()
    async with session.post(
        url + OBSERVATIONS_PATH,
        data=body,
        headers=signed_headers(verifier.secret, body),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        reply = await resp.read()
        if resp.status != 200:
            try:
                reason = json.loads(reply).get("error", "")
            except (ValueError, AttributeError):
                reason = ""
            raise Rejected("refused_by_peer", f"HTTP {resp.status} {reason}".strip())
        received = time.time()
        # The reply answers our own fresh request: its timestamp and signature
        # are checked, the replay memory is not needed.
        verifier.verify(resp.headers, reply, received, replay=False)
        try:
            doc = json.loads(reply)
        except ValueError:
            raise Rejected("malformed", "reply not JSON") from None
        return doc, received
