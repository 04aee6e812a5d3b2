"""The DNS cookie secret from the node settings file or --cookie-secret-file: every way it can be
wrong is an error naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from geodns.control.cookie_settings import cookie_secrets, load_cookie_secrets
from geodns.health.settings import NodeSettingsError

NEW = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OLD = "00112233445566778899aabbccddeeff"


def node(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.yaml"
    path.write_text("node: a\n" + text)
    return str(path)


def test_inline_and_from_files(tmp_path):
    keys = load_cookie_secrets(node(tmp_path, f'cookie_secret: "{NEW}"\ncookie_secret_previous: "0x{OLD.upper()}"\n'))
    assert (keys.current, keys.previous) == (bytes.fromhex(NEW), bytes.fromhex(OLD))
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "new").write_text(NEW + "\n")
    (tmp_path / "keys" / "old").write_text(OLD)
    keys = load_cookie_secrets(node(tmp_path, "cookie_secret_file: keys/new\ncookie_secret_previous_file: keys/old\n"))
    assert (keys.current, keys.previous) == (bytes.fromhex(NEW), bytes.fromhex(OLD))
    assert load_cookie_secrets(node(tmp_path, "quorum: any\n")) is None


def test_the_flag_file_holds_the_previous_secret_on_a_second_line(tmp_path):
    (tmp_path / "key").write_text(f"{NEW}\n{OLD}\n")
    keys = cookie_secrets(None, str(tmp_path / "key"))
    assert (keys.current, keys.previous, keys.origin) == (bytes.fromhex(NEW), bytes.fromhex(OLD), str(tmp_path / "key"))
    assert cookie_secrets(None, None) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('cookie_secret: "abc"\n', r"node\.yaml:2: cookie_secret: expected 32 hex digits"),
        (f'cookie_secret: "{NEW[:-2]}zz"\n', r":2: cookie_secret: .*not hexadecimal"),
        ("cookie_secret: 12345\n", r":2: cookie_secret: expected 32 hex digits in quotes"),
        (f'cookie_secret: "{NEW}"\ncookie_secret_file: k\n', r":3: cookie_secret_file: give either"),
        (f'cookie_secret_previous: "{OLD}"\n', r":2: cookie_secret_previous: a previous secret needs the current one"),
        ("cookie_secret_file: missing.key\n", r":2: cookie_secret_file: cannot read .*missing\.key"),
    ],
)
def test_errors_name_the_line_and_key(tmp_path, text, message):
    with pytest.raises(NodeSettingsError, match=message):
        load_cookie_secrets(node(tmp_path, text))


def test_one_place_only(tmp_path):
    (tmp_path / "key").write_text(NEW)
    with pytest.raises(NodeSettingsError, match="give it in one place"):
        cookie_secrets(node(tmp_path, f'cookie_secret: "{NEW}"\n'), str(tmp_path / "key"))
    (tmp_path / "three").write_text(f"{NEW}\n{OLD}\n{NEW}\n")
    with pytest.raises(NodeSettingsError, match="--cookie-secret-file: .*got 3 lines"):
        cookie_secrets(None, str(tmp_path / "three"))
