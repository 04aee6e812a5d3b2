"""Response rate limiting (RRL): the table and the decision, without I/O.

An authoritative server on UDP is an amplifier: a spoofed 60-byte query can
send a 1 kB answer to a victim. As BIND and Knot do, responses are counted per
(client network, response class, name) and, past `rate` per second, dropped;
every `slip`-th dropped response is sent truncated instead (TC=1, the question
and nothing else), so that a real resolver behind that network retries over
TCP, which cannot be spoofed. TCP and queries with a valid server cookie
(RFC 7873) are never limited; neither are networks listed in `exempt`.

The unit counted (Knot's `rrl_classify`, BIND's `rrl_key`):

- the client network: the source address cut to /24 (IPv4) or /56 (IPv6);
- the response class, read from the response itself (`classify`): answer,
  NODATA, NXDOMAIN, referral, error;
- the name: the query name for answers and NODATA; the zone (the SOA owner in
  the authority section) for NXDOMAIN and the delegation (the NS owner) for
  referrals, so that a random-subdomain flood is one bucket, not millions;
  none for errors.

Each unit has a token bucket (Knot's design): it holds up to `rate x window`
tokens, gains `rate` per second, and a response takes one. So over any T
seconds a unit gets at most `rate x (T + window)` full responses.

The table is a fixed number of slots in one flat buffer (`Table`), indexed by
a keyed hash of the unit; a unit that lands on a slot another unit holds takes
it over (Knot does the same, with a slow start this table does not need:
the hash key is secret, so a client cannot aim at a slot). Memory is
`slots x 32` bytes whatever the traffic. The buffer may be shared memory:
with `--workers N` the kernel spreads a flood's packets over the workers, and
all of them debit the same buckets (`share="shared"`, the default); or each
worker has its own table at `rate / N` (`share="divided"`). A shared slot is
locked (fcntl, its 32 bytes) while it is read and written: unlocked, a worker
preempted between the two wrote back a stale bucket over the other's debits,
and a flood spread over two workers got 2 to 6 times the rate (measured).
Both hold a flood to the rate; `divided` gives a client whose packets the
kernel sends to one worker (one source port) only `rate / N` (bench/rrl.py).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from operator import itemgetter
from typing import Any

log = logging.getLogger("geodns.rrl")

__all__ = [
    "Action",
    "Limiter",
    "RRLSettings",
    "RRLSettingsError",
    "ResponseClass",
    "Table",
    "classify",
    "slip_response",
    "unit_name",
]


class ResponseClass(IntEnum):
    ANSWER = 0
    NODATA = 1
    NXDOMAIN = 2
    REFERRAL = 3
    ERROR = 4


CLASS_NAMES = tuple(c.name.lower() for c in ResponseClass)
"""Metric label values, by class number."""


class Action(IntEnum):
    SEND = 0
    DROP = 1
    SLIP = 2


# Members as module globals for the per-response code: an Enum member looked up on its
# class costs several times a global's in Python 3.11.
SEND, DROP, SLIP = Action.SEND, Action.DROP, Action.SLIP
ANSWER, NODATA, NXDOMAIN, REFERRAL, ERROR = tuple(ResponseClass)
_CLASS_BYTES = tuple(bytes((c,)) for c in ResponseClass)

ACTION_NAMES = ("sent", "dropped", "slipped")
LOGGED = "logged"
"""The metric action for a response that would have been limited, sent in full (`log_only`)."""


_second = itemgetter(1)

Trusted = Callable[[bytes, bytes], bool]
"""(query bytes, the client's address as 4 or 16 bytes) -> whether it carries a valid server cookie."""


class RRLSettingsError(ValueError):
    """A rate-limiting setting is wrong; the message names it."""


@dataclass(frozen=True, slots=True)
class RRLSettings:
    """What an operator sets (`geodns serve --rrl-*`, or `rrl:` in the node settings file)."""

    rate: float = 0
    """Responses per second per (network, class, name); 0 turns RRL off."""
    slip: int = 2
    """Every slip-th dropped response is sent truncated (0: never; 1: every one)."""
    window: float = 1.0
    """Seconds of `rate` a bucket holds: a quiet network may get a burst of rate x window."""
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    exempt: tuple[str, ...] = ()
    """CIDRs never limited (monitoring, a load generator, your own resolvers)."""
    log_only: bool = False
    """Count and log what would be limited, but send every response in full."""
    slots: int = 1 << 16
    """Table size (a power of two); 32 bytes each."""
    share: str = "shared"
    """With several workers: `shared` (one table in shared memory) or `divided` (rate / N each)."""

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1_000_000:
            raise RRLSettingsError(f"rrl rate: {self.rate!r} is not in 0..1000000 responses per second")
        if not 0 <= self.slip <= 100:
            raise RRLSettingsError(f"rrl slip: {self.slip!r} is not in 0..100")
        if not 0 < self.window <= 3600:
            raise RRLSettingsError(f"rrl window: {self.window!r} is not in (0, 3600] seconds")
        if not 1 <= self.ipv4_prefix <= 32:
            raise RRLSettingsError(f"rrl ipv4 prefix: {self.ipv4_prefix!r} is not in 1..32")
        if not 1 <= self.ipv6_prefix <= 128:
            raise RRLSettingsError(f"rrl ipv6 prefix: {self.ipv6_prefix!r} is not in 1..128")
        if self.slots < 16 or self.slots > 1 << 24 or self.slots & (self.slots - 1):
            raise RRLSettingsError(f"rrl slots: {self.slots!r} is not a power of two in 16..16777216")
        if self.share not in ("shared", "divided"):
            raise RRLSettingsError(f"rrl share: {self.share!r} is not 'shared' or 'divided'")
        for cidr in self.exempt:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise RRLSettingsError(f"rrl exempt: {cidr!r} is not a network: {exc}") from None

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        return (
            f"rate={self.rate:g}/s slip={self.slip} window={self.window:g}s prefix=/{self.ipv4_prefix},/{self.ipv6_prefix}"
            f" exempt={','.join(self.exempt) or 'none'}{' log-only' if self.log_only else ''} share={self.share}"
        )


_SETTING_TYPES: dict[str, Any] = {
    "rate": float, "slip": int, "window": float, "ipv4_prefix": int, "ipv6_prefix": int,
    "exempt": list, "log_only": bool, "slots": int, "share": str,
}


def settings_from_mapping(
    data: Any, base: RRLSettings | None = None, source: str = "rrl", fail: Callable[[str, str], Exception] | None = None
) -> RRLSettings:
    """The `rrl:` mapping of a node settings file, over `base`. Raises what `fail(key, message)`
    makes (the node file's `file:line: rrl.key: message`), by default RRLSettingsError
    `source: key: message`."""
    if fail is None:

        def fail(key: str, message: str) -> Exception:
            return RRLSettingsError(f"{source}: {key}: {message}" if key else f"{source}: {message}")

    if not isinstance(data, Mapping):
        raise fail("", "expected a mapping (rate, slip, window, ipv4_prefix, ipv6_prefix, exempt, log_only)")
    values: dict[str, Any] = {}
    for key, value in data.items():
        kind = _SETTING_TYPES.get(str(key))
        if kind is None:
            raise fail(str(key), f"unknown setting (known: {', '.join(sorted(_SETTING_TYPES))})")
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
        elif kind is list and isinstance(value, str | tuple):
            value = [value] if isinstance(value, str) else list(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise fail(str(key), f"expected {kind.__name__}, got {value!r}")
        if kind is list:
            if not all(isinstance(v, str) for v in value):
                raise fail(str(key), f"expected a list of CIDRs, got {value!r}")
            value = tuple(value)
        try:  # each value alone (the others' defaults are valid), so that an error names its key
            RRLSettings(**{str(key): value})
        except RRLSettingsError as exc:
            raise fail(str(key), str(exc).partition(": ")[2]) from None
        values[str(key)] = value
    fields = {name: getattr(base, name) for name in _SETTING_TYPES} if base is not None else {}
    fields.update(values)
    return RRLSettings(**fields)


# ---------------------------------------------------------------- reading a response


def classify(response: bytes) -> ResponseClass:
    """The response's class, from its header: rcode, AA and the answer count."""
    rcode = response[3] & 0xF
    if rcode == 3:
        return NXDOMAIN
    if rcode:
        return ERROR
    if response[6] or response[7]:
        return ANSWER
    if response[2] & 0x04:  # AA and nothing in the answer section
        return NODATA
    return REFERRAL


def _qname_end(response: bytes) -> int:
    """Offset of the root label ending the question name (-1 if there is none)."""
    pos = 12
    n = len(response)
    while pos < n:
        length = response[pos]
        if length == 0:
            return pos
        if length > 63:
            return -1
        pos += length + 1
    return -1


def unit_name(response: bytes, cls: ResponseClass) -> bytes:
    """The name a response is counted under (lower case, wire form without the root label)."""
    if cls == ERROR or len(response) < 13:
        return b""
    # The first zero byte ends the name, or is inside a label (binary labels are legal but
    # nobody sends them): then the unit is a prefix of the name, which only counts more.
    end = response.find(b"\x00", 12)
    if end < 0:
        return b""
    if cls != NXDOMAIN and cls != REFERRAL:
        return response[12:end].lower()
    # As BIND: an NXDOMAIN counts under its zone (the SOA's owner) and a referral under the
    # delegation (the NS records' owner), so a random-subdomain flood is one unit, not one per
    # name. That owner is the first authority record's, a pointer into the question name.
    if response[6] or response[7] or response[8:10] == b"\x00\x00" or end + 7 > len(response):
        return b"" if cls == NXDOMAIN else response[12:end].lower()
    head = response[end + 5]
    if head & 0xC0 == 0xC0:
        start = ((head & 0x3F) << 8) | response[end + 6]
        if 12 <= start <= end:
            return response[start:end].lower()
    return b""


def slip_response(response: bytes) -> bytes | None:
    """The truncated stand-in for a dropped response: its header with TC=1, its question, no records."""
    end = _qname_end(response)
    if end < 0 or end + 5 > len(response):
        return None
    flags = response[2] | 0x02  # TC
    return response[:2] + bytes((flags, response[3])) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + response[12:end + 5]


# ---------------------------------------------------------------- the table


_SLOT = struct.Struct("<QddII")  # tag, tokens, last visit (monotonic s), slip counter, flags
SLOT_SIZE = 32
_LIMITED = 1
"""Flag: this unit is being limited (logged once on entering, once on leaving)."""


class Table:
    """Fixed-size token buckets in one flat buffer (a bytearray, or shared memory).

    `debit(tag, now)` is the whole decision for one response of one unit: it
    refills the bucket for the time since its last visit, takes a token if there
    is one, and otherwise says whether this drop slips.
    """

    __slots__ = ("buf", "mask", "rate", "capacity", "slip", "_unpack", "_pack", "lock_fd")

    def __init__(self, slots: int, rate: float, window: float, slip: int, buf: Any = None, lock_fd: int | None = None):
        if buf is None:
            buf = bytearray(slots * SLOT_SIZE)
        if len(buf) < slots * SLOT_SIZE:
            raise ValueError(f"rrl table buffer of {len(buf)} bytes is too small for {slots} slots")
        self.buf = buf
        self.mask = slots - 1
        self.rate = float(rate)
        self.capacity = max(1.0, rate * window)
        self.slip = slip
        self._unpack = _SLOT.unpack_from
        self._pack = _SLOT.pack_into
        self.lock_fd = lock_fd
        """Shared memory: the slot is locked (fcntl, its 32 bytes) while it is read and written."""

    def debit(self, tag: int, now: float) -> tuple[Action, bool]:
        """(what to do with this response, whether the unit just entered or left limiting)."""
        tag = (tag & 0xFFFFFFFFFFFFFFFF) | 1  # 0 marks an empty slot
        offset = (tag >> 1 & self.mask) * SLOT_SIZE
        if self.lock_fd is None:
            return self._debit(tag, offset, now)
        fcntl.lockf(self.lock_fd, fcntl.LOCK_EX, SLOT_SIZE, offset)
        try:
            return self._debit(tag, offset, now)
        finally:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, SLOT_SIZE, offset)

    def _debit(self, tag: int, offset: int, now: float) -> tuple[Action, bool]:
        buf = self.buf
        old, tokens, last, slips, flags = self._unpack(buf, offset)
        if old != tag:
            tokens, last, slips, flags = self.capacity, now, 0, 0
        elif now > last:
            tokens += (now - last) * self.rate
            if tokens > self.capacity:
                tokens = self.capacity
            last = now
        if tokens >= 1.0:
            # A limited unit is let go (and logged) once its bucket is full again: the flood
            # paused for a window, not merely for the next token.
            if flags and tokens >= self.capacity:
                self._pack(buf, offset, tag, tokens - 1.0, last, 0, 0)
                return SEND, True
            self._pack(buf, offset, tag, tokens - 1.0, last, slips, flags)
            return SEND, False
        slip = self.slip
        # BIND's order: the first drop slips, then every slip-th.
        action = SLIP if slip and slips % slip == 0 else DROP
        self._pack(buf, offset, tag, tokens, last, (slips + 1) % 1_000_000, _LIMITED)
        return action, not flags


# ---------------------------------------------------------------- networks and exemptions


def _int_networks(cidrs: Iterable[str]) -> dict[int, list[tuple[int, int]]]:
    """Family size in bytes (4, 16) -> [(network value >> shift, shift)]."""
    out: dict[int, list[tuple[int, int]]] = {4: [], 16: []}
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        shift = net.max_prefixlen - net.prefixlen
        out[4 if net.version == 4 else 16].append((int(net.network_address) >> shift, shift))
    return out


class Limiter:
    """One data-plane process's view of RRL: settings, its table, the exempt networks.

    The transports hand it what they are about to send (`screen`, for a batch of
    (response, raw sockaddr) pairs from recvmmsg; `screen_one` for one response
    to a (host, port) address); it returns what to send instead. Everything it
    does per response that is not exempt costs one keyed hash and one table visit.
    """

    EXEMPT_MEMO = 16_384
    """Source addresses whose exemption is remembered (cleared when full)."""

    def __init__(self, settings: RRLSettings, table: Table | None = None, trusted: Trusted | None = None):
        self.settings = settings
        self.trusted = trusted
        """(query bytes, client address packed) -> whether the query carries a valid server cookie
        (`geodns.dns.server.cookie_trusted`): asked only of a response about to be limited."""
        self.table = table if table is not None else Table(settings.slots, settings.rate, settings.window, settings.slip)
        self.log_only = settings.log_only
        self._exempt = _int_networks(settings.exempt)
        self._memo: dict[bytes, bytes | None] = {}
        """Packed source address -> its network key, or None when exempt."""
        self._sockaddrs: dict[bytes, bytes | None] = {}
        """The same by raw sockaddr (address and port), as recvmmsg gives them: no slicing per query."""
        self._exempt_sockaddrs: set[bytes] = set()
        """The exempt ones among them: a batch from these alone is passed in one C-level check."""
        v4, v6 = settings.ipv4_prefix, settings.ipv6_prefix
        self._shift = {4: 32 - v4, 16: 128 - v6}
        self.limited = 0
        """Units that entered limiting (for the log: one line each, not one per drop)."""

    def network(self, packed: bytes) -> bytes | None:
        """The network key of a source address (4 or 16 bytes), or None if it is exempt."""
        memo = self._memo
        if packed in memo:
            return memo[packed]
        size = len(packed)
        value = int.from_bytes(packed, "big")
        key: bytes | None = None
        if not any(value >> shift == net for net, shift in self._exempt.get(size, ())):
            shift = self._shift[size]
            key = bytes((size,)) + ((value >> shift) << shift).to_bytes(size, "big")
        if len(memo) >= self.EXEMPT_MEMO:
            memo.clear()
        memo[packed] = key
        return key

    def decide(self, network: bytes, response: bytes, now: float, counts: dict, query: Any = None) -> Action:
        """The action for one response to a client of `network` (a key from `network`).
        `query` is called for (query bytes, client address) when the response would be
        limited, to ask `trusted` whether it carries a valid server cookie."""
        cls = classify(response)
        name = unit_name(response, cls)
        # Python's hash of bytes is SipHash keyed by the process's hash seed: secret, so a
        # client cannot aim units at one slot; workers sharing a table share the seed.
        action, changed = self.table.debit(hash(network + _CLASS_BYTES[cls] + name), now)
        if action is SEND:
            if changed:
                self._log_change(network, cls, name, action)
            return action
        if self.trusted is not None and query is not None:
            asked = query()
            # A client that returns our cookie is not spoofed (RFC 7873 5.2.4): it is not
            # limited (its response still took a token, as a spoofer's would).
            if asked is not None and self.trusted(*asked):
                counts[("cookie", CLASS_NAMES[cls])] = counts.get(("cookie", CLASS_NAMES[cls]), 0) + 1
                return SEND
        if changed:
            self._log_change(network, cls, name, action)
        label = (LOGGED if self.log_only else ACTION_NAMES[action], CLASS_NAMES[cls])
        counts[label] = counts.get(label, 0) + 1
        return SEND if self.log_only else action

    def screen(self, out: list, now: float, counts: dict, batch: list | None = None) -> list:
        """`out` (response, raw sockaddr) pairs as limited: dropped ones gone, slipped ones truncated.

        `batch` is the (query, sockaddr) list the responses answer, in the same order, with the
        same sockaddr objects (as BatchedUDP builds `out`): the query of a response about to be
        limited is found there, for its cookie."""
        if self._exempt_sockaddrs.issuperset(map(_second, out)):
            return out  # every client known and exempt (a trusted load): ~20 ns a response
        memo = self._sockaddrs
        get = memo.get
        kept = []
        find = _Finder(batch) if batch is not None and self.trusted is not None else None
        for item in out:
            response, addr = item
            net = get(addr, 0)
            if net == 0:
                # sockaddr_in: family (2 bytes), port, address at 4; sockaddr_in6: address at 8.
                net = self.network(addr[4:8] if addr[0] == 2 else addr[8:24])
                if len(memo) >= self.EXEMPT_MEMO:
                    memo.clear()
                    self._exempt_sockaddrs.clear()
                memo[addr] = net
                if net is None:
                    self._exempt_sockaddrs.add(addr)
            if net is None or len(response) < 12:
                kept.append(item)
                continue
            action = self.decide(net, response, now, counts, find and (lambda a=addr: find(a)))
            if action is SEND:
                kept.append(item)
            elif action is SLIP:
                truncated = slip_response(response)
                if truncated is not None:
                    kept.append((truncated, addr))
        return kept

    def screen_one(
        self, response: bytes, packed: bytes, now: float, counts: dict, query: bytes | None = None
    ) -> bytes | None:
        """One response to the client at `packed` (4 or 16 bytes), which asked `query`: what to
        send, or None."""
        net = self.network(packed)
        if net is None or len(response) < 12:
            return response
        asked = None if query is None else (lambda: (query, packed))
        action = self.decide(net, response, now, counts, asked)
        if action is SEND:
            return response
        return slip_response(response) if action is SLIP else None

    def _log_change(self, network: bytes, cls: ResponseClass, name: bytes, action: Action) -> None:
        size = network[0]
        prefix = (self.settings.ipv4_prefix if size == 4 else self.settings.ipv6_prefix)
        net = f"{ipaddress.ip_address(network[1:])}/{prefix}"
        if action is SEND:
            log.info("rrl leaves limiting network=%s class=%s name=%s", net, CLASS_NAMES[cls], _text(name))
            return
        self.limited += 1
        log.warning(
            "rrl limiting network=%s class=%s name=%s rate=%g/s%s",
            net, CLASS_NAMES[cls], _text(name), self.settings.rate, " (log-only: still answered)" if self.log_only else "",
        )



class _Finder:
    """The query of each response, found in the batch it came from (walking forward only)."""

    __slots__ = ("batch", "at")

    def __init__(self, batch: list):
        self.batch = batch
        self.at = 0

    def __call__(self, addr: bytes) -> tuple[bytes, bytes] | None:
        batch = self.batch
        while self.at < len(batch):
            data, source = batch[self.at]
            self.at += 1
            if source is addr:
                return data, addr[4:8] if addr[0] == 2 else addr[8:24]
        return None


def _text(name: bytes) -> str:
    """A wire-form name (no root label) as text, for a log line."""
    labels, pos = [], 0
    while pos < len(name):
        length = name[pos]
        labels.append(name[pos + 1:pos + 1 + length].decode("ascii", "backslashreplace"))
        pos += length + 1
    return ".".join(labels) + "." if labels else "."


@dataclass(frozen=True, slots=True)
class SharedTable:
    """Where a worker finds the node's table: an inherited memfd. The workers must also share
    the hash seed (PYTHONHASHSEED, which `WorkerPool` sets) to find a unit in the same slot."""

    fd: int
    slots: int


def create_shared(settings: RRLSettings) -> SharedTable:
    """A zeroed table in shared memory (memfd) for the workers of this node."""
    fd = os.memfd_create("geodns-rrl", os.MFD_CLOEXEC)
    os.ftruncate(fd, settings.slots * SLOT_SIZE)
    return SharedTable(fd, settings.slots)


def limiter_for_worker(
    settings: RRLSettings, workers: int, shared: SharedTable | None, trusted: Trusted | None = None
) -> Limiter:
    """The limiter of one of `workers` data-plane processes."""
    import mmap

    if shared is not None and settings.share == "shared":
        buf = mmap.mmap(shared.fd, shared.slots * SLOT_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        table = Table(settings.slots, settings.rate, settings.window, settings.slip, memoryview(buf), shared.fd)
        return Limiter(settings, table, trusted)
    rate = settings.rate / max(1, workers)
    return Limiter(settings, Table(settings.slots, rate, settings.window, settings.slip), trusted)
