"""Node identity: one Ed25519 key pair per node.

A node signs every peer message (and the replies it gives) with its private
key; every other node holds its public key in its settings, next to its name.
A message is accepted only when it verifies under the key listed for the name
it claims, so holding one node's key lets you speak for that node only, and
removing a peer's entry from the others' settings revokes it.

The private key is a PKCS#8 PEM file (`geodns keygen`, or
`openssl genpkey -algorithm ed25519`); a public key is written
`ed25519:<base64 of the 32 raw bytes>`.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "PUBLIC_PREFIX",
    "KeyFileError",
    "generate",
    "load_private_key",
    "parse_public_key",
    "public_key_text",
    "verify",
    "write_private_key",
]

PUBLIC_PREFIX = "ed25519:"


class KeyFileError(ValueError):
    """A key file or public key text is unusable; the message says why."""


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """`ed25519:<base64>` (the prefix may be left out). Raises KeyFileError."""
    body = text.strip()
    if body.startswith(PUBLIC_PREFIX):
        body = body[len(PUBLIC_PREFIX):]
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError("not base64: expected ed25519:<base64 of 32 bytes> (geodns keygen prints it)") from None
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_private_key(path: str) -> tuple[Ed25519PrivateKey, list[str]]:
    """Read a PEM private key; return it and warnings (e.g. a readable mode). Raises KeyFileError."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    warnings = []
    if stat.S_IMODE(mode) & 0o077:
        warnings.append(f"{path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                        "chmod 600 it")
    return key, warnings


def write_private_key(path: str, key: Ed25519PrivateKey) -> None:
    """Write a new key file with mode 0600; never overwrite one."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
