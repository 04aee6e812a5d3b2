"""Shared constants and helpers for the bench scripts (stdlib only).

Adapted from the project's shared bench tools (gdnsd side-by-side kit): the
one change is that the repository's bundled GeoIP file is the fallback.

Everything a script writes goes under cache_dir(); this folder is read-only
for developers and CI.
"""
from __future__ import annotations

import math
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

ZONE = "gslb.example.test"
QNAME = "www." + ZONE
TTL = 30
QTYPE = {"A": 1, "AAAA": 28}
EDNS_CLIENT_SUBNET = 8  # RFC 7871 option code
EDNS_UDP_SIZE = 1232


@dataclass(frozen=True)
class Region:
    name: str
    lat: float
    lon: float
    v4: str
    v6: str


# Order matters: it is gdnsd's `datacenters` order, i.e. the fallback for
# clients with no location (first = us-east) and the tie-break order.
REGIONS = (
    Region("us-east", 38.9, -77.0, "192.0.2.10", "2001:db8::10"),
    Region("us-west", 45.6, -121.2, "192.0.2.20", "2001:db8::20"),
    Region("eu-west", 53.3, -6.3, "192.0.2.30", "2001:db8::30"),
    Region("ap-southeast", 1.35, 103.8, "192.0.2.40", "2001:db8::40"),
    Region("sa-east", -23.5, -46.6, "192.0.2.50", "2001:db8::50"),
)
DEFAULT_REGION = REGIONS[0]

# Same constant and formula as gdnsd's libgdmaps (dclists.c), so that the
# expected answers match gdnsd's choice bit for bit.
DEG2RAD = 0.017453292519943295769236907684886
EARTH_RADIUS_KM = 6371.0088


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Central angle (radians) between two points given in radians."""
    a = (math.sin((lat2 - lat1) * 0.5) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) * 0.5) ** 2)
    return math.atan2(math.sqrt(a), math.sqrt(1.0 - a))


_REGION_RAD = [(r, r.lat * DEG2RAD, r.lon * DEG2RAD) for r in REGIONS]


def nearest_region(lat: float, lon: float) -> tuple[Region, float]:
    """Nearest region and its margin (km) over the runner-up; ties go to
    the earlier region, as in gdnsd's stable insertion sort."""
    la, lo = lat * DEG2RAD, lon * DEG2RAD
    d = sorted((haversine(la, lo, rla, rlo), i, r)
               for i, (r, rla, rlo) in enumerate(_REGION_RAD))
    return d[0][2], (d[1][0] - d[0][0]) * EARTH_RADIUS_KM


def cache_root() -> Path:
    root = os.environ.get("GEODNS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "geodns")
    return Path(root)


def cache_dir(*parts: str) -> Path:
    """A folder under <cache>/bench/, created on demand."""
    p = cache_root().joinpath("bench", *parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def geoip_db_path() -> Path:
    return cache_root() / "geoip" / "dbip-city-geoip2.mmdb"


BUNDLED_DB = HERE.parent.parent / "data" / "geoip-bundle.mmdb"
"""geodns's own GeoIP2-City file (DB-IP, country detail): a fresh clone runs on it."""


def ensure_geoip_db() -> Path:
    """The full DB-IP city file when it was built (../geoip/build in the shared
    tools), else the repository's bundled one."""
    db = geoip_db_path()
    if db.exists():
        return db
    if BUNDLED_DB.exists():
        print(f"{db} not built: using the bundled {BUNDLED_DB.name} (country detail)", file=sys.stderr)
        return BUNDLED_DB
    for step in ("fetch", "build"):
        tool = HERE.parent / "geoip" / step
        if not tool.exists():
            sys.exit(f"{db} is missing and {tool} does not exist; "
                     "pass --db or build the GeoIP file first")
        print(f"running ../geoip/{step} ...", file=sys.stderr)
        subprocess.run([str(tool)], check=True)
    if not db.exists():
        sys.exit(f"../geoip/build did not produce {db}")
    return db


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def ecs_option(family: int, addr: bytes, source_len: int) -> bytes:
    """RFC 7871 section 6: FAMILY, SOURCE PREFIX-LENGTH, SCOPE 0, and only
    as many address bytes as the prefix covers."""
    nbytes = (source_len + 7) // 8
    data = struct.pack("!HBB", family, source_len, 0) + addr[:nbytes]
    return struct.pack("!HH", EDNS_CLIENT_SUBNET, len(data)) + data


def build_query(qid: int, qtype: str, ecs: bytes | None = b"",
                edns: bool = True) -> bytes:
    """www.gslb.example.test query, RD=0 as a resolver asks an
    authoritative server; `ecs` is an ecs_option() or b"" for none."""
    hdr = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1 if edns else 0)
    q = encode_name(QNAME) + struct.pack("!HH", QTYPE[qtype], 1)
    if not edns:
        return hdr + q
    opt = b"\0" + struct.pack("!HHIH", 41, EDNS_UDP_SIZE, 0, len(ecs)) + ecs
    return hdr + q + opt


def probe(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bytes | None:
    """One A query; the raw response, or None if nothing came back."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        q = build_query(0x4242, "A")
        try:
            s.sendto(q, (host, port))
            while True:
                data, _ = s.recvfrom(4096)
                if data[:2] == q[:2]:
                    return data
        except OSError:
            return None


def wait_ready(port: int, timeout: float, host: str = "127.0.0.1",
               alive=lambda: True) -> bool:
    """Poll with probe() until the server answers, `alive()` turns false,
    or `timeout` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive():
            return False
        if probe(port, host, 0.2) is not None:
            return True
        time.sleep(0.1)
    return False
