"""The DNS cookie secret of a node: from the node settings file, or `--cookie-secret-file`.

```yaml
# in the node settings file (`geodns serve --node FILE`), beside `node:`, `peers:` ...
cookie_secret: 0123456789abcdef0123456789abcdef        # 128 bits, hex; or cookie_secret_file: PATH
cookie_secret_previous: fedcba9876543210fedcba9876543210  # during a rotation (optional); or ..._previous_file
```

Every node of a deployment gets the same secret, so that a resolver that moves
between nodes keeps a valid cookie. To rotate: give every node the new secret
with the old one as `cookie_secret_previous`, and drop the old one an hour
later (a server cookie lives an hour). A file holds the hex digits (a
`--cookie-secret-file` may hold the previous secret on a second line).
Relative paths are from the settings file's directory.
"""

from __future__ import annotations

import os
from typing import Any

from geodns.config import error_text
from geodns.dns.cookies import CookieSecrets, parse_secret
from geodns.health.settings import NodeSettingsError, read_node_file

COOKIE_KEYS = ("cookie_secret", "cookie_secret_file", "cookie_secret_previous", "cookie_secret_previous_file")
"""The node settings keys read here (`load_node_settings` accepts them as extra keys)."""


def load_cookie_secrets(path: str) -> CookieSecrets | None:
    """The cookie secrets a node settings file sets, or None when it sets none.
    Raises NodeSettingsError (`file:line: key: message`)."""
    return cookie_secrets_from(read_node_file(path), path)


def cookie_secrets_from(data: Any, path: str) -> CookieSecrets | None:
    """The cookie secrets of the node settings file `path`, as read (`read_node_file`)."""
    if not isinstance(data, dict):
        return None

    def fail(key: str, message: str) -> NodeSettingsError:
        return NodeSettingsError(error_text(path, data, key, message))

    def secret(key: str) -> bytes | None:
        inline, file_key = data.get(key), key + "_file"
        if inline is not None and data.get(file_key) is not None:
            raise fail(file_key, f"give either {key} or {file_key}, not both")
        if inline is not None:
            if not isinstance(inline, str):
                raise fail(key, "expected 32 hex digits in quotes")
            try:
                return parse_secret(inline)
            except ValueError as exc:
                raise fail(key, str(exc)) from None
        name = data.get(file_key)
        if name is None:
            return None
        if not isinstance(name, str):
            raise fail(file_key, f"expected a path, got {name!r}")
        try:
            return read_secret_file(os.path.join(os.path.dirname(path), name))[0]
        except ValueError as exc:
            raise fail(file_key, str(exc)) from None

    current, previous = secret("cookie_secret"), secret("cookie_secret_previous")
    if current is None:
        if previous is not None:
            key = "cookie_secret_previous" if "cookie_secret_previous" in data else "cookie_secret_previous_file"
            raise fail(key, "a previous secret needs the current one (cookie_secret)")
        return None
    return CookieSecrets(current, previous, origin=path)


def read_secret_file(path: str) -> tuple[bytes, bytes | None]:
    """A secret file: the secret in hex on its first line, optionally the previous one on the
    second. Raises ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not 1 <= len(lines) <= 2:
        raise ValueError(f"{path}: expected the secret on one line (and the previous one on a second), got {len(lines)} lines")
    try:
        return parse_secret(lines[0]), parse_secret(lines[1]) if len(lines) == 2 else None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def cookie_secrets(node_file: str | None, secret_file: str | None) -> CookieSecrets | None:
    """The node's cookie secrets from its settings file or `--cookie-secret-file` (one of the two),
    or None for a random one. Raises NodeSettingsError."""
    return either(load_cookie_secrets(node_file) if node_file else None, node_file, secret_file)


def either(from_node: CookieSecrets | None, node_file: str | None, secret_file: str | None) -> CookieSecrets | None:
    """The secrets the node file sets (`from_node`, read already) or those of `--cookie-secret-file`,
    given in one place only. Raises NodeSettingsError."""
    if secret_file is None:
        return from_node
    if from_node is not None:
        raise NodeSettingsError(f"{node_file}: cookie_secret: also given by --cookie-secret-file; give it in one place")
    try:
        current, previous = read_secret_file(secret_file)
    except ValueError as exc:
        raise NodeSettingsError(f"--cookie-secret-file: {exc}") from None
    return CookieSecrets(current, previous, origin=secret_file)
