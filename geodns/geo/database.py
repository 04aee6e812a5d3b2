"""GeoIP lookups: where a client is, and how far the answer may be shared.

Reads MaxMind GeoIP2/GeoLite2 City and Country databases and DB-IP's flat
schema (`country_code`, `latitude`, `longitude`, `state1`). A lookup returns
the matched network too: its prefix length becomes the ECS scope of the answer
(RFC 7871 7.2.1) and part of the answer cache key.

The file is copied once into a sealed memfd (anonymous shared memory nobody can
write, shrink or grow) and mapped from there, never mapped itself: an operator
who overwrites the file in place (`cp new.mmdb geoip.mmdb` truncates it first)
would otherwise pull pages from under the mapping, and the next lookup would
die of SIGBUS. Worker processes map the parent's memfd (`source`), so the copy
is made once per node, not once per worker. See docs/runbook.md for the cost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import ipaddress
import logging
import math
import mmap
import os
import socket
import stat
import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import maxminddb

from geodns.geo._continents import CONTINENT_OF_COUNTRY

log = logging.getLogger("geodns.geo")

try:
    from geodns.geo._tree import Tree as _Tree
except ImportError:  # built by setup.py where a C compiler is found; lookups then decode every record
    _Tree = None


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client network is, as far as the database knows."""

    latitude: float | None
    longitude: float | None
    continent: str | None
    country: str | None
    subdivision: str | None
    """ISO 3166-2 code with its country, e.g. `US-CA`; None when unknown."""
    city: str | None = None
    subdivision_name: str | None = None

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    def describe(self) -> str:
        parts = [p for p in (self.city, self.subdivision or self.subdivision_name, self.country, self.continent) if p]
        where = ", ".join(parts) or "unknown place"
        if self.has_coordinates:
            where += f" ({self.latitude:.4g}, {self.longitude:.4g})"
        return where


LOCATION_MEMO = 50_000
"""Places remembered per reader; a place seen again is one dict lookup, not a decode."""


class GeoDatabaseError(Exception):
    """The file cannot be used as a GeoIP database: missing, unreadable, or not a valid one."""


