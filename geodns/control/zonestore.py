"""Zones written through the admin API: validated whole, written atomically, applied by reload.

A zone reaches a node one way, through the config loader: a PUT is validated
with the same `load_config` a reload runs, over the zones directory as it
would be after the change, before anything is written. Only then is the file
replaced (temporary file, fsync, rename) and the controller reloaded (the
usual snapshot swap: no query is lost). A refused body changes nothing.

A zone given over the network may not name files outside the zones
directory (`latency_table`, `dnssec.keys`), unless the version on disk
already names that same file, and may not carry `exec` checks: the token
holder may change answers, never read this node's files or run commands on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geodns.config import MAX_DEPTH, ConfigError, ConfigInvalid, LineList, LineMap, Zone, read_yaml
from geodns.control.controller import Config, Controller, ReloadFailed, load_config
from geodns.fsutil import sync_directory, write_atomic
from geodns.health import strictjson

log = logging.getLogger("geodns.zones")

SOURCES_FILE = ".zone-sources.json"
MAX_ZONE_BYTES = 4 * 1024 * 1024
"""A zone body's limit: about 40,000 records."""
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml parses a 10,000-endpoint zone in 0.2 s where the pure-Python loader takes 1.3 s."""
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class ZoneRefused(Exception):
    """A zone change refused; nothing was changed. `errors` are the loader's, with line and field."""

    def __init__(self, status: int, message: str, errors: list[ConfigError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


@dataclass(frozen=True, slots=True)
class ZoneChange:
    """A zone accepted on this node: its new text (None: deleted), content hash and who sent it."""

    zone: str
    text: str | None
    hash: str | None
    source: str
    """`api` (a client of this node) or `peer:NAME`."""


def zone_name(text: str) -> str:
    """A zone name from a URL: letters, digits, `-` and `_` labels; one trailing dot allowed.
    Raises ValueError for anything else (`..`, `/`, NUL, `*`, empty labels, over 253 characters)."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{text[:80]!r} is not a zone name (letters, digits, '-' and '_' labels separated by dots)")
    return name


def content_hash(text: str) -> str:
    """The hash of a zone's content, not its formatting: the same zone in YAML with comments,
    in JSON, or re-dumped hashes the same on every node."""
    try:
        doc = yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 - a safe loader (libyaml's when built)
    except yaml.YAMLError:
        doc = text
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def text_from_json(raw: bytes) -> str:
    """A JSON zone body as the YAML text that will be stored. Raises ValueError."""
    try:
        doc = strictjson.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object (a zone document)")
    stack = [(doc, 1)]
    while stack:  # iteratively: the YAML dumper below recurses
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(f"body is nested deeper than {MAX_DEPTH} levels")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def as_json(text: str) -> Any:
    return json.loads(json.dumps(yaml.safe_load(text), default=str))


# ---- what a zone from the network may not say ---------------------------------


def refused_references(text: str, file: Path, directory: Path, current: Zone | None) -> list[ConfigError]:
    """Errors for file references that leave `directory` and for exec checks.

    `current`: the zone as served now; a reference it already makes (put there by
    the operator, e.g. the bundled example's `../data/latency.yaml`) is kept."""
    try:
        doc = read_yaml(text, str(file))
    except ConfigInvalid:
        return []  # the loader reports it, with its line
    if not isinstance(doc, dict):
        return []
    errors: list[ConfigError] = []
    root = directory.resolve()
    allowed = set()
    if current is not None:
        if current.latency_table:
            allowed.add(Path(current.latency_table).resolve())
        if current.dnssec is not None:
            allowed.add(Path(current.dnssec.keys_dir).resolve())
    refs = [("latency_table", doc, "latency_table")]
    if isinstance(doc.get("dnssec"), dict):
        refs.append(("dnssec.keys", doc["dnssec"], "keys"))
    for field, container, key in refs:
        value = container.get(key)
        if not isinstance(value, str):
            continue  # the loader says what is wrong with it
        target = (file.parent / value).resolve() if "\0" not in value else None  # resolve() raises on NUL
        if target is None or (target != root and root not in target.parents and target not in allowed):
            errors.append(ConfigError(file.name, container.line_of(key), field,
                                      f"{value!r} is outside the zones directory: a zone written through "
                                      "the API may only name files inside it"))
    _refuse_exec(doc.get("regions"), "regions", file.name, errors)
    return errors


def _refuse_exec(node: Any, field: str, file: str, errors: list[ConfigError]) -> None:
    if isinstance(node, LineMap):
        if node.get("type") == "exec":
            errors.append(ConfigError(file, node.line_of("type"), f"{field}.type",
                                      "exec checks run commands on the node: they are refused in a zone "
                                      "written through the API (put them in a zone file on the node)"))
        for key, value in node.items():
            _refuse_exec(value, f"{field}.{key}", file, errors)
    elif isinstance(node, LineList):
        for i, value in enumerate(node):
            _refuse_exec(value, f"{field}[{i}]", file, errors)


# ---- the store -------------------------------------------------------------------


class ZoneStore:
    """The zones a node serves, as files, and the one writer of those files."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.sources: dict[str, dict[str, Any]] = self._load_sources()
        """Zone -> who wrote it through the API (`source`, `updated`) and the hash it had then."""
        self.listeners: list[Callable[[ZoneChange], None]] = []
        self._hashes: tuple[Config | None, dict[str, str]] = (None, {})
        self.stale_peers: dict[str, list[str]] = {}
        """Zone -> peers that have served another version of it for too long (zone sync sets it)."""

    @property
    def directory(self) -> Path | None:
        path = Path(self.controller.zones_path)
        return path if path.is_dir() else None

    def zone(self, name: str) -> Zone | None:
        config = self.controller.config
        return next((z for z in config.zones if z.origin == name), None) if config else None

    def text(self, name: str) -> str | None:
        zone = self.zone(name)
        if zone is None:
            return None
        try:
            return Path(zone.source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def hashes(self) -> dict[str, str]:
        """Zone -> content hash of what this node serves (computed once per loaded config)."""
        config = self.controller.config
        cached_for, hashes = self._hashes
        if config is not cached_for:
            hashes = {}
            for zone in config.zones if config else ():
                text = self.text(zone.origin)
                hashes[zone.origin] = content_hash(text) if text is not None else "unreadable"
            self._hashes = (config, hashes)
        return hashes

    def describe(self) -> list[dict[str, Any]]:
        hashes = self.hashes()
        config = self.controller.config
        return [
            {
                "zone": z.origin,
                "serial": z.soa.serial,
                "hash": hashes.get(z.origin),
                "file": Path(z.source).name,
                **self._source(z.origin, hashes.get(z.origin)),
            }
            for z in sorted(config.zones if config else (), key=lambda z: z.origin)
        ]

    # Who wrote each zone survives a restart in a file beside the zones (not *.yaml, so
    # never loaded as one); an entry counts only while the zone still has the hash it
    # was written with: edited by hand since, the zone is the file's again.

    def _source(self, name: str, digest: str | None) -> dict[str, Any]:
        entry = self.sources.get(name)
        if entry is None or entry.get("hash") != digest:
            return {"source": "file"}
        return {"source": entry["source"], "updated": entry["updated"]}

    def _load_sources(self) -> dict[str, dict[str, Any]]:
        directory = self.directory
        try:
            doc = strictjson.loads((directory / SOURCES_FILE).read_bytes()) if directory else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            log.error("zone sources file ignored: %s", exc)
            return {}
        if not isinstance(doc, dict):
            return {}
        return {k: v for k, v in doc.items() if isinstance(k, str) and isinstance(v, dict)
                and isinstance(v.get("source"), str) and isinstance(v.get("hash"), str)
                and isinstance(v.get("updated"), int | float)}

    def _save_sources(self) -> None:
        directory = self.directory
        if directory is None:
            return
        try:
            write_atomic(directory / SOURCES_FILE, json.dumps(self.sources, indent=1, sort_keys=True), mode=0o644)
        except OSError as exc:
            log.error("cannot write the zone sources file: %s", exc)

    def _path_for(self, name: str, current: Zone | None) -> Path:
        directory = self.directory
        if directory is None:
            raise ZoneRefused(409, "the zone API needs a zones directory (geodns serve --zones DIR), not one file")
        if current is not None:
            path = Path(current.source)
            if path.parent.resolve() != directory.resolve():
                raise ZoneRefused(409, f"zone {name} is served from a file outside the zones directory")
            return path
        return directory / f"{name}.yaml"

    def put(self, name: str, text: str, source: str) -> dict[str, Any]:
        """Validate `text` as zone `name` with every other zone, write it, reload. Raises ZoneRefused."""
        current = self.zone(name)
        path = self._path_for(name, current)
        errors = refused_references(text, path, self.directory, current)
        if errors:
            raise ZoneRefused(422, "zone refused; still serving the previous version", errors)
        try:
            config = load_config(self.controller.zones_path, {path: text})
        except ReloadFailed as exc:
            raise ZoneRefused(422, "zone refused; still serving the previous version", self._errors(exc)) from None
        new = next(z for z in config.zones if Path(z.source) == path)
        if new.origin != name:
            raise ZoneRefused(422, "zone refused: the body is another zone",
                              [ConfigError(path.name, 1, "zone", f"{new.origin!r} is not {name!r}, the zone in the URL")])
        digest = content_hash(text)
        if current is not None and self.hashes().get(name) == digest:
            return self._result(name, digest, changed=False, created=False)
        self._replace(path, text)
        self.sources[name] = {"source": source, "updated": time.time(), "hash": digest}
        self._save_sources()
        log.info("zone %s zone=%s hash=%s source=%s generation=%d",
                 "replaced" if current else "created", name, digest, source, self.controller.generation)
        self._notify(ZoneChange(name, text, digest, source))
        return self._result(name, digest, changed=True, created=current is None)

    def delete(self, name: str, source: str) -> dict[str, Any]:
        current = self.zone(name)
        if current is None:
            raise ZoneRefused(404, f"no zone {name}")
        path = self._path_for(name, current)
        try:
            load_config(self.controller.zones_path, {path: None})
        except ReloadFailed as exc:
            raise ZoneRefused(409, "zone not deleted: the zones left would not load", self._errors(exc)) from None
        self._replace(path, None)
        self.sources.pop(name, None)
        self._save_sources()
        log.info("zone deleted zone=%s source=%s generation=%d", name, source, self.controller.generation)
        self._notify(ZoneChange(name, None, None, source))
        return {"zone": name, "deleted": True, "generation": self.controller.generation}

    def _replace(self, path: Path, text: str | None) -> None:
        """Write (or remove) one file and reload; put the file back if the reload is refused
        (another file changed on disk meanwhile)."""
        try:
            before = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            before = None
        try:
            if text is None:
                path.unlink()
                sync_directory(path.parent)
            else:
                write_atomic(path, text, mode=0o644)
        except OSError as exc:
            raise ZoneRefused(500, f"cannot write {path.name}: {exc.strerror or exc}") from None
        try:
            self.controller.reload()
        except ReloadFailed as exc:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, before, mode=0o644)
            raise ZoneRefused(422, "zone refused by the reload; still serving the previous version", self._errors(exc)) from None

    def _errors(self, exc: ReloadFailed) -> list[ConfigError]:
        """A refusal's errors, with file names relative to the zones directory (a client has
        no business with this node's paths)."""
        prefixes = sorted({f"{p}{os.sep}" for d in (Path(self.controller.zones_path),)
                           for p in (d, d.resolve(), d.absolute())}, key=len, reverse=True)

        def strip(text: str) -> str:
            for prefix in prefixes:
                text = text.replace(prefix, "")
            return text

        if exc.details:
            return [ConfigError(strip(e.file), e.line, e.field, strip(e.message)) for e in exc.details]
        return [ConfigError("", 0, "", strip(line)) for line in exc.errors]

    def _result(self, name: str, digest: str, *, changed: bool, created: bool) -> dict[str, Any]:
        zone = self.zone(name)
        return {"zone": name, "hash": digest, "serial": zone.soa.serial if zone else None, "changed": changed,
                "created": created, "generation": self.controller.generation}

    def _notify(self, change: ZoneChange) -> None:
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - a listener must not undo an accepted change
                log.exception("zone change listener failed")


def error_dicts(errors: list[ConfigError]) -> list[dict[str, Any]]:
    return [{"file": e.file, "line": e.line, "field": e.field, "message": e.message} for e in errors]
