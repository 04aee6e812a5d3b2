"""Health: probes, rise/fall, quorum verdicts, peer exchange and drains.

See docs/health.md. The control plane uses `HealthService`; the regional
balancer reuses `probe`. (Fail-open answers are the DNS core's to count:
`geodns_failopen_answers_total`, see `geodns.control.metrics`.)
"""

from geodns.health.probes import ProbeResult, probe
from geodns.health.quorum import Drain
from geodns.health.service import HealthService
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
]
