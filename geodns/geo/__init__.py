"""GeoIP readers, client locations and distances."""

from geodns.geo.database import GeoDatabase, GeoDatabaseError, Location, location_from_record
from geodns.geo.distance import EARTH_RADIUS_KM, distance_km, haversine_km, unit_vector

__all__ = [
    "EARTH_RADIUS_KM",
    "GeoDatabase",
    "GeoDatabaseError",
    "Location",
    "distance_km",
    "haversine_km",
    "location_from_record",
    "unit_vector",
]