_DECODE_ERRORS = (
    ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError, RecursionError, MemoryError,
    maxminddb.InvalidDatabaseError,
)
"""What maxminddb and `_tree.c` raise on a corrupt file (UnicodeDecodeError is a ValueError)."""

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE if hasattr(fcntl, "F_SEAL_SEAL") else 0
_IMMUTABLE = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE if _SEALS else 0


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells us the database file was replaced (operators update it weekly)."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        return cls.stat(os.stat(path))

    @classmethod
    def stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class GeoDatabase:
    """One opened GeoIP database file. Lookups are thread- and process-safe (read-only memory)."""

    def __init__(self, path: str, walk: bool = True):
        """Open `path`. With `walk` (and the C extension built), lookups walk and decode the
        copy in one shared mapping of our own; otherwise maxminddb does it (slower).

        Raises GeoDatabaseError for anything that is not a usable database: a missing or
        truncated file, corrupt metadata, a search tree that does not fit the file."""
        self.path = path
        self.source: str | None = None
        """`/proc/<our pid>/fd/<n>`: our sealed copy of the file, for worker processes to map
        (None where memfds or /proc are missing: they open the path and copy it themselves)."""
        self._reader: Any = None
        self._tree: _SearchTree | None = None
        self._opened: str | None = None
        try:
            memory, self.identity, checked = _immutable_copy(path)
        except OSError as exc:
            raise GeoDatabaseError(f"{path}: cannot open GeoIP database: {exc}") from None
        self._release = weakref.finalize(self, _release, memory)
        try:
            meta = self._open(memory, walk, verify=not checked)
        except (GeoDatabaseError, *_DECODE_ERRORS) as exc:
            self.close()
            why = str(exc).replace(self._opened, path) if self._opened else str(exc)  # name the operator's file
            raise GeoDatabaseError(f"{path}: cannot open GeoIP database: {why or type(exc).__name__}") from None
        self.database_type: str = meta.database_type
        self.build_epoch: int = meta.build_epoch
        self.ip_version: int = meta.ip_version
        self.description: str = meta.description.get("en", "") if meta.description else ""
        # Decoding a record is the expensive part of a lookup; networks that
        # share a record (same place) share one Location object.
        self._locations: dict[Hashable, Location | None] = {}
        self._corrupt_logged = False
        if self._tree is not None:
            # The C walk does all of find(), 6to4 included: call it without a Python frame
            # (find runs on every query that is not a level-0 hit).
            self.find = self._tree.find

    def _open(self, memory: int | bytes, walk: bool, verify: bool) -> Any:
        """Read and check the metadata (and with `verify`, every record: `_tree.c`'s `verify`),
        then keep the tree walker or maxminddb's reader."""
        if isinstance(memory, int):
            self._opened = f"/proc/self/fd/{memory}"
            self.source = f"/proc/{os.getpid()}/fd/{memory}"
            # maxminddb's pure-Python reader: libmaxminddb (its C extension) crashes on some
            # corrupt files; the walk (`_tree.c`) checks every read, so this one serves only
            # the metadata, and lookups where the C walk is not built.
            self._reader = maxminddb.open_database(self._opened, maxminddb.MODE_MMAP)
        else:  # no memfd on this system: maxminddb's own copy, in memory too
            self._reader = maxminddb.open_database(io.BytesIO(memory), maxminddb.MODE_FD)
        meta = self._reader.metadata()
        _check_metadata(meta, memory)
        self._get = self._reader.get_with_prefix_len
        self._tree = _SearchTree.open(memory, meta)
        if self._tree is not None and verify:
            self._tree.verify()
            self._tree.forget_pages()
        if self._tree is not None and not walk:
            self._tree.close()
            self._tree = None
        if self._tree is not None:
            # One mapping of the copy per process: a second one (maxminddb's) would make
            # RSS count every page both touch twice, though they are the same pages.
            self._reader.close()
            self._reader = self._get = None
        return meta

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = self._get = None
        if self._tree is not None:
            self.__dict__.pop("find", None)  # it holds the tree, which holds the mapping
            self._tree.close()
            self._tree = None
        self._release()

    def changed(self) -> bool:
        """Whether the file at our path is no longer the one we opened."""
        try:
            return FileIdentity.of(self.path) != self.identity
        except OSError:
            return False  # a missing file mid-replace: keep serving the one we have

    def lookup(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[Location | None, int]:
        """The client's location (None when unknown) and the prefix length of the matched network.

        For an IPv4 address the prefix length counts IPv4 bits (0-32), also in an
        IPv6 database where maxminddb finds the IPv4 data under ::/96.

        A 6to4 address (2002::/16) is located by the IPv4 address it embeds, as
        gdnsd and MaxMind's own files do; the prefix is then 16 + the IPv4 prefix.
        """
        if isinstance(address, str):
            address = ipaddress.ip_address(address)
        packed = address.packed
        record, prefix = self.find(packed)
        return self.location(record, packed), prefix

    def find(self, packed: bytes) -> tuple[Hashable | None, int]:
        """Which record an address (network byte order, 4 or 16 bytes) falls into, and the prefix.

        The answer path's form of `lookup`: the record is an opaque key, equal for
        every network that shares the database record (so for every client at one
        place), None when the database knows nothing of the address. The search
        tree is walked without decoding anything (`_tree.c`); `location` decodes.
        """
        if len(packed) == 16 and packed[0] == 0x20 and packed[1] == 0x02:
            record, prefix = self.find(packed[2:6])  # 6to4: the embedded IPv4 address
            return record, 16 + prefix
        if self._tree is not None:
            return self._tree.find(packed)
        if len(packed) == 16 and self.ip_version == 4:
            return None, 0  # an IPv6 address in an IPv4-only database: nothing is known about it
        try:
            record, prefix = self._get(_text(packed))
        except _DECODE_ERRORS as exc:
            # Unknown place; the answer's scope is the address alone (we cannot tell its network).
            self._corrupt(packed, exc)
            return None, len(packed) * 8
        # Without the C walk maxminddb has decoded the record already; remember its place.
        if not record or not isinstance(record, dict):
            return None, prefix
        try:
            key = ("record", _record_key(record))
            if key not in self._locations:
                self._remember(key, location_from_record(record))
            return key, prefix
        except TypeError:
            # An unhashable oddity in a foreign database: key by the network itself (it has
            # one record), never by id(), which a later record could reuse.
            bits = len(packed) * 8
            return ("network", bits, int.from_bytes(packed, "big") >> (bits - prefix), prefix), prefix

    def location(self, record: Hashable | None, packed: bytes) -> Location | None:
        """The place of a record `find` returned for the address `packed`."""
        if record is None:
            return None
        try:
            return self._locations[record]
        except KeyError:
            pass
        try:
            if self._tree is not None:
                fields = self._tree.place(record)
                if fields is not None:  # the plain GeoIP2 City shape, read in place
                    return self._remember(record, location_from_fields(*fields))
                # Another shape (DB-IP's flat schema: every record): `_tree.c` decodes it, 8x
                # faster than maxminddb's decoder over the same mapping (bench/geo_decode.py).
                return self._remember(record, _location_of(self._tree.record(record)))
            if len(packed) == 16 and packed[0] == 0x20 and packed[1] == 0x02:
                packed = packed[2:6]
            return self._remember(record, _location_of(self._reader.get(_text(packed))))
        except _DECODE_ERRORS as exc:
            # A corrupt record: its clients are located nowhere (the default answer), not SERVFAILed.
            self._corrupt(packed, exc)
            return self._remember(record, None)

    def _corrupt(self, packed: bytes, exc: BaseException) -> None:
        if not self._corrupt_logged:  # once per file: a corrupt file fails lookups by the thousand
            self._corrupt_logged = True
            log.error("geoip record unreadable path=%s address=%s error=%s: %s; such clients have no location "
                      "(replace the file)", self.path, _text(packed), type(exc).__name__, exc)

    def _remember(self, key: Hashable, location: Location | None) -> Location | None:
        if len(self._locations) >= LOCATION_MEMO:
            # Start afresh rather than grow: a miss storm over the full city database would
            # otherwise hold every one of its ~570k places in each worker (RSS over 250 MB).
            self._locations.clear()
        self._locations[key] = location
        return location


def _text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _immutable_copy(path: str) -> tuple[int | bytes, FileIdentity, bool]:
    """The bytes of the file at `path`, somewhere nobody can change them under us; the
    identity of that file; and whether it was checked already. A sealed memfd (its
    descriptor), or the file itself when it is already one (a worker opening the parent's
    copy, which the parent has checked), or bytes where memfds are missing."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    keep = False
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        identity = FileIdentity.stat(before)
        if _sealed(fd):
            keep = True
            return fd, identity, True
        if not _SEALS or not hasattr(os, "memfd_create") or not os.path.isdir(f"/proc/{os.getpid()}/fd"):
            return _read_all(fd), identity, False  # a copy in this process only: workers make their own
        copy = os.memfd_create("geodns-geoip", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            size = _copy_all(fd, copy)
            if FileIdentity.stat(os.fstat(fd)) != identity or size != before.st_size:
                raise OSError(errno.EAGAIN, "the file changed while it was read (written in place?)")
            fcntl.fcntl(copy, fcntl.F_ADD_SEALS, _SEALS)
        except BaseException:
            os.close(copy)
            raise
        return copy, identity, False
    finally:
        if not keep:
            os.close(fd)


def _sealed(fd: int) -> bool:
    if not _SEALS:
        return False
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _IMMUTABLE == _IMMUTABLE
    except OSError:  # a file system without seals: an ordinary file
        return False


def _copy_all(src: int, dst: int) -> int:
    """Copy `src` to `dst` in the kernel (sendfile), without mapping either here; bytes copied."""
    offset = 0
    try:
        while sent := os.sendfile(dst, src, offset, 1 << 24):
            offset += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS) or offset:
            raise
        while chunk := os.read(src, 1 << 20):
            os.write(dst, chunk)
            offset += len(chunk)
    return offset


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _release(memory: int | bytes) -> None:
    if isinstance(memory, int):
        with contextlib.suppress(OSError):
            os.close(memory)


def _check_metadata(meta: Any, memory: int | bytes) -> None:
    """What the walk and the status page rely on; ValueError naming the first field that is wrong."""
    size = os.fstat(memory).st_size if isinstance(memory, int) else len(memory)
    if meta.binary_format_major_version != 2:
        raise ValueError(f"binary format version {meta.binary_format_major_version!r} is not 2")
    if meta.record_size not in (24, 28, 32):
        raise ValueError(f"record_size {meta.record_size!r} is not 24, 28 or 32")
    if meta.ip_version not in (4, 6):
        raise ValueError(f"ip_version {meta.ip_version!r} is not 4 or 6")
    if not isinstance(meta.node_count, int) or not 0 < meta.node_count * meta.record_size // 4 + 16 <= size:
        raise ValueError(f"node_count {meta.node_count!r}: the search tree does not fit the file")
    if not isinstance(meta.database_type, str):
        raise ValueError("database_type is not a string")
    if not isinstance(meta.build_epoch, int) or not 0 <= meta.build_epoch < 1 << 40:
        raise ValueError(f"build_epoch {meta.build_epoch!r} is not a time")
    description = meta.description or {}
    if not isinstance(description, dict) or not all(isinstance(v, str) for v in description.values()):
        raise ValueError("description is not a map of strings")


class _SearchTree:
    """The file's search tree, mapped read-only and walked by `geodns.geo._tree.Tree` (C)."""

    def __init__(self, buffer: mmap.mmap | bytes, tree: Any):
        self._buffer = buffer
        self._tree = tree
        self.find = tree.find
        """find(packed) -> (record value | None, prefix length), as `GeoDatabase.lookup` counts it."""
        self.record = tree.record
        """record(value) -> the record `find` pointed to, decoded as maxminddb decodes it."""
        self.place = tree.place
        """place(value) -> the raw fields of its Location (`location_from_fields`), or None
        for a record of another shape (decode it with `record`)."""
        self.verify = tree.verify
        """verify() -> None, or ValueError: every record the tree points to decodes."""

    @classmethod
    def open(cls, memory: int | bytes, meta: Any) -> _SearchTree | None:
        """The walker over our copy (a memfd's descriptor, or bytes), or None when the C
        extension is not built (lookups then decode every record)."""
        if _Tree is None:
            return None
        buffer = mmap.mmap(memory, 0, access=mmap.ACCESS_READ) if isinstance(memory, int) else memory
        try:
            tree = _Tree(buffer, meta.node_count, meta.record_size, meta.ip_version)
        except (ValueError, TypeError, OverflowError) as exc:
            if isinstance(buffer, mmap.mmap):
                buffer.close()
            raise GeoDatabaseError(f"search tree refused: {exc}") from None
        return cls(buffer, tree)

    def forget_pages(self) -> None:
        """Unmap from this process the pages `verify` touched (the copy keeps them): else RSS
        counts the whole file here, though lookups touch only part of it."""
        if isinstance(self._buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            self._buffer.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.find = self.record = self.place = self.verify = self._tree = None  # releases the buffer the tree holds
        if isinstance(self._buffer, mmap.mmap):
            self._buffer.close()


def _record_key(record: dict) -> tuple:
    loc = record.get("location")
    if isinstance(loc, dict):
        country = record.get("country")
        subs = record.get("subdivisions")
        city = record.get("city")
        return (
            loc.get("latitude"),
            loc.get("longitude"),
            country.get("iso_code") if isinstance(country, dict) else None,
            _first_sub_key(subs),
            city.get("geoname_id") or str(city.get("names")) if isinstance(city, dict) else None,
        )
    if "country_code" in record:
        return (record.get("latitude"), record.get("longitude"), record.get("country_code"), record.get("state1"), record.get("city"))
    country = record.get("country") or record.get("registered_country")
    return ("country", country.get("iso_code") if isinstance(country, dict) else None, _first_sub_key(record.get("subdivisions")))


def _first_sub_key(subs: Any) -> Any:
    if isinstance(subs, list) and subs and isinstance(subs[0], dict):
        names = subs[0].get("names")
        return (subs[0].get("iso_code"), names.get("en") if isinstance(names, dict) else None)
    return None


def _coordinate(value: Any, limit: float) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and -limit <= value <= limit:
        return float(value)
    return None


def _en(mapping: Any) -> str | None:
    if isinstance(mapping, dict):
        names = mapping.get("names")
        if isinstance(names, dict):
            name = names.get("en")
            return name if isinstance(name, str) else None
    return None


def _location_of(record: Any) -> Location | None:
    return location_from_record(record) if record and isinstance(record, dict) else None


def location_from_fields(
    latitude: Any, longitude: Any, continent: str | None, country: str | None,
    subdivision_code: str | None, subdivision_name: str | None, city: str | None,
) -> Location | None:
    """A GeoIP2 City record's Location from its raw fields: what `location_from_record` reads
    out of the decoded record, and `_tree.c`'s `place` reads in the mapping (it answers only
    for records where the two cannot differ)."""
    lat = _coordinate(latitude, 90)
    lon = _coordinate(longitude, 180)
    if lat is None or lon is None:
        lat = lon = None
    if continent is None and country:
        continent = CONTINENT_OF_COUNTRY.get(country)
    if country is None and lat is None:
        return None
    subdivision = f"{country}-{subdivision_code}".upper() if subdivision_code and country else None
    # Positional: keyword arguments cost a frozen dataclass another 0.5 us here.
    return Location(lat, lon, continent, country, subdivision, city, subdivision_name)


def _text_of(value: Any) -> str | None:
    """A string field, else None: a corrupt or foreign record may hold a map or a number
    where a code belongs (an unhashable one would break the continent table lookup)."""
    return value if isinstance(value, str) else None


def location_from_record(record: dict) -> Location | None:
    """Decode one database record, in the GeoIP2 or the DB-IP flat schema."""
    if "country_code" in record:  # DB-IP flat schema
        country = _text_of(record.get("country_code"))
        country = country.upper() if country else None  # "" is no country either
        return Location(
            latitude=_coordinate(record.get("latitude"), 90),
            longitude=_coordinate(record.get("longitude"), 180),
            continent=CONTINENT_OF_COUNTRY.get(country) if country else None,
            country=country,
            subdivision=None,
            city=_text_of(record.get("city")) or None,
            subdivision_name=_text_of(record.get("state1")) or None,
        )
    country_rec = record.get("country") or record.get("registered_country") or {}
    country = _text_of(country_rec.get("iso_code")) if isinstance(country_rec, dict) else None
    continent_rec = record.get("continent")
    continent = _text_of(continent_rec.get("code")) if isinstance(continent_rec, dict) else None
    code = subdivision_name = None
    subs = record.get("subdivisions")
    if isinstance(subs, list) and subs and isinstance(subs[0], dict):
        code = _text_of(subs[0].get("iso_code"))
        subdivision_name = _en(subs[0])
    location = record.get("location")
    lat, lon = (location.get("latitude"), location.get("longitude")) if isinstance(location, dict) else (None, None)
    return location_from_fields(lat, lon, continent, country, code, subdivision_name, _en(record.get("city")))
