"""The regional tier: `geodns balance`, an HTTP/1.1 reverse proxy for one region."""

from geodns.balance.config import BalancerConfig, ConfigError, load, parse
from geodns.balance.pool import LoadReport
from geodns.balance.server import Balancer

__all__ = ["Balancer", "BalancerConfig", "ConfigError", "LoadReport", "load", "parse"]
