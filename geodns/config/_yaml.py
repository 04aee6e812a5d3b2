"""YAML loading that remembers where every value came from.

Mappings come back as `LineMap` (a dict that knows the line of each key) and
sequences as `LineList` (a list that knows the line of each item), so that
validation errors can say `zones/example.yaml:14: regions.eu-west...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from geodns.config.errors import ConfigError, ConfigInvalid


class LineMap(dict):
    """A dict with `line` (of the mapping) and `key_lines` (line of each key)."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A list with `line` (of the sequence) and `item_lines`."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping (PyYAML would silently keep the last)."""

    def __init__(self, key: Any, line: int, first_line: int):
        self.key = key
        self.line = line
        self.first_line = first_line
        super().__init__(f"duplicate key {key!r} (first at line {first_line})")


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineMap:
    result = LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key_line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:  # `? [1]: 2`, `? !!set {a}: 2` (PyYAML's own mappings refuse them too)
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found an unhashable key (a list, mapping or set)", key_node.start_mark
            ) from None
        if key in result:
            raise DuplicateKey(key, key_line, result.key_lines[key])
        value = loader.construct_object(value_node, deep=True)
        if isinstance(value, LineMap | LineList):
            # A block mapping starts on the line after its key; errors about the
            # whole value ("soa.serial: is required") belong on the key's line.
            value.line = key_line
        result[key] = value
        result.key_lines[key] = key_line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


MAX_DEPTH = 64
"""Mappings and sequences nested deeper than this are refused: PyYAML composes recursively,
and thousands of `[` were a RecursionError (a zone is a few levels deep)."""


class TooDeep(yaml.MarkedYAMLError):
    def __init__(self, mark: Any) -> None:
        super().__init__(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)


def check_depth(text: str) -> None:
    """Raise TooDeep where the text nests past MAX_DEPTH (the event parser does not recurse)."""
    # Each level is a flow bracket or more leading indentation (spaces, or `- ` of a
    # compact sequence): when even their sum stays under the limit, skip the parse.
    brackets = text.count("[") + text.count("{")
    if brackets < MAX_DEPTH and max((len(line) - len(line.lstrip(" -?:")) for line in text.splitlines()), default=0) + brackets < MAX_DEPTH:
        return
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise TooDeep(event.start_mark)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def load_yaml(text: str) -> Any:
    """Parse one YAML document into LineMap/LineList/scalars. Raises yaml.YAMLError."""
    check_depth(text)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


def read_yaml(text: str, file: str) -> Any:
    """Parse one YAML document for `file`; a syntax error, a duplicate key or nesting past
    MAX_DEPTH raises ConfigInvalid with the line it is on."""
    try:
        return load_yaml(text)
    except DuplicateKey as exc:
        raise ConfigInvalid([ConfigError(file, exc.line, "", str(exc))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigInvalid([ConfigError(file, line, "", f"YAML syntax: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigInvalid([ConfigError(file, 0, "", f"YAML: {exc}")]) from None


def read_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file (`read_yaml`); an unreadable file raises ConfigInvalid too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigInvalid([ConfigError(str(path), 0, "", f"cannot read: {exc}")]) from None
    return read_yaml(text, str(path))


def line_of(tree: Any, field: str) -> int | None:
    """The line of a dotted key path (`exchange.nats.servers`) in a parsed document: of the
    deepest key of the path found in it (`exchange.nats` for a missing `servers`); None in a
    document without lines (a plain dict) or when not even the first key is there."""
    line = None
    node = tree
    for key in field.split("."):
        if not isinstance(node, LineMap) or key not in node:
            break
        line = node.line_of(key)
        node = node[key]
    return line


def error_text(file: str, tree: Any, field: str, message: str) -> str:
    """`file:line: field: message`, the line of `field` in `tree` (`file: field: message`
    when it has none)."""
    line = line_of(tree, field)
    return f"{file}:{line}: {field}: {message}" if line else f"{file}: {field}: {message}"
