"""GeoIP readers, client locations and distances."""

from geodns.geo.database import GeoDatabase, GeoDatabaseError, Location, location_from_record
from geodns.geo.distance import distance_km, haversine_km, unit_vector

__all__ = [
    "GeoDatabase",
    "GeoDatabaseError",
    "Location",
    "distance_km",
    "haversine_km",
    "location_from_record",
    "unit_vector",
]
