"""A serving node's settings file (`geodns serve --node FILE`), read once.

The file is parsed once, with the line of every key, and each part is handed to
the reader that knows it: the health settings (`node`, `peers`, `quorum`, ...,
`geodns.health.settings`), the DNS cookie secret (`cookie_settings`), `rrl:`
(`geodns.dns.rrl`), `region:`/`latency_probe:` (`latency_probe`) and
`zone_sync:` (`zone_sync`). Every part is checked before the node does
anything with any of them: a file with an error is refused whole, with its
`file:line: field: message`, and nothing is logged or changed before that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from geodns.config import error_text
from geodns.control import latency_probe, zone_sync
from geodns.control.cookie_settings import COOKIE_KEYS, cookie_secrets_from
from geodns.dns.cookies import CookieSecrets
from geodns.dns.rrl import RRLSettings, RRLSettingsError, settings_from_mapping
from geodns.health.settings import (
    NodeSettings,
    NodeSettingsError,
    parse_node_settings,
    read_node_file,
)

__all__ = ["NodeFile", "NodeSettingsError", "read"]

RRL_KEY = "rrl"


@dataclass(frozen=True, slots=True)
class NodeFile:
    path: str
    tree: Any
    """The file as read (`LineMap`), for a reader that needs it again."""
    health: NodeSettings
    cookies: CookieSecrets | None
    """None: the file sets no cookie secret."""
    rrl: RRLSettings | None
    """None: the file has no `rrl:` (the command line's settings alone)."""
    latency: latency_probe.LatencySettings | None
    """None: no `region:`, nothing measured."""
    zone_sync: zone_sync.ZoneSyncSettings


def read(path: str) -> NodeFile:
    """Read and check every part of a node settings file. Raises NodeSettingsError."""
    tree = read_node_file(path)
    extra = (RRL_KEY, zone_sync.SETTINGS_KEY, *COOKIE_KEYS, *latency_probe.KEYS)
    health = parse_node_settings(tree, path, extra, base_dir=os.path.dirname(path))
    peers = {p.name for p in health.peers}
    try:
        return NodeFile(
            path=path,
            tree=tree,
            health=health,
            cookies=cookie_secrets_from(tree, path),
            rrl=rrl_settings(tree, path),
            latency=latency_probe.load_settings(path, peers, health.source_address, data=tree),
            zone_sync=zone_sync.settings_from_mapping(tree.get(zone_sync.SETTINGS_KEY), path, peers, tree),
        )
    except (RRLSettingsError, latency_probe.LatencySettingsError, zone_sync.ZoneSyncSettingsError) as exc:
        raise NodeSettingsError(str(exc)) from None


def rrl_settings(tree: Any, path: str) -> RRLSettings | None:
    """The file's `rrl:`, None without one. Raises RRLSettingsError (`file:line: rrl.key: ...`)."""
    if tree.get(RRL_KEY) is None:
        return None

    def fail(key: str, message: str) -> RRLSettingsError:
        return RRLSettingsError(error_text(path, tree, f"{RRL_KEY}.{key}" if key else RRL_KEY, message))

    return settings_from_mapping(tree[RRL_KEY], fail=fail)
