"""aiohttp's server logger, made to log a malformed request in one line."""

from __future__ import annotations

import logging
import sys
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("geodns.http")


class ServerLog:
    """Stands in for aiohttp's `aiohttp.server` logger: one line per malformed request.

    aiohttp logs a refused request with `logger.exception(...)`, a traceback
    for each; a flood of bad requests would be a flood of tracebacks. Parse
    errors become `event=bad_request`; anything else (a bug of ours) keeps its
    traceback.
    """

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def _one_line(self, args: tuple[Any, ...], exc: BaseException | None) -> bool:
        if not isinstance(exc, HttpProcessingError):
            return False
        client = args[1] if len(args) > 1 else "-"
        lines = str(exc.message or type(exc).__name__).strip().splitlines()
        self.logger.info("event=bad_request client=%s status=%s error=%r", client, exc.code, lines[0])
        return True

    @staticmethod
    def _exc(kw: dict[str, Any]) -> BaseException | None:
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException):
            return exc
        return sys.exc_info()[1] if exc else None

    def debug(self, *args: Any, **kw: Any) -> None:
        if not self._one_line(args, self._exc(kw)):
            self.logger.debug(*args, **kw)

    def exception(self, *args: Any, **kw: Any) -> None:
        if not self._one_line(args, self._exc(kw)):
            self.logger.error(*args, **{"exc_info": True, **kw})

    def info(self, *args: Any, **kw: Any) -> None:
        self.logger.info(*args, **kw)

    def warning(self, *args: Any, **kw: Any) -> None:
        self.logger.warning(*args, **kw)

    def error(self, *args: Any, **kw: Any) -> None:
        self.logger.error(*args, **kw)
