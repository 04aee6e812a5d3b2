"""Great-circle distances: the unit-vector form agrees with haversine."""

from __future__ import annotations

import pytest

from geodns.geo import distance_km, haversine_km, unit_vector


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((51.5074, -0.1278), (40.7128, -74.0060), 5570),  # London - New York
        ((0, 0), (0, 180), 20015),  # half the equator
        ((90, 0), (-90, 0), 20015),  # pole to pole
        ((53.3, -6.3), (53.3, -6.3), 0),
    ],
)
def test_distances(a, b, km):
    assert haversine_km(*a, *b) == pytest.approx(km, abs=10)
    assert distance_km(unit_vector(*a), unit_vector(*b)) == pytest.approx(haversine_km(*a, *b), abs=0.01)


def test_dateline_neighbours_are_close():
    assert distance_km(unit_vector(0, 179.5), unit_vector(0, -179.5)) == pytest.approx(111.2, abs=0.5)
