"""Load and validate zone files into the typed model.

Validation collects every error, each as `file:line: field: message`, and a
file with any error yields no zone at all: a typo never passes silently and a
half-valid configuration is never served. What a zone file holds is read by
`zone.py` (the document, regions), `checks.py`, `records.py` and `steering.py`,
each value through the typed readers of `fields.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from geodns.config._yaml import read_yaml, read_yaml_file
from geodns.config.errors import ConfigError, ConfigInvalid
from geodns.config.fields import Ctx
from geodns.config.model import Zone
from geodns.config.zone import read_zone


def load_zone_text(text: str, file: str) -> Zone:
    """Parse and validate one zone file's text. Raises ConfigInvalid."""
    return _zone(read_yaml(text, file), file)


def load_zone_file(path: str | Path) -> Zone:
    return _zone(read_yaml_file(path), str(path))


def _zone(doc: object, file: str) -> Zone:
    ctx = Ctx(file)
    zone = read_zone(ctx, doc, file)
    if ctx.errors or zone is None:
        raise ConfigInvalid(ctx.errors or [ConfigError(file, 0, "", "empty zone file")])
    return zone


def zone_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load_zones(path: str | Path, replace: Mapping[Path, str | None] | None = None) -> list[Zone]:
    """Every zone of a file or a directory of `*.yaml`, validated whole. Raises ConfigInvalid.

    `replace` validates the directory as it would be after a change, without touching
    it: a file's text given in place of what is on disk, or None for a removed file."""
    replace = replace or {}
    files = sorted({*(f for f in zone_files(path) if replace.get(f, "") is not None),
                    *(f for f, text in replace.items() if text is not None)})
    if not files:
        raise ConfigInvalid([ConfigError(str(path), 0, "", "no zone files (*.yaml) found")])
    zones: list[Zone] = []
    errors: list[ConfigError] = []
    for file in files:
        try:
            text = replace.get(file)
            zones.append(load_zone_file(file) if text is None else load_zone_text(text, str(file)))
        except ConfigInvalid as exc:
            errors.extend(exc.errors)
    seen: dict[str, str] = {}
    for zone in zones:
        if zone.origin in seen:
            errors.append(
                ConfigError(zone.source, 1, "zone", f"{zone.origin!r} is also defined in {seen[zone.origin]}")
            )
        seen[zone.origin] = zone.source
    if errors:
        raise ConfigInvalid(errors)
    return zones
