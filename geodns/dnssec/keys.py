"""Zone signing keys: generate, read and write them, and derive DNSKEY, DS and key tags.

One combined signing key (CSK, flags 257) per zone by default, algorithm 13
(ECDSA P-256 with SHA-256, signed deterministically per RFC 6979) or 15
(Ed25519, deterministic by construction). The files follow BIND's layout, so
other tools can read them: `K<zone>.+<alg>+<tag>.key` holds the DNSKEY in
presentation form, `K<zone>.+<alg>+<tag>.private` (mode 0600) the private key
in "Private-key-format: v1.3" with the key's timing lines.

A key's state comes from those timing lines and drives what the zone shows:

- `published`: in the DNSKEY RRset, signs nothing (a pre-published successor);
- `active`: published, signs, and appears in CDS/CDNSKEY (RFC 7344);
- `retired`: neither published nor used; kept on disk until removed.

This module imports nothing else from geodns: the config loader reads key
files through it to check them, and the signer uses the same values.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ALGORITHMS = {13: "ECDSAP256SHA256", 15: "ED25519"}
"""The algorithms we sign with (RFC 8624: both MUST be supported by validators)."""
DEFAULT_ALGORITHM = 13
CSK_FLAGS = 257
"""ZONE (256) | SEP (1): one key signs everything, the parent's DS points at it."""
STATES = ("published", "active", "retired")


class KeyFileError(Exception):
    """A key file that cannot be read or does not belong to the zone; says which and why."""


@dataclass(frozen=True, slots=True)
class Key:
    """One zone key, as read from its two files."""

    zone: str
    """Absolute, lower case, without the trailing dot."""
    algorithm: int
    flags: int
    public: bytes
    """The DNSKEY public key field (P-256: x || y; Ed25519: the 32 raw bytes)."""
    private: bytes = b""
    """The raw private key (P-256: the 32-byte scalar; Ed25519: the 32-byte seed)."""
    state: str = "active"
    created: int = 0
    """Unix time of creation (for `geodns keys list`)."""

    @property
    def rdata(self) -> bytes:
        """DNSKEY RDATA: flags, protocol 3, algorithm, public key (RFC 4034 2.1)."""
        return struct.pack("!HBB", self.flags, 3, self.algorithm) + self.public

    @property
    def tag(self) -> int:
        return key_tag(self.rdata)

    @property
    def basename(self) -> str:
        return f"K{self.zone}.+{self.algorithm:03d}+{self.tag:05d}"

    @property
    def published(self) -> bool:
        return self.state in ("published", "active")

    @property
    def signing(self) -> bool:
        return self.state == "active"

    def signer(self) -> Signer:
        return Signer(self)


class Signer:
    """The private half of a key, loaded once: `sign(data) -> the RRSIG signature field`."""

    __slots__ = ("key", "_private", "sign")

    def __init__(self, key: Key):
        self.key = key
        if key.algorithm == 13:
            self._private = ec.derive_private_key(int.from_bytes(key.private, "big"), ec.SECP256R1())
            self.sign = self._sign_ecdsa
        elif key.algorithm == 15:
            self._private = ed25519.Ed25519PrivateKey.from_private_bytes(key.private)
            self.sign = self._private.sign
        else:
            raise KeyFileError(f"algorithm {key.algorithm} is not supported (13 or 15)")

    def _sign_ecdsa(self, data: bytes) -> bytes:
        # RFC 6979 deterministic ECDSA: the same RRset signed over the same window by
        # any node gives the same RRSIG. RFC 6605: r and s, 32 bytes each.
        der = self._private.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def key_tag(rdata: bytes) -> int:
    """RFC 4034 appendix B."""
    total = 0
    for i, byte in enumerate(rdata):
        total += byte if i & 1 else byte << 8
    total += (total >> 16) & 0xFFFF
    return total & 0xFFFF


def name_wire(name: str) -> bytes:
    """An absolute name (no trailing dot, lower case) in uncompressed wire form."""
    out = bytearray()
    for label in name.split(".") if name else ():
        raw = label.encode("ascii")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def ds_rdata(key: Key, digest_type: int = 2) -> bytes:
    """DS RDATA (RFC 4034 5.1; digest type 2 = SHA-256, RFC 4509)."""
    if digest_type != 2:
        raise ValueError("only SHA-256 DS records (digest type 2) are made")
    digest = hashlib.sha256(name_wire(key.zone) + key.rdata).digest()
    return struct.pack("!HBB", key.tag, key.algorithm, digest_type) + digest


def ds_text(key: Key, ttl: int = 3600) -> str:
    """The DS record in presentation format, to hand to the parent."""
    rdata = ds_rdata(key)
    return f"{key.zone}. {ttl} IN DS {key.tag} {key.algorithm} 2 {rdata[4:].hex().upper()}"


def dnskey_text(key: Key, ttl: int | None = None) -> str:
    ttl_part = f" {ttl}" if ttl is not None else ""
    b64 = base64.b64encode(key.public).decode()
    return f"{key.zone}.{ttl_part} IN DNSKEY {key.flags} 3 {key.algorithm} {b64}"


