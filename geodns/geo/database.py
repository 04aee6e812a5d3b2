"""GeoIP lookups: where a client is, and how far the answer may be shared.

Reads MaxMind GeoIP2/GeoLite2 City and Country databases and DB-IP's flat
schema (`country_code`, `latitude`, `longitude`, `state1`) with maxminddb in
mmap mode, so that every worker process shares the file through the page
cache. A lookup returns the matched network too: its prefix length becomes the
ECS scope of the answer (RFC 7871 7.2.1) and part of the answer cache key.
"""

from __future__ import annotations

import ipaddress
import math
import mmap
import os
import socket
import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import maxminddb

from geodns.geo._continents import CONTINENT_OF_COUNTRY

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
    pass


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What tells us the database file was replaced (operators update it weekly)."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class GeoDatabase:
    """One opened GeoIP database file. Lookups are thread- and process-safe (read-only mmap)."""

    def __init__(self, path: str, walk: bool = True):
        """Open `path`. With `walk` (and the C extension built), lookups walk and decode the
        file in one shared mapping of our own; otherwise maxminddb does it (slower)."""
        self.path = path
        self.source: str | None = None
        """`/proc/<our pid>/fd/<n>`: this very file, for worker processes to open even after the
        path has been given another file (None where /proc is missing: they use the path)."""
        try:
            self.identity = FileIdentity.of(path)
            self._reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDatabaseError(f"{path}: cannot open GeoIP database: {exc}") from None
        meta = self._reader.metadata()
        self.database_type: str = meta.database_type
        self.build_epoch: int = meta.build_epoch
        self.ip_version: int = meta.ip_version
        self.description: str = meta.description.get("en", "") if meta.description else ""
        self._get = self._reader.get_with_prefix_len
        # Decoding a record is the expensive part of a lookup; networks that
        # share a record (same place) share one Location object.
        self._locations: dict[Hashable, Location | None] = {}
        self._keep_open(path)
        self._tree = _SearchTree.open(self.source or path, meta) if walk else None
        if self._tree is not None:
            # The C walk does all of find(), 6to4 included: call it without a Python frame
            # (find runs on every query that is not a level-0 hit).
            self.find = self._tree.find
            # One mapping of the file per process: a second one (maxminddb's) would make
            # RSS count every page both touch twice, though they are the same pages.
            self._reader.close()
            self._reader = self._get = None

    def _keep_open(self, path: str) -> None:
        """Hold a descriptor of the file we opened, if it is still the one at `path`."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        st = os.fstat(fd)
        source = f"/proc/{os.getpid()}/fd/{fd}"
        if FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self.identity or not os.path.exists(source):
            os.close(fd)  # replaced already (the workers then use the path), or no /proc
            return
        self.source = source
        weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._tree is not None:
            del self.find  # it holds the tree, which holds the mapping
            self._tree.close()

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
        try:
            record, prefix = self._get(_text(packed))
        except ValueError:
            # An IPv6 address in an IPv4-only database: nothing is known about it.
            return None, 0
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
        if self._tree is not None:
            fields = self._tree.place(record)
            if fields is not None:  # the plain GeoIP2 City shape, read in place
                return self._remember(record, location_from_fields(*fields))
            return self._remember(record, _location_of(self._tree.record(record)))
        if len(packed) == 16 and packed[0] == 0x20 and packed[1] == 0x02:
            packed = packed[2:6]
        return self._remember(record, _location_of(self._reader.get(_text(packed))))

    def _remember(self, key: Hashable, location: Location | None) -> Location | None:
        if len(self._locations) >= LOCATION_MEMO:
            # Start afresh rather than grow: a miss storm over the full city database would
            # otherwise hold every one of its ~570k places in each worker (RSS over 250 MB).
            self._locations.clear()
        self._locations[key] = location
        return location


def _text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


class _SearchTree:
    """The file's search tree, mapped read-only and walked by `geodns.geo._tree.Tree` (C)."""

    def __init__(self, buffer: mmap.mmap, tree: Any):
        self._buffer = buffer
        self._tree = tree
        self.find = tree.find
        """find(packed) -> (record value | None, prefix length), as `GeoDatabase.lookup` counts it."""
        self.record = tree.record
        """record(value) -> the record `find` pointed to, decoded as maxminddb decodes it."""
        self.place = tree.place
        """place(value) -> the raw fields of its Location (`location_from_fields`), or None
        for a record of another shape (decode it with `record`)."""

    @classmethod
    def open(cls, path: str, meta: Any) -> _SearchTree | None:
        """The walker, or None when the C extension is not built (lookups then decode every record)."""
        if _Tree is None:
            return None
        try:
            with open(path, "rb") as fileobj:
                buffer = mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        try:
            tree = _Tree(buffer, meta.node_count, meta.record_size, meta.ip_version)
        except (ValueError, TypeError):
            buffer.close()
            return None  # maxminddb opened it, so it will say what is wrong on lookup
        return cls(buffer, tree)

    def close(self) -> None:
        self.find = self.record = self.place = self._tree = None  # releases the buffer the tree holds
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


def location_from_record(record: dict) -> Location | None:
    """Decode one database record, in the GeoIP2 or the DB-IP flat schema."""
    if "country_code" in record:  # DB-IP flat schema
        country = record.get("country_code") or None
        country = country.upper() if isinstance(country, str) else None
        return Location(
            latitude=_coordinate(record.get("latitude"), 90),
            longitude=_coordinate(record.get("longitude"), 180),
            continent=CONTINENT_OF_COUNTRY.get(country) if country else None,
            country=country,
            subdivision=None,
            city=record.get("city") or None,
            subdivision_name=record.get("state1") or None,
        )
    country_rec = record.get("country") or record.get("registered_country") or {}
    country = country_rec.get("iso_code") if isinstance(country_rec, dict) else None
    continent_rec = record.get("continent")
    continent = continent_rec.get("code") if isinstance(continent_rec, dict) else None
    code = subdivision_name = None
    subs = record.get("subdivisions")
    if isinstance(subs, list) and subs and isinstance(subs[0], dict):
        code = subs[0].get("iso_code")
        subdivision_name = _en(subs[0])
    location = record.get("location")
    lat, lon = (location.get("latitude"), location.get("longitude")) if isinstance(location, dict) else (None, None)
    return location_from_fields(lat, lon, continent, country, code, subdivision_name, _en(record.get("city")))
