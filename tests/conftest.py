"""Test-wide setup. This file also puts `tests/` on sys.path, so suites share `netutil`.

The suites under INTEGRATION start real processes (`geodns serve`, knotd, unbound, nats-server,
chromium) and talk to them over sockets; they carry the `integration` marker, so that
`pytest -m "not integration"` is the fast unit run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INTEGRATION = tuple(TESTS / d for d in ("integration", "e2e", "gslb"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(d) for d in INTEGRATION):
            item.add_marker(pytest.mark.integration)