def generate(zone: str, algorithm: int = DEFAULT_ALGORITHM, state: str = "active", now: float | None = None) -> Key:
    """A new key pair for `zone` (no files written)."""
    zone = zone.rstrip(".").lower()
    if algorithm == 13:
        private = ec.generate_private_key(ec.SECP256R1())
        numbers = private.private_numbers()
        public = numbers.public_numbers.x.to_bytes(32, "big") + numbers.public_numbers.y.to_bytes(32, "big")
        secret = numbers.private_value.to_bytes(32, "big")
    elif algorithm == 15:
        private = ed25519.Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives import serialization

        secret = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raise ValueError(f"algorithm {algorithm} is not supported (13 or 15)")
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    return Key(zone, algorithm, CSK_FLAGS, public, secret, state, int(now if now is not None else time.time()))


def _stamp(when: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(when))


def _unstamp(text: str) -> int:
    import calendar

    return calendar.timegm(time.strptime(text, "%Y%m%d%H%M%S"))


def write(key: Key, directory: str | Path, now: float | None = None) -> tuple[Path, Path]:
    """Write the key's two files (the private one with mode 0600); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time() if now is None else now
    public_path = directory / f"{key.basename}.key"
    private_path = directory / f"{key.basename}.private"
    public_path.write_text(
        f"; This is a combined signing key (CSK), keyid {key.tag}, for {key.zone}.\n"
        f"; Created: {_stamp(key.created)}\n"
        f"{dnskey_text(key)}\n"
    )
    lines = [
        "Private-key-format: v1.3",
        f"Algorithm: {key.algorithm} ({ALGORITHMS[key.algorithm]})",
        f"PrivateKey: {base64.b64encode(key.private).decode()}",
        f"Created: {_stamp(key.created)}",
        f"Publish: {_stamp(key.created)}",
    ]
    if key.state in ("active", "retired"):
        lines.append(f"Activate: {_stamp(key.created if key.state == 'active' else now)}")
    if key.state == "retired":
        lines.append(f"Inactive: {_stamp(now)}")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(private_path, 0o600)  # also when the file existed with looser bits
    return public_path, private_path


def read(public_path: str | Path) -> Key:
    """One key from its `.key` file and the `.private` beside it. Raises KeyFileError."""
    public_path = Path(public_path)
    private_path = public_path.with_suffix(".private")
    try:
        public_text = public_path.read_text()
        private_text = private_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {exc.filename if isinstance(exc, OSError) else public_path}: {exc}") from None
    record = None
    for line in public_text.splitlines():
        line = line.split(";", 1)[0].strip()
        if line:
            record = line.split()
            break
    try:
        if record is None:
            raise ValueError("no DNSKEY record")
        at = record.index("DNSKEY")
        owner = record[0].rstrip(".").lower()
        flags, protocol, algorithm = int(record[at + 1]), int(record[at + 2]), int(record[at + 3])
        public = base64.b64decode("".join(record[at + 4 :]), validate=True)
    except (ValueError, IndexError) as exc:
        raise KeyFileError(f"{public_path.name}: not a DNSKEY record ({exc})") from None
    if protocol != 3 or algorithm not in ALGORITHMS:
        raise KeyFileError(f"{public_path.name}: algorithm {algorithm} is not supported (13 or 15)")
    fields: dict[str, str] = {}
    for line in private_text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    try:
        secret = base64.b64decode(fields["PrivateKey"], validate=True)
        if int(fields["Algorithm"].split()[0]) != algorithm:
            raise ValueError("its algorithm differs from the .key file's")
        created = _unstamp(fields["Created"]) if "Created" in fields else 0
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"{private_path.name}: not a v1.3 private key ({exc})") from None
    state = "retired" if "Inactive" in fields else "active" if "Activate" in fields else "published"
    key = Key(owner, algorithm, flags, public, secret, state, created)
    if _public_of(key) != public:
        raise KeyFileError(f"{private_path.name}: the private key does not match the public key in {public_path.name}")
    return key


def _public_of(key: Key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if len(key.private) != 32:
        return b""
    if key.algorithm == 13:
        try:
            numbers = ec.derive_private_key(int.from_bytes(key.private, "big"), ec.SECP256R1()).public_key().public_numbers()
        except ValueError:
            return b""
        return numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    private = ed25519.Ed25519PrivateKey.from_private_bytes(key.private)
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load(zone: str, directory: str | Path) -> tuple[Key, ...]:
    """Every key of `zone` in `directory`, ordered by creation then tag. Raises KeyFileError
    for an unreadable or mismatched file of this zone (files of other zones are ignored)."""
    zone = zone.rstrip(".").lower()
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"{directory}: not a directory")
    keys = []
    for path in sorted(directory.glob(f"K{zone}.+*.key")):
        key = read(path)
        if key.zone != zone:
            raise KeyFileError(f"{path.name}: its DNSKEY is for {key.zone!r}, not {zone!r}")
        if path.stem != key.basename:
            raise KeyFileError(f"{path.name}: its key tag is {key.tag}, not the one in the file name")
        keys.append(key)
    return tuple(sorted(keys, key=lambda k: (k.created, k.tag)))


def set_state(key: Key, state: str, directory: str | Path) -> Key:
    """Move a key to `state` and rewrite its files."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    new = Key(key.zone, key.algorithm, key.flags, key.public, key.private, state, key.created)
    write(new, directory)
    return new
