"""Where a transaction's ``location`` is on the map, when it can be known.

A location is either a city of the built-in gazetteer below (the generator's cities) or a
``"latitude,longitude"`` pair in degrees. Anything else has no coordinates: distance-based
features are then 0, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

CITY_COORDINATES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "Amsterdam": (52.3676, 4.9041), "Athens": (37.9838, 23.7275), "Barcelona": (41.3874, 2.1686),
    "Berlin": (52.5200, 13.4050), "Brussels": (50.8503, 4.3517), "Budapest": (47.4979, 19.0402),
    "Copenhagen": (55.6761, 12.5683), "Dublin": (53.3498, -6.2603),
    "Edinburgh": (55.9533, -3.1883), "Hamburg": (53.5511, 9.9937), "Helsinki": (60.1699, 24.9384),
    "Krakow": (50.0647, 19.9450), "Lisbon": (38.7223, -9.1393), "London": (51.5074, -0.1278),
    "Lyon": (45.7640, 4.8357), "Madrid": (40.4168, -3.7038), "Manchester": (53.4808, -2.2426),
    "Milan": (45.4642, 9.1900), "Munich": (48.1351, 11.5820), "Oslo": (59.9139, 10.7522),
    "Paris": (48.8566, 2.3522), "Porto": (41.1579, -8.6291), "Prague": (50.0755, 14.4378),
    "Rome": (41.9028, 12.4964), "Seville": (37.3891, -5.9845), "Stockholm": (59.3293, 18.0686),
    "Valencia": (39.4699, -0.3763), "Vienna": (48.2082, 16.3738), "Warsaw": (52.2297, 21.0122),
    "Zurich": (47.3769, 8.5417),
})  # fmt: skip

EARTH_RADIUS_KM = 6371.0


@lru_cache(maxsize=65536)
def coordinates(location: str) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees, or None when the location is not on the map."""
    if location in CITY_COORDINATES:
        return CITY_COORDINATES[location]
    lat_text, _, lon_text = location.partition(",")
    try:
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:  # not two numbers (no comma: lon_text is "")
        return None
    return (lat, lon) if -90 <= lat <= 90 and -180 <= lon <= 180 else None


@lru_cache(maxsize=65536)
def distance_km(a: str, b: str) -> float | None:
    """Great-circle distance between two locations; None when either is not on the map."""
    if a == b:
        return 0.0
    pa, pb = coordinates(a), coordinates(b)
    if pa is None or pb is None:
        return None
    lat1, lon1, lat2, lon2 = map(math.radians, (*pa, *pb))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
