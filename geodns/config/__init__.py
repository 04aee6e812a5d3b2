"""Zone configuration: YAML with line numbers, validation, the typed model."""

from geodns.config.loader import (
    ConfigError,
    ConfigInvalid,
    GeoRule,
    load_zone_file,
    load_zone_text,
    load_zones,
    zone_files,
)
from geodns.config.model import (
    SOA,
    Check,
    Endpoint,
    NameServer,
    Node,
    Region,
    RRset,
    Steered,
    Step,
    Zone,
)

__all__ = [
    "SOA",
    "Check",
    "ConfigError",
    "ConfigInvalid",
    "Endpoint",
    "GeoRule",
    "NameServer",
    "Node",
    "RRset",
    "Region",
    "Steered",
    "Step",
    "Zone",
    "load_zone_file",
    "load_zone_text",
    "load_zones",
    "zone_files",
]
