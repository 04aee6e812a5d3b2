"""The sans-I/O core: `answer(snapshot, query bytes, client address) -> bytes | None`.

Knows nothing of sockets or event loops. The hot path is a parse, one or two
dict lookups and a patch; everything else runs on a cache miss:

1. (qname, qtype) -> a prepared answer, or a marker saying the answer
   depends on the client (a steered name, or a CNAME to one);
2. for those, (qname, qtype, GeoIP record) -> prepared answer: one decision per
   place, shared by every network in the database that has that record (a
   miss storm of new networks costs a tree walk each, not a steering run).
   The ECS scope is the matched network's prefix, never a fixed /24. When a
   CIDR rule makes the address itself matter, the key is the network instead.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping

from geodns.config.model import IPAddress, Node
from geodns.dns.cache import Prepared
from geodns.dns.cookies import answer_cookie, echo_seconds_left
from geodns.dns.resolve import Resolution, name_of, prepare, resolve, steer
from geodns.dns.snapshot import CompiledZone, Snapshot, narrow_int
from geodns.dns.stats import AnswerLabel, Stats
from geodns.dns.wire import (
    CLASS_IN,
    Ignore,
    Query,
    Rcode,
    WireError,
    error_response,
    parse_query,
    patch,
    rcode_response,
)
from geodns.dnssec.zone import COMPACT_OK, SIGNED, echo_co, signed_key
from geodns.steer import Client
from geodns.steer.chain import remember
from geodns.steer.measured import V4_PREFIX, V6_PREFIX, key_of, network_key

_ERROR_LABELS = {rcode: AnswerLabel("", int(rcode), "", "") for rcode in Rcode}

log = logging.getLogger("geodns.dns")


class _Dependent:
    """Level-1 cache marker: the answer for this name depends on the client."""

    __slots__ = ("czone", "client_dependent", "deadline", "key", "name", "node", "nets", "measured")

    def __init__(self, czone: CompiledZone, key: tuple, name: str, node: Node | None = None):
        self.czone = czone
        self.node = node
        """The steered node when the name is itself steered (A/AAAA, no CNAME): a level-2
        miss then runs its chain (`steer`) without going through `resolve`."""
        self.nets = narrowing(czone, node)
        """IP version -> the CIDRs that may split this name's answers (see `narrowing`)."""
        self.measured = node.name in czone.latency_nodes if node is not None else bool(czone.latency_nodes)
        """A `latency` step may answer by the client's measured /24 (/48) (`geodns.steer.measured`)."""
        self.key = key
        """The level-1 key as first stored: its name bytes are shared by the levels below."""
        self.name = name
        """The query name in presentation form, for `resolve` on a level-2 miss."""
        self.client_dependent = True
        self.deadline = None


def answer(
    snap: Snapshot, data: bytes, client: str, now: float, udp: bool = True, stats: Stats | None = None
) -> bytes | None:
    """The response to one DNS message from `client` (its IP address) at `now` (Unix seconds,
    the transport's clock), or None to send nothing. Counts go to `stats` (a throwaway when
    the caller keeps none)."""
    if type(data) is not bytes:
        data = bytes(data)
    if stats is None:
        stats = Stats()
    if udp:
        # Level 0: this exact query was answered before (see AnswerCache). The UDP
        # transports inline the same lookup; this copy serves the other callers.
        hit = snap.cache.packets.get(data[2:])
        if hit is not None and (hit[1] is None or (hit[1] >= now and (hit[3] is None or hit[3] == client))):
            if hit[4] is stats.slots:
                stats.counts[hit[2]] += 1
            else:  # stored by another Stats (a test's, explain's): its slot means nothing here
                stats.count(hit[4].keys[hit[2]])
            stats.cache_hits += 1
            return data[:2] + hit[0]
    try:
        query = parse_query(data)
    except Ignore:
        return None
    except WireError as exc:
        stats.count_error(_ERROR_LABELS[exc.rcode], 0, udp)
        return error_response(exc)
    edns = query.edns
    cookie = None
    if edns is not None and edns.cookie is not None:
        # Every client cookie gets a server cookie, in errors too (RFC 7873 5.2); an invalid
        # server cookie only gets a new one (5.2.3-5.2.4). A cookie's answer is per client:
        # `patch` puts it in the cached body (and level 0 keeps it only for its client).
        try:
            cookie = answer_cookie(edns.cookie, client, now)[0]
        except (OSError, ValueError):  # not an IP address (a test's client name): no cookie
            cookie = None
    try:
        return _answer(snap, query, client, now, udp, stats, data, cookie)
    except Exception:  # noqa: BLE001 - no input may stop the server; SERVFAIL is the honest answer
        stats.internal_errors += 1
        failures = stats.internal_errors
        if failures <= 10 or failures % 1000 == 0:
            log.exception("internal error answering %r (failure %d)", query.qname, failures)
        stats.count_error(_ERROR_LABELS[Rcode.SERVFAIL], query.qtype, udp)
        return rcode_response(query, Rcode.SERVFAIL, cookie=cookie)


