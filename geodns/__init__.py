"""geodns: a global DNS load balancer (GeoDNS / GSLB)."""

__version__ = "0.1.0"
