"""The admin token as an operator hands it over: a file (a container secret), checked at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from netutil import free_port, stop_process, wait_port

from tests.control.conftest import http_request

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.5.61"


def serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, int, Path]:
    admin = free_port(HOST)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geodns", "serve", "--zones", str(ROOT / "zones"), "--listen", f"{HOST}:{free_port(HOST)}",
         "--admin", f"{HOST}:{admin}", "--state", str(tmp_path / "state.json"), "--workers", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=log.open("w"), env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    return proc, admin, log


def drain(admin: int, token: str) -> int:
    status, _, _ = http_request(f"http://{HOST}:{admin}/v1/drain", "POST", json.dumps({"target": "eu-west"}).encode(),
                                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return status


def test_the_token_comes_from_a_file_and_a_short_one_is_warned_of(tmp_path: Path) -> None:
    token = "s3cret-from-a-file-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    proc, admin, log = serve(tmp_path, "--admin-token-file", str(tmp_path / "token"))
    try:
        wait_port(HOST, admin)
        assert drain(admin, "wrong-token-0123456789") == 401
        assert drain(admin, token) == 200
    finally:
        stop_process(proc)
    assert "weak_admin_token" not in log.read_text()

    (tmp_path / "short").write_text("guessable\n")
    proc, admin, log = serve(tmp_path, "--admin-token-file", str(tmp_path / "short"))
    try:
        wait_port(HOST, admin)
        assert drain(admin, "guessable") == 200, "taken, but the operator is told"
    finally:
        stop_process(proc)
    assert "event=weak_admin_token length=9" in log.read_text()


def test_a_token_file_that_cannot_serve_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    for path, message in ((tmp_path / "missing", "cannot read"), (tmp_path / "empty", "is empty")):
        proc, _, log = serve(tmp_path, "--admin-token-file", str(path))
        assert proc.wait(timeout=30) == 2
        text = log.read_text()
        assert "geodns serve: --admin-token-file:" in text and str(path) in text and message in text, text


def test_an_empty_token_in_the_environment_means_none_as_before(tmp_path: Path) -> None:
    """`GEODNS_ADMIN_TOKEN=` (set but empty) starts the node with writes refused, as it did
    before token files; a token with a space in it is refused at start."""
    proc, admin, _ = serve(tmp_path, "--admin-token", "")
    try:
        wait_port(HOST, admin)
        assert drain(admin, "anything-0123456789") == 403
    finally:
        stop_process(proc)
    proc, _, log = serve(tmp_path, "--admin-token", "two words-0123456789")
    assert proc.wait(timeout=30) == 2
    assert "the admin token must hold no spaces" in log.read_text()
