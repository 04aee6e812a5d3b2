"""`python -m geodns.balance --config FILE`: the balancer without the main CLI."""

import argparse

from geodns.balance.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="geodns balance", description="regional HTTP load balancer")
add_arguments(parser)
raise SystemExit(run(parser.parse_args()))
