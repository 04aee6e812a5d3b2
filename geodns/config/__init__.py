"""Zone configuration: YAML with line numbers, validation, the typed model.

`load_zones` / `load_zone_file` / `load_zone_text` read zone files; `read_yaml_file`
reads any other YAML file of the node with the same line numbers and errors.
"""

from geodns.config._yaml import (
    MAX_DEPTH,
    LineList,
    LineMap,
    error_text,
    line_of,
    read_yaml,
    read_yaml_file,
)
from geodns.config.errors import ConfigError, ConfigInvalid
from geodns.config.loader import load_zone_file, load_zone_text, load_zones, zone_files
from geodns.config.model import (
    SOA,
    Check,
    Endpoint,
    GeoRule,
    NameServer,
    Node,
    Region,
    RRset,
    Steered,
    Step,
    Zone,
)

__all__ = [
    "MAX_DEPTH",
    "SOA",
    "Check",
    "ConfigError",
    "ConfigInvalid",
    "Endpoint",
    "GeoRule",
    "LineList",
    "LineMap",
    "NameServer",
    "Node",
    "RRset",
    "Region",
    "Steered",
    "Step",
    "Zone",
    "error_text",
    "line_of",
    "load_zone_file",
    "load_zone_text",
    "load_zones",
    "read_yaml",
    "read_yaml_file",
    "zone_files",
]