def _answer(
    snap: Snapshot,
    query: Query,
    client: str,
    now: float,
    udp: bool,
    stats: Stats,
    data: bytes = b"",
    cookie: bytes | None = None,
) -> bytes:
    if query.qclass != CLASS_IN:
        # Before any cache level: levels 1-2 are keyed without the class (level 0 has it).
        stats.count_error(_ERROR_LABELS[Rcode.REFUSED], query.qtype, udp)
        return rcode_response(query, Rcode.REFUSED, cookie=cookie)
    cache = snap.cache
    key = (query.qname.lower(), query.qtype)
    if snap.signed and query.edns is not None and query.edns.do:
        key = signed_key(key, data, query)
    entry = cache.get(key)
    if entry is None or (entry.deadline is not None and entry.deadline < now):
        entry = _first_level(snap, query, key, now, stats)
        if entry is None:
            stats.count_error(_ERROR_LABELS[Rcode.REFUSED], query.qtype, udp)
            return rcode_response(query, Rcode.REFUSED, cookie=cookie)
    by_source = False
    if entry.client_dependent:
        prepared, scope, by_source = _client_level(snap, query, entry, client, now, stats)
    else:
        stats.cache_hits += 1
        prepared, scope = entry, None
    body = prepared.body
    if body is None:
        index = prepared.pick()
        body = prepared.bodies[index]
        stats.count((prepared.meta[index], query.qtype, udp))
    else:
        table = stats.slots
        if prepared.slot_table is table:
            stat_slot = prepared.slots.get(mark := query.qtype << 1 | udp)
            if stat_slot is None:
                stat_slot = prepared.slots[mark] = table.slot((prepared.meta[0], query.qtype, udp))
        else:
            stat_slot = table.slot((prepared.meta[0], query.qtype, udp))
            if prepared.slot_table is None:  # the first Stats to count it keeps its slots here
                prepared.slot_table = table
                prepared.slots[query.qtype << 1 | udp] = stat_slot
        stats.counts[stat_slot] += 1
    edns = query.edns
    if edns is not None and edns.ecs is not None:
        # Echo the scope for answers that depend on the client; 0 for those that do not
        # (RFC 7871 7.2.1); a source prefix of 0 asks us not to use it at all.
        scope = scope if edns.ecs.source else 0
    response = patch(body, query, scope, udp, cookie)
    if key[1] & COMPACT_OK:
        response = echo_co(response)
    if udp and data and body is prepared.body:
        if cookie is None:
            if not by_source:
                # Same query bytes, same answer until the deadline: level 0 may serve it.
                cache.put_packet(data[2:], (response[2:], prepared.deadline, stat_slot, None, table))
        elif cookie == edns.cookie:
            # A valid server cookie of ours, echoed as it came: this client gets the same bytes
            # for the same query until the cookie is due for renewal. Level 0 may serve them
            # until then, to this source address only (the cookie is valid for it alone).
            deadline = now + echo_seconds_left(cookie, int(now))
            if prepared.deadline is not None and prepared.deadline < deadline:
                deadline = prepared.deadline
            cache.put_packet(data[2:], (response[2:], deadline, stat_slot, client, table))
    return response


def _first_level(snap: Snapshot, query: Query, key: tuple, now: float, stats: Stats):
    name = name_of(query.qname)
    czone = snap.find_zone(name)
    if czone is None:
        return None
    probe_client = _Probe()
    res = resolve(snap, czone, name, query.qtype, probe_client, now)
    if probe_client.used:
        entry = _Dependent(czone, key, name, _direct_node(res, name, query.qtype))
    elif key[1] & SIGNED and czone.signer is not None:
        entry = czone.signer.prepare(res, query.qname, query.qtype, query.qclass, bool(key[1] & COMPACT_OK), now)
    else:
        entry = prepare(res, query.qname, query.qtype, query.qclass, czone.zone.origin)
        stats.cache_misses += 1
    snap.cache.put(key, entry)
    return entry


