"""A snapshot larger than a socket buffer reaches every worker on reload, and no worker is lost.

Found by tests/fuzz_long.py's live-server run: under uvloop, `add_reader` puts the parent-worker
socket in non-blocking mode, and a message bigger than the socket buffer (~200 kB: a zone of a
few thousand names, or, before the per-type counters were bounded, a worker's counters after a
fuzz) was cut short with EAGAIN: the worker read half a message, took it for a closed pipe and
exited, and the parent started another (`worker exited unexpectedly ... code=0`).
"""

from __future__ import annotations

import signal
import time

import dns.exception
import pytest
from dnsclient import addresses, ask, fqdn

from .conftest import start_server
from .test_reload import edit, zone_copy

NAMES = 300
FILLER = "x" * 240


@pytest.mark.slow
def test_a_reload_larger_than_the_socket_buffer_reaches_every_worker(tmp_path):
    zones = zone_copy(tmp_path)
    records = "".join(
        f'  filler{i}:\n    TXT: ["{FILLER}1", "{FILLER}2", "{FILLER}3"]\n' for i in range(NAMES)
    )
    edit(zones / "example.yaml", "  mail:\n", records + "  mail:\n")
    server = start_server(tmp_path / "run", zones=zones, extra=["--workers", "2"], workers=False)
    try:
        edit(zones / "example.yaml", "  mail:\n", "  newname:\n    A: [198.51.100.77]\n  mail:\n")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            # Many source ports, so that SO_REUSEPORT's hash reaches both workers.
            seen = {new_name_answer(server) for _ in range(40)}
            if seen == {"198.51.100.77"} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen == {"198.51.100.77"}, f"some worker still serves the old zone: {seen}"
        log = server.log_text()
        assert "reloaded generation=2" in log, log[-2000:]
        for bad in ("worker exited unexpectedly", "cannot send snapshot"):
            assert bad not in log, log[-3000:]
    finally:
        server.stop()


def new_name_answer(server) -> str | None:
    """The A record of newname (None: NXDOMAIN or no answer), from a fresh source port."""
    try:
        found = addresses(ask(server, fqdn("newname"), "A", qid=0x4E4E, timeout=2))
    except dns.exception.Timeout:
        return "timeout"
    return found[0] if found else None
