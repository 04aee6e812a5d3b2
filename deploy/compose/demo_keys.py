"""Make the compose demo's node files with keys of its own, at first start.

    python3 demo_keys.py TEMPLATES OUT

TEMPLATES holds one node file per node (nodes/*.yaml here) whose `peers`
public keys and `cookie_secret` are placeholders. For each node this writes
OUT/NAME.yaml with every placeholder filled in and OUT/keys/NAME.key (mode
0600), all from keys and a cookie secret made here, and OUT/keys/admin-token, the
nodes' admin API token (0600), so no secret of the demo is in the repository. A second run keeps what OUT already holds: restarting the
demo keeps its identities. For a real cluster, each node makes its own key with
`geodns keygen` and only public keys travel (docs/health.md).
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from geodns.health import keys

PEER = re.compile(r'(\{name: (?P<name>[\w.-]+), url: "[^"]*", public_key: )"[^"]*"(\})')
COOKIE = re.compile(r'^cookie_secret: "[^"]*"$', re.M)


def main(templates: Path, out: Path) -> int:
    nodes = sorted(templates.glob("*.yaml"))
    if not nodes:
        print(f"demo_keys: no node files in {templates}", file=sys.stderr)
        return 1
    (out / "keys").mkdir(parents=True, exist_ok=True)
    public: dict[str, str] = {}
    for node in nodes:
        path = out / "keys" / f"{node.stem}.key"
        if not path.exists():
            keys.write_private_key(str(path), keys.generate())
        key, _ = keys.load_private_key(str(path))
        public[node.stem] = keys.public_key_text(key)
    cookie = secret_file(out / "keys" / "cookie-secret", lambda: secrets.token_hex(16))
    secret_file(out / "keys" / "admin-token", lambda: secrets.token_urlsafe(24))
    for node in nodes:
        text = node.read_text()
        unknown = {m["name"] for m in PEER.finditer(text)} - set(public)
        if unknown:
            print(f"demo_keys: {node.name}: peers without a node file: {sorted(unknown)}", file=sys.stderr)
            return 1
        text = PEER.sub(lambda m: f'{m[1]}"{public[m["name"]]}"{m[3]}', text)
        text = COOKIE.sub(f'cookie_secret: "{cookie}"', text)
        (out / node.name).write_text(text)
        print(f"demo_keys: {node.stem}: {public[node.stem]}")
    return 0


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`, made (mode 0600) when the file is not there yet."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make() + "\n")
    return path.read_text().strip()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
