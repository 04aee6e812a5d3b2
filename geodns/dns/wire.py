"""DNS wire format for the hot path: parse a query, patch a prepared answer.

dnslib builds messages in the general path (`geodns.dns.resolve`), but at ~40x
the cost; here the header, the question and the OPT/ECS record are read by
hand, and every way a query can be malformed has a name that maps to an rcode
(dnspython's habit). The common shape of a query is read, and a prepared
answer patched, by `_scan.c` where it is built; `scan_common` and
`patch_python` are the same rules in Python (tests/dns/test_hotpath.py keeps
the two in step).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RRHEAD = struct.Struct("!HHIH")
_OPT_HEAD = struct.Struct("!BHHIH")  # root name, type, payload, ttl(ext rcode/version/flags), rdlen
_ID_FLAGS = struct.Struct("!HH")
_U16 = struct.Struct("!H")


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16


class QType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    DS = 43
    IXFR = 251
    AXFR = 252
    ANY = 255
    CAA = 257


class OptionCode(IntEnum):
    ECS = 8
    COOKIE = 10


QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
CD = 0x0010
DO = 0x8000
CLASS_IN = 1

OUR_PAYLOAD = 1232
"""The UDP payload size we advertise (DNS flag day 2020)."""
MAX_UDP = 4096
"""The largest UDP answer we send, whatever the client advertises."""
MAX_NAME = 255
"""The longest name on the wire, its length bytes and the root label included (RFC 1035 3.1);
`_scan.c` leaves a longer question to the full parser, which answers it FORMERR."""


# The three query types below are built per query: plain (not frozen) slotted
# dataclasses, because frozen ones pay object.__setattr__ per field (~3x slower).


@dataclass(slots=True)
class ECSOption:
    """EDNS Client Subnet (RFC 7871) as the client sent it."""

    family: int
    source: int
    scope: int
    address: bytes
    """Full-length address (4 or 16 bytes), zero beyond the source prefix."""


@dataclass(slots=True)
class Edns:
    payload: int
    version: int
    do: bool
    ecs: ECSOption | None = None
    cookie: bytes | None = None
    """The COOKIE option (RFC 7873) as sent: a client cookie (8 bytes), then any server cookie
    (8 to 32); the parsers refuse other lengths (FORMERR). `geodns.dns.cookies` answers it."""


@dataclass(slots=True)
class Query:
    id: int
    flags: int
    qname: bytes
    """The question name in wire form, letter case as sent."""
    qtype: int
    qclass: int
    edns: Edns | None
    question_end: int

    @property
    def key_name(self) -> bytes:
        return self.qname.lower()


class WireError(Exception):
    """A query we answer with an error rcode; carries what could be parsed."""

    rcode = Rcode.FORMERR

    def __init__(self, reason: str, id: int = 0, flags: int = 0, question: bytes = b"", edns: Edns | None = None):
        super().__init__(reason)
        self.reason = reason
        self.id = id
        self.flags = flags
        self.question = question
        self.edns = edns


class FormErr(WireError):
    rcode = Rcode.FORMERR


class NotImp(WireError):
    rcode = Rcode.NOTIMP


class BadVers(WireError):
    rcode = Rcode.BADVERS


class Ignore(Exception):
    """Not a query we may answer at all (too short, or itself a response)."""


def read_name(data: bytes, offset: int, allow_pointers: bool) -> int:
    """Skip a (possibly compressed) name; return the offset after it. Raises FormErr."""
    total = 0
    while True:
        if offset >= len(data):
            raise FormErr("name runs past the end")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if not allow_pointers:
                raise FormErr("compression pointer in the question")
            if offset + 2 > len(data):
                raise FormErr("truncated pointer")
            return offset + 2
        if length & 0xC0:
            raise FormErr("unknown label type")
        total += length + 1
        if total >= MAX_NAME:  # with the root label still to come (RFC 1035 section 3.1)
            raise FormErr(f"name longer than {MAX_NAME} bytes")
        offset += length + 1


_OPTION_HEAD = struct.Struct("!HH")  # option code, option length
_ECS_FIXED = struct.Struct("!HBB")  # family, source prefix, scope prefix
_NO_TRAILING_BITS = (0xFF, 0x7F, 0x3F, 0x1F, 0x0F, 0x07, 0x03, 0x01)


def parse_query(data: bytes) -> Query:
    """Parse a query. Raises Ignore (drop it), or a WireError (answer with its rcode).

    The shape nearly every resolver sends (one question, nothing or one OPT
    record holding at most one well-formed ECS option and one COOKIE option of
    a valid length, no trailing bytes) is read in one pass, in C where `geodns.dns._scan` is built; anything else,
    valid or not, goes to the full parser, which decides and names every error.
    tests/dns/test_hotpath.py checks the three agree.
    """
    query = _scan(data)
    return query if query is not None else parse_query_full(data)


def scan_common(data: bytes) -> Query | None:
    """The common shape in one pass, or None for anything else (`_scan.c` does the same in C)."""
    n = len(data)
    if n < 17:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1 or ancount or nscount or arcount > 1 or flags & 0xF800:  # QR or an opcode
        return None
    pos = 12
    while True:
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            return None
        pos += length + 1
        if pos >= n or pos - 11 > MAX_NAME:  # the root label at pos makes the name pos - 11 bytes
            return None
    end = pos + 5  # after the root label, QTYPE and QCLASS
    if end > n or pos - 11 > MAX_NAME:
        return None
    qname = data[12 : pos + 1]
    qtype, qclass = _QTAIL.unpack_from(data, pos + 1)
    if arcount == 0:
        if end != n:
            return None
        return Query(qid, flags, qname, qtype, qclass, None, end)
    if end + 11 > n or data[end] != 0 or data[end + 1] != 0 or data[end + 2] != 41:
        return None
    _, _, payload, ttl, rdlen = _OPT_HEAD.unpack_from(data, end)
    if ttl & 0xFF0000 or end + 11 + rdlen != n:  # EDNS version > 0, or odd lengths
        return None
    # Options: at most one well-formed ECS and one COOKIE of a valid length, in either order.
    ecs = cookie = None
    pos = end + 11
    while pos < n:
        if pos + 4 > n:
            return None
        code, optlen = _OPTION_HEAD.unpack_from(data, pos)
        pos += 4
        stop = pos + optlen
        if stop > n:
            return None
        if code == 8 and ecs is None:
            if optlen < 4:
                return None
            family, source, scope = _ECS_FIXED.unpack_from(data, pos)
            nbytes = (source + 7) >> 3
            if optlen != 4 + nbytes or scope:
                return None
            width = 4 if family == 1 else 16 if family == 2 else 0
            if not width or source > width * 8:
                return None
            address = data[pos + 4 : stop]
            if source & 7 and address[-1] & _NO_TRAILING_BITS[source & 7]:
                return None
            ecs = ECSOption(family, source, 0, address + bytes(width - nbytes))
        elif code == 10 and cookie is None and (optlen == 8 or 16 <= optlen <= 40):
            cookie = data[pos:stop]
        else:
            return None
        pos = stop
    return Query(qid, flags, qname, qtype, qclass, Edns(max(payload, 512), 0, bool(ttl & DO), ecs, cookie), end)


def parse_query_full(data: bytes) -> Query:
    """The full parser: every shape, every error named."""
    if len(data) < 12:
        raise Ignore("shorter than a header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        raise Ignore("a response")
    opcode = (flags >> 11) & 0xF
    question = b""
    offset = 12
    if qdcount == 1:
        try:
            end = read_name(data, 12, allow_pointers=False)
            if end + 4 <= len(data):
                question = data[12 : end + 4]
                offset = end + 4
        except FormErr:
            pass
    if opcode != 0:
        raise NotImp(f"opcode {opcode}", qid, flags, question)
    if qdcount != 1:
        raise FormErr(f"QDCOUNT {qdcount}", qid, flags, b"")
    if not question:
        raise FormErr("malformed or truncated question", qid, flags, b"")
    qname = question[:-4]
    qtype, qclass = _QTAIL.unpack_from(question, len(qname))
    edns = None
    try:
        # Queries carry no answer or authority records; skip any, then find OPT.
        for _ in range(ancount + nscount):
            offset = _skip_rr(data, offset)
        opt_seen = False
        for _ in range(arcount):
            if offset + 11 <= len(data) and data[offset] == 0 and data[offset + 1 : offset + 3] == b"\x00\x29":
                if opt_seen:
                    raise FormErr("more than one OPT record")
                opt_seen = True
                edns, offset = _parse_opt(data, offset)
            else:
                offset = _skip_rr(data, offset, opt_check=True)
    except WireError as exc:
        exc.id, exc.flags, exc.question = qid, flags, question
        if isinstance(exc, BadVers):
            exc.edns = exc.edns or edns
        raise
    return Query(qid, flags, qname, qtype, qclass, edns, 12 + len(question))


def _skip_rr(data: bytes, offset: int, opt_check: bool = False) -> int:
    offset = read_name(data, offset, allow_pointers=True)
    if offset + 10 > len(data):
        raise FormErr("truncated resource record")
    rtype, _, _, rdlen = _RRHEAD.unpack_from(data, offset)
    if opt_check and rtype == QType.OPT:
        raise FormErr("OPT record with a non-root owner")
    offset += 10 + rdlen
    if offset > len(data):
        raise FormErr("resource record data runs past the end")
    return offset


def _parse_opt(data: bytes, offset: int) -> tuple[Edns, int]:
    _, _, payload, ttl, rdlen = _OPT_HEAD.unpack_from(data, offset)
    offset += 11
    end = offset + rdlen
    if end > len(data):
        raise FormErr("OPT data runs past the end")
    version = (ttl >> 16) & 0xFF
    do = bool(ttl & DO)
    edns = Edns(max(payload, 512), version, do)
    if version != 0:
        raise BadVers(f"EDNS version {version}", edns=edns)
    ecs = cookie = None
    pos = offset
    while pos < end:
        if pos + 4 > end:
            raise FormErr("truncated EDNS option")
        code, length = _OPTION_HEAD.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise FormErr("EDNS option runs past the OPT record")
        if code == OptionCode.ECS:
            if ecs is not None:
                raise FormErr("more than one ECS option", edns=edns)
            ecs = _parse_ecs(data[pos : pos + length], edns)
        elif code == OptionCode.COOKIE:
            # RFC 7873 5.2.2: a client cookie alone (8 bytes) or with a server cookie of 8 to 32.
            if cookie is not None:
                raise FormErr("more than one COOKIE option", edns=edns)
            if length != 8 and not 16 <= length <= 40:
                raise FormErr(f"COOKIE option of {length} bytes (8, or 16 to 40)", edns=edns)
            cookie = data[pos : pos + length]
        pos += length
    return Edns(edns.payload, 0, do, ecs, cookie), end


def _parse_ecs(body: bytes, edns: Edns) -> ECSOption:
    """RFC 7871 section 6; a wrongly formatted option is FORMERR (7.2.1)."""
    if len(body) < 4:
        raise FormErr("ECS option shorter than 4 bytes", edns=edns)
    family, source, scope = _ECS_FIXED.unpack_from(body)
    if family == 1:
        width = 4
    elif family == 2:
        width = 16
    else:
        raise FormErr(f"ECS family {family}", edns=edns)
    if source > width * 8:
        raise FormErr(f"ECS source prefix /{source} too long", edns=edns)
    if scope != 0:
        raise FormErr("ECS scope prefix must be 0 in a query", edns=edns)
    address = body[4:]
    if len(address) != (source + 7) // 8:
        raise FormErr("ECS address length does not match its source prefix", edns=edns)
    if source % 8 and address and address[-1] & (0xFF >> (source % 8)):
        raise FormErr("ECS address has bits set beyond its source prefix", edns=edns)
    return ECSOption(family, source, scope, address + bytes(width - len(address)))


_OPT_ECS = struct.Struct("!BHHIHHHHBB")  # OPT header, then the ECS option header and its fixed part
_COOKIE_HEAD = b"\x00\x0a"  # option code 10


def opt_record(edns: Edns, ecs_scope: int | None, ext_rcode: int = 0, cookie: bytes | None = None) -> bytes:
    """Our OPT record for a response to a query that had one: the ECS echo when the query had
    ECS, then `cookie` (the COOKIE option's data: client and server cookie) when given."""
    # Plain ints below, not the IntEnums: struct.pack converts an IntEnum ~10x slower.
    ttl = (ext_rcode << 24) | (0x8000 if edns.do else 0)
    ecs = edns.ecs
    tail = b"" if cookie is None else _COOKIE_HEAD + _U16.pack(len(cookie)) + cookie
    if ecs is None:
        return _OPT_HEAD.pack(0, 41, OUR_PAYLOAD, ttl, len(tail)) + tail
    nbytes = (ecs.source + 7) >> 3
    return _OPT_ECS.pack(
        0, 41, OUR_PAYLOAD, ttl, 8 + nbytes + len(tail), 8, 4 + nbytes, ecs.family, ecs.source, ecs_scope or 0
    ) + ecs.address[:nbytes] + tail


def error_response(exc: WireError) -> bytes:
    """The answer to a query we could not or would not process."""
    rcode = int(exc.rcode)
    # RD and CD are defined for QUERY only: echo them there, never for another opcode.
    echo = 0x7800 if exc.flags & 0x7800 else 0x7800 | RD | CD
    flags = QR | (exc.flags & echo) | (rcode & 0xF)
    qdcount = 1 if exc.question else 0
    opt = b""
    if exc.edns is not None:
        opt = opt_record(exc.edns, 0, ext_rcode=rcode >> 4)
    return _HEADER.pack(exc.id, flags, qdcount, 0, 0, 1 if opt else 0) + exc.question + opt


def rcode_response(query: Query, rcode: Rcode, aa: bool = False, cookie: bytes | None = None) -> bytes:
    """A bare answer (REFUSED, NOTIMP, ...) echoing the question and EDNS (and `cookie`, the
    COOKIE option to send)."""
    flags = QR | (query.flags & (RD | CD)) | (AA if aa else 0) | int(rcode)
    opt = opt_record(query.edns, 0, cookie=cookie) if query.edns is not None else b""
    question = query.qname + _QTAIL.pack(query.qtype, query.qclass)
    return _HEADER.pack(query.id, flags, 1, 0, 0, 1 if opt else 0) + question + opt


MAX_TCP = 65535
"""The largest message TCP's two-byte length can carry (RFC 1035 4.2.2)."""


def patch_python(body: bytes, query: Query, scope: int | None, udp: bool, cookie: bytes | None = None) -> bytes:
    """A prepared answer (ID 0, no OPT) made into the answer to this query (`patch`; `_scan.c`
    does the same in C where it is built).

    Patches the ID, copies RD and CD, puts back the question's letter case,
    appends our OPT (with the ECS echo and its scope, and `cookie`, the COOKIE
    option's data for this client), and truncates to the header and question
    with TC set when it does not fit the client's UDP size, or over TCP 65,535
    bytes.
    """
    edns = query.edns
    qend = query.question_end
    flags = (body[2] << 8 | body[3]) | (query.flags & 0x0110)  # RD | CD
    if edns is None:
        opt = b""
        limit = 512
        arcount = body[10] << 8 | body[11]
    else:
        opt = opt_record(edns, scope, 0, cookie)
        limit = min(edns.payload, MAX_UDP)  # payload is at least 512 (parse_query)
        arcount = (body[10] << 8 | body[11]) + 1
    if not udp:
        limit = MAX_TCP
    if len(body) + len(opt) > limit:
        return (
            _HEADER.pack(query.id, flags | TC, 1, 0, 0, 1 if opt else 0)
            + query.qname
            + body[qend - 4 : qend]
            + opt
        )
    return b"".join((_ID_FLAGS.pack(query.id, flags), body[4:10], _U16.pack(arcount), query.qname, body[qend - 4 :], opt))


try:
    from geodns.dns import _scan as _c_scan
except ImportError:  # not built (no compiler at install): the same rules in Python
    _scan = scan_common
    patch = patch_python
else:
    _c_scan.bind(Query, Edns, ECSOption)
    _scan = _c_scan.scan
    patch = _c_scan.patch
