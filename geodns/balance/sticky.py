"""Signed sticky cookies: the balancer names a backend, the client cannot choose one.

The value is `<backend>.<mac>` where backend is the url-safe base64 of the
backend's key and mac the first 16 bytes of HMAC-SHA256(secret, pool + NUL +
backend), also url-safe base64. A cookie that does not verify is ignored as
if absent, and a fresh one is set; a cookie for a backend that is down or
draining is overridden the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, pool: str, backend: str) -> bytes:
    return hmac.new(secret, pool.encode() + b"\0" + backend.encode(), hashlib.sha256).digest()[:16]


def sign(secret: bytes, pool: str, backend: str) -> str:
    """The cookie value that pins a client to `backend` of `pool`."""
    return f"{_b64(backend.encode())}.{_b64(_mac(secret, pool, backend))}"


def verify(secret: bytes, pool: str, value: str | None) -> str | None:
    """The backend key a genuine cookie names, or None for a missing or forged one."""
    if not value or value.count(".") != 1:
        return None
    name_part, mac_part = value.split(".")
    try:
        backend = _unb64(name_part).decode()
        mac = _unb64(mac_part)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(mac, _mac(secret, pool, backend)):
        return None
    return backend
