"""What every configuration reader raises: errors that say `file:line: field: message`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigError:
    file: str
    line: int
    """1-based; 0 when the error is about the file as a whole (unreadable, empty)."""
    field: str
    """Dotted path of the value (`regions.eu-west.check.type`); empty for the document."""
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigInvalid(Exception):
    """Raised with every error found; nothing was loaded."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