def _direct_node(res: Resolution, name: str, qtype: int) -> Node | None:
    """The steered node when `name` is itself steered for this A/AAAA query (no CNAME in front)."""
    if res.steered_node is not None and not res.answer and res.steered_owner == name and qtype in (1, 28):
        return res.steered_node
    return None


def narrowing(czone: CompiledZone, node: Node | None) -> Mapping[int, tuple[tuple[int, int], ...]]:
    """The CIDRs an answer's scope must not straddle: for a name that is itself steered, its own
    chain's (another name's rule cannot change its answer); otherwise, through a CNAME or for
    other types, the zone's."""
    if node is not None:
        return czone.narrowing_by_node.get(node.name, czone.narrowing_ints)
    return czone.narrowing_ints


def narrowing_of(
    snap: Snapshot, czone: CompiledZone, name: str, qtype: int, now: float
) -> Mapping[int, tuple[tuple[int, int], ...]]:
    """`narrowing` for a query as the answer path decides it (for `geodns query` and the query log)."""
    probe = _Probe()
    res = resolve(snap, czone, name, qtype, probe, now)
    return narrowing(czone, _direct_node(res, name, qtype) if probe.used else None)


class _Probe:
    """A stand-in locator that records whether resolution needed the client at all."""

    __slots__ = ("used",)

    def __init__(self):
        self.used = False

    def __call__(self) -> Client:
        self.used = True
        return Client(None, None, None)


def client_address(query: Query, source: str) -> tuple[IPAddress, str]:
    """The address steering locates: the ECS subnet when given (source prefix > 0), else the sender."""
    edns = query.edns
    if edns is not None and edns.ecs is not None and edns.ecs.source:
        ecs = edns.ecs
        family = socket.AF_INET if ecs.family == 1 else socket.AF_INET6
        return ipaddress.ip_address(socket.inet_ntop(family, ecs.address)), "ECS"
    return sender_address(source), "source address"


