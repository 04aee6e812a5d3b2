"""Great-circle distance, computed the way the hot path needs it.

Coordinates are turned into unit vectors once (at snapshot build for regions,
once per location for clients); the distance is then R * acos(dot product),
which orders regions exactly as the haversine formula does.
"""

from __future__ import annotations

import math

EARTH_RADIUS_KM = 6371.0088


def unit_vector(latitude: float, longitude: float) -> tuple[float, float, float]:
    lat = math.radians(latitude)
    lon = math.radians(longitude)
    cos_lat = math.cos(lat)
    return (cos_lat * math.cos(lon), cos_lat * math.sin(lon), math.sin(lat))


def distance_km(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Great-circle distance between two unit vectors."""
    dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    return EARTH_RADIUS_KM * math.acos(max(-1.0, min(1.0, dot)))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """The textbook formula, for tests and explanations."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
