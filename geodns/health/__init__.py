"""Health: probes, rise/fall, quorum verdicts, peer exchange and drains.

See docs/health.md. The control plane uses `HealthService`; the regional
balancer reuses `probe`; the DNS core calls `record_failopen`.
"""

from geodns.health.probes import ProbeResult, probe
from geodns.health.quorum import Drain
from geodns.health.service import HealthService, record_failopen
from geodns.health.settings import NodeSettings, NodeSettingsError, Peer, load_node_settings

__all__ = [
    "Drain",
    "HealthService",
    "NodeSettings",
    "NodeSettingsError",
    "Peer",
    "ProbeResult",
    "load_node_settings",
    "probe",
    "record_failopen",
]