def sender_address(source: str) -> IPAddress:
    """The query's source address (an IPv4-mapped IPv6 one as IPv4)."""
    address = ipaddress.ip_address(source.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


def locate(
    snap: Snapshot, czone: CompiledZone, address: IPAddress, source: str, nets: Mapping | None = None, name: str = ""
) -> tuple[Client, bool]:
    """Where the client is, and the network the answer may be shared with (its ECS scope),
    narrowed by `nets` (`narrowing_of` the query; the zone's CIDRs when not given) and, for a
    `name` with a latency step while measurements are in effect, to at least /24 (/48)."""
    geo = snap.geo
    location, prefix = geo.lookup(address) if geo is not None else (None, 0)
    nets = czone.narrowing_ints if nets is None else nets
    prefix, inside = narrow_int(int(address), address.max_prefixlen, prefix, nets[address.version])
    if snap.measured is not None and name in czone.latency_nodes:
        prefix = max(prefix, V4_PREFIX if address.version == 4 else V6_PREFIX)
    return Client(address, location, prefix, source), inside


def _client_level(snap: Snapshot, query: Query, entry: _Dependent, source: str, now: float, stats: Stats):
    """(prepared, scope, whether the source address decided) for a name whose answer depends on the client."""
    key, czone, name = entry.key, entry.czone, entry.name
    cache = snap.cache
    edns = query.edns
    ecs = edns.ecs if edns is not None else None
    if ecs is not None and ecs.source:
        # Straight from the ECS bytes: no ipaddress object unless steering runs.
        packed = ecs.address
        version, bits = (4, 32) if ecs.family == 1 else (6, 128)
        address, origin = None, "ECS"
    else:
        address, origin = client_address(query, source)
        packed, version, bits = address.packed, address.version, address.max_prefixlen
    geo = snap.geo
    # Finding the GeoIP network is the one GeoIP read per query; the record is
    # decoded only when steering runs (a level-2 miss).
    record, prefix = geo.find(packed) if geo is not None else (None, 0)
    nets = entry.nets[version]
    inside = False
    if nets:
        value = int.from_bytes(packed, "big")
        prefix, inside = narrow_int(value, bits, prefix, nets)
    measured = snap.measured
    resolver = None
    by_source = origin != "ECS"
    if measured is not None and entry.measured:
        # Measured networks are /24s (/48s): no scope may span one, and a measured one is
        # decided by its own row, so it gets its own cache entry. An ECS network nobody
        # measured is steered by its resolver's network, when that one is measured: the
        # answer then depends on the sender too (so level 0, keyed by the bytes, is not used).
        value = int.from_bytes(packed, "big")
        floor = V4_PREFIX if version == 4 else V6_PREFIX
        if prefix < floor:
            prefix = floor
        by_source = True
        if network_key(version, value) in measured.rows:
            inside = True
        elif origin == "ECS":
            try:
                sender = sender_address(source)
            except ValueError:  # not an address (an in-process caller's name for its client)
                sender = None
            if sender is not None and key_of(sender) in measured.rows:
                resolver = sender
    # Level 2: one decision per GeoIP record (a place), shared by every network that
    # has it; per network when a CIDR rule makes the address itself matter. The
    # name bytes come from the level-1 key (one object shared by every entry of a name).
    key2 = (key[0], key[1], version, value >> (bits - prefix), prefix) if inside else (key[0], key[1], "at", record)
    if resolver is not None:
        key2 = (*key2, "via", key_of(resolver))
    prepared = cache.places.get(key2)
    if prepared is not None and (prepared.deadline is None or prepared.deadline >= now):
        stats.cache_hits += 1
        return prepared, prefix if prepared.client_dependent else None, by_source
    stats.cache_misses += 1
    location = geo.location(record, packed) if geo is not None else None
    if address is None:
        address = ipaddress.IPv4Address(packed) if version == 4 else ipaddress.IPv6Address(packed)
    client = Client(address, location, prefix, origin, resolver)
    if entry.node is not None:
        res = steer(snap, czone, entry.node, name, query.qtype, client, now)
    else:
        res = resolve(snap, czone, name, query.qtype, lambda: client, now)
    signer = czone.signer if key[1] & SIGNED else None
    prepared = prepare_shared(
        snap, res, query.qname, query.qtype, query.qclass, czone.zone.origin, now, signer, bool(key[1] & COMPACT_OK)
    )
    cache.put_place(key2, prepared)
    return prepared, prefix if prepared.client_dependent else None, by_source


def prepare_shared(
    snap: Snapshot,
    res: Resolution,
    qname: bytes,
    qtype: int,
    qclass: int,
    origin: str,
    now: float,
    signer=None,
    compact_ok: bool = False,
) -> Prepared:
    """`prepare()`, with the wire bodies of a steered answer shared by every place that gets the same decision.

    A steered name has a handful of distinct answers (one per region or set of
    regions) but thousands of places; building each with dnslib took as long
    as the steering itself. `run_chain` returns one Decision object per path
    through the chain in a snapshot, so the bodies are found by that object
    (kept in the entry, so that its id cannot be reused while the entry lives).
    Only plain steered answers (no CNAME in front, no authority or additional
    records) are shared; a decision that expires gets its own deadline.
    With `signer` (a DO query to a signed zone) the bodies are the signed ones,
    shared until their first signature is due for renewal.
    """

    def build() -> Prepared:
        if signer is not None:
            return signer.prepare(res, qname, qtype, qclass, compact_ok, now)
        return prepare(res, qname, qtype, qclass, origin)

    decision = res.decision
    if decision is None or res.answer or res.authority or res.additional or not res.aa or res.rcode:
        return build()
    memo = snap.steering
    key = ("bodies", id(decision), qname.lower(), qtype, qclass, res.steered_ttl)
    if signer is not None:
        key += ("signed", compact_ok)
    hit = memo.get(key)
    if hit is not None and hit[0] is decision and (signer is None or hit[1].deadline >= now):
        shared = hit[1]
    else:
        shared = build()
        remember(memo, key, (decision, shared))
    if res.deadline is None and shared.deadline is None:
        return shared
    deadline = res.deadline
    if signer is not None:
        deadline = shared.deadline if deadline is None else min(deadline, shared.deadline)
    client = res.client
    return Prepared(
        shared.bodies,
        schedule=shared.schedule,
        scope=client.prefix if client is not None and client.address is not None else None,
        deadline=deadline,
        labels=shared.labels,
        client_dependent=True,
        meta=shared.meta,
    )
