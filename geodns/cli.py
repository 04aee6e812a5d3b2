"""The `geodns` command: serve, check, keygen, query, status, drain, undrain, reload, agent, balance."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from geodns.balance import cli as balance_cli
from geodns.control import client, webhook
from geodns.dnssec import cli as keys_cli
from geodns.health import agent

DEFAULT_ZONES = "zones"
DEFAULT_GEOIP = "data/geoip-bundle.mmdb"
DEFAULT_ADMIN = "127.0.0.1:8053"
DEFAULT_STATE = os.environ.get("GEODNS_STATE", "state/admin-state.json")


def _default_geoip() -> str | None:
    env = os.environ.get("GEODNS_GEOIP")
    if env:
        return env
    return DEFAULT_GEOIP if Path(DEFAULT_GEOIP).exists() else None


def _add_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zones", default=os.environ.get("GEODNS_ZONES", DEFAULT_ZONES), help="zone file or directory of *.yaml (default: zones/)")
    p.add_argument("--geoip", default=None, help=f"GeoIP database (.mmdb; default: {DEFAULT_GEOIP}); 'none' for no GeoIP")
    p.add_argument("--state", default=None, help=f"admin state file (JSON: drains, down) for drains and forced verdicts (serve default: {DEFAULT_STATE}; 'none' for none)")


def _geoip_arg(args: argparse.Namespace) -> str | None:
    if args.geoip == "none":
        return None
    return args.geoip or _default_geoip()


MIN_TOKEN = 16
"""Characters an admin token should have: anyone who guesses it can drain every region."""


def _admin_token(args: argparse.Namespace) -> str | None:
    """The admin API's bearer token: --admin-token-file's first line when given, else
    --admin-token or $GEODNS_ADMIN_TOKEN (empty: none, writes refused, as always). Raises
    ValueError for a file that cannot be read or is empty, or a token with spaces; a short
    token is taken with a warning."""
    token = args.admin_token or None
    source = "--admin-token (or $GEODNS_ADMIN_TOKEN)"
    if args.admin_token_file:
        source = args.admin_token_file
        try:
            with open(args.admin_token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--admin-token-file: cannot read {args.admin_token_file}: {exc}") from None
        if not token:
            raise ValueError(f"--admin-token-file: {args.admin_token_file} is empty")
    if token is None:
        return None
    if any(c.isspace() for c in token):
        raise ValueError(f"{source}: the admin token must hold no spaces")
    if len(token) < MIN_TOKEN:
        logging.getLogger("geodns").warning(
            "event=weak_admin_token length=%d detail=%r", len(token),
            f"an admin token of fewer than {MIN_TOKEN} characters can be guessed; make one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'")
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    from geodns.control.controller import Controller
    from geodns.control.logs import setup_logging
    from geodns.control.serve import ServeOptions, run
    from geodns.dns.explain import QueryLog
    from geodns.dns.server import Listen

    setup_logging(args.log_level, args.log_format, args.query_log)
    try:
        listens = tuple(Listen.parse(x) for x in (args.listen or ["127.0.0.1:5353"]))
        admin = None if args.admin == "none" else Listen.parse(args.admin)
        from geodns.control.admin import admin_host

        admin_hosts = tuple(admin_host(name) for name in args.admin_host or ())
    except (ValueError, OSError) as exc:
        print(f"geodns serve: {exc}", file=sys.stderr)
        return 2
    if not 0.0 < args.query_log_sample <= 1.0:
        print("geodns serve: --query-log-sample must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        admin_token = _admin_token(args)
    except ValueError as exc:
        print(f"geodns serve: {exc}", file=sys.stderr)
        return 2
    if args.workers < 0:
        print("geodns serve: --workers must be 0 (one per core) or more", file=sys.stderr)
        return 2
    workers = args.workers or os.cpu_count() or 1
    state = None if args.state == "none" else (args.state or DEFAULT_STATE)
    if state:
        Path(state).parent.mkdir(parents=True, exist_ok=True)
    try:
        rrl, rrl_flags = _rrl_flags(args)
    except ValueError as exc:
        print(f"geodns serve: {exc}", file=sys.stderr)
        return 2
    controller = Controller(args.zones, _geoip_arg(args), state, cache_size=args.cache_size)
    options = ServeOptions(
        listens=listens,
        admin=admin,
        admin_token=admin_token,
        admin_hosts=admin_hosts,
        node_file=args.node,
        workers=workers,
        query_log=QueryLog(args.query_log_sample) if args.query_log else None,
        rrl=rrl,
        rrl_flags=rrl_flags,
        cookie_secret_file=args.cookie_secret_file,
    )
    return run(controller, options)


_RRL_FLAGS = ("rate", "slip", "window", "ipv4_prefix", "ipv6_prefix", "exempt", "log_only", "slots", "share")


def _rrl_flags(args: argparse.Namespace):
    """The `--rrl-*` flags given, as settings (checked now) and the names of those given
    (they win over the node settings file's `rrl:`)."""
    from geodns.dns.rrl import RRLSettings

    given = {name: getattr(args, f"rrl_{name}") for name in _RRL_FLAGS if getattr(args, f"rrl_{name}") is not None}
    if "exempt" in given:
        given["exempt"] = tuple(given["exempt"])
    return RRLSettings(**given), tuple(given)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write this node's Ed25519 private key (mode 0600) and print its public key."""
    from geodns.health import keys

    name = args.name
    if not name or "/" in name or name.startswith("."):
        print(f"geodns keygen: --name {name!r} is not a usable file name", file=sys.stderr)
        return 2
    path = Path(args.out) / f"{name}.key"
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"geodns keygen: --out {args.out} is not a directory (the key file goes inside it, as NAME.key)", file=sys.stderr)
        return 2
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        key = keys.generate()
        keys.write_private_key(str(path), key)
    except FileExistsError:
        print(f"geodns keygen: {path} exists; not overwriting a node's key (remove it first to replace it)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"geodns keygen: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    public = keys.public_key_text(key)
    if args.quiet:
        print(public)
        return 0
    print(f"wrote {path} (mode 0600): in this node's settings, private_key_file: {path.name}")
    print("in every other node's settings, under peers:")
    print(f'  - {{name: {name}, url: "http://ADDRESS:PORT", public_key: "{public}"}}')
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from geodns.control.controller import ReloadFailed, load_config

    path = args.path or args.zones
    try:
        config = load_config(path)
    except ReloadFailed as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s); nothing loaded", file=sys.stderr)
        return 1
    names = sum(len(z.nodes) for z in config.zones)
    steered = sum(1 for z in config.zones for n in z.nodes.values() if n.steered)
    for zone in config.zones:
        signed = ""
        if zone.dnssec is not None:
            keys = ", ".join(f"key {k.tag} (algorithm {k.algorithm})" for k in zone.dnssec.keys if k.signing)
            signed = f"; signed: {keys}"
        print(f"{zone.source}: zone {zone.origin}: {len(zone.regions)} regions, {len(zone.nodes)} names{signed}")
    print(f"OK: {len(config.zones)} zone(s), {names} names ({steered} steered)")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import json
    import time

    from geodns.control.controller import Controller, ReloadFailed
    from geodns.dns.explain import Explanation, explain

    if args.admin:
        return _query_node(args, Explanation)
    controller = Controller(args.zones, _geoip_arg(args), args.state)
    try:
        snapshot = controller.start()
    except ReloadFailed as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    try:
        result = explain(snapshot, args.name, args.type, args.client, time.time())
    except ValueError as exc:
        print(f"geodns query: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.text())
    return 0


def _query_node(args: argparse.Namespace, explanation: type) -> int:
    """`geodns query --admin`: the running node's answer and reasons (its live verdicts and load)."""
    import json
    import urllib.parse

    from geodns.control.client import AdminError, call

    query = urllib.parse.urlencode({"name": args.name, "client": args.client, "type": args.type})
    try:
        doc = call(args, "GET", f"/v1/explain?{query}")
        result = explanation.from_dict(doc)
    except AdminError as exc:
        print(f"geodns query: {exc}", file=sys.stderr)
        return 2
    except (KeyError, TypeError):
        print(f"geodns query: {args.admin} did not answer a /v1/explain document", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2) if args.json else result.text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geodns", description="Global DNS load balancer (GeoDNS / GSLB)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="answer DNS for the zones (UDP and TCP)")
    _add_sources(p)
    p.add_argument("--listen", action="append", metavar="ADDR:PORT", help="address to serve DNS on (repeatable; default 127.0.0.1:5353; IPv6 as [::1]:5353)")
    p.add_argument("--admin", default=DEFAULT_ADMIN, metavar="ADDR:PORT", help=f"admin API, /metrics and status page (default {DEFAULT_ADMIN}; 'none' to disable)")
    p.add_argument("--admin-token", default=os.environ.get("GEODNS_ADMIN_TOKEN"), help="bearer token for admin writes (default: $GEODNS_ADMIN_TOKEN); 16 or more random characters")
    p.add_argument("--admin-token-file", default=os.environ.get("GEODNS_ADMIN_TOKEN_FILE"), metavar="FILE", help="read the admin token from FILE's first line instead (a container secret; default: $GEODNS_ADMIN_TOKEN_FILE)")
    p.add_argument("--admin-host", action="append", metavar="NAME", help="a name the admin API answers to in the Host header, besides its addresses and localhost (repeatable; DNS rebinding defence)")
    p.add_argument("--node", default=None, metavar="FILE", help="node settings (name, private_key_file, peers with public keys) for distributed health checking")
    p.add_argument("--workers", type=int, default=0, help="worker processes sharing the port with SO_REUSEPORT (default: one per core)")
    p.add_argument("--query-log", action="store_true", help="log one line per query (client, subnet, name, type, rcode, answer, and why: the deciding step, regions, place)")
    p.add_argument("--query-log-sample", type=float, default=1.0, metavar="RATE", help="with --query-log: share of queries logged, 0..1 (default 1)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", default="info")
    p.add_argument("--cache-size", type=int, default=200_000, help="answer cache entries per worker")
    p.add_argument("--cookie-secret-file", default=None, metavar="FILE", help="DNS cookie secret (32 hex digits; a second line: the previous one), shared by every node; or cookie_secret in the --node file (default: random at start)")
    rrl = p.add_argument_group("response rate limiting (UDP; TCP and valid DNS cookies are never limited)")
    rrl.add_argument("--rrl-rate", type=float, default=None, metavar="N", help="responses per second per client network, response class and name (default 0: off)")
    rrl.add_argument("--rrl-slip", type=int, default=None, metavar="N", help="send every N-th dropped response truncated (TC=1) so resolvers retry over TCP (default 2; 0 never, 1 always)")
    rrl.add_argument("--rrl-window", type=float, default=None, metavar="S", help="seconds of rate a quiet network may use at once (bucket depth; default 1)")
    rrl.add_argument("--rrl-ipv4-prefix", type=int, default=None, metavar="LEN", help="IPv4 client network size (default 24)")
    rrl.add_argument("--rrl-ipv6-prefix", type=int, default=None, metavar="LEN", help="IPv6 client network size (default 56)")
    rrl.add_argument("--rrl-exempt", action="append", default=None, metavar="CIDR", help="never limit this network (repeatable)")
    rrl.add_argument("--rrl-log-only", action="store_const", const=True, default=None, help="count and log what would be limited, answer everything")
    rrl.add_argument("--rrl-slots", type=int, default=None, metavar="N", help="buckets in the table, a power of two (default 65536, 32 bytes each)")
    rrl.add_argument("--rrl-share", choices=("shared", "divided"), default=None, help="with --workers: one table in shared memory (default) or rate/N per worker")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate zone files; report every error with file:line: field")
    p.add_argument("path", nargs="?", help="zone file or directory (default: --zones)")
    p.add_argument("--zones", default=os.environ.get("GEODNS_ZONES", DEFAULT_ZONES))
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("keygen", help="make this node's Ed25519 key pair for signed peer messages")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for NAME.key (created, mode 0600)")
    p.add_argument("--name", default="node", help="the node's name: the key file is NAME.key (default node)")
    p.add_argument("--quiet", action="store_true", help="print only the public key")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("query", help="print the answer for a client and explain each step")
    p.add_argument("name")
    p.add_argument("--client", required=True, help="client IP address (as if sent in ECS)")
    p.add_argument("--type", default="A")
    p.add_argument("--json", action="store_true")
    p.add_argument("--admin", default=None, metavar="ADDR:PORT", help="ask this running node's admin API (its live health verdicts and balancer load) instead of loading the zones here")
    p.add_argument("--token", default=None, help="with --admin from outside loopback: bearer token (default: $GEODNS_ADMIN_TOKEN)")
    _add_sources(p)
    p.set_defaults(func=cmd_query)

    # Subcommands implemented in other packages: (name, their add_arguments, their run, help).
    for name, add, run, text in (
        ("status", client.add_status_arguments, client.run_status, "show regions, endpoints, observers and verdicts"),
        ("drain", client.add_drain_arguments, client.run_drain, "drain a region or endpoint (REGION or REGION/ADDRESS)"),
        ("undrain", client.add_undrain_arguments, client.run_undrain, "end a drain"),
        ("reload", client.add_reload_arguments, client.run_reload, "re-read zones and the GeoIP file on a running server"),
        ("agent", agent.add_arguments, agent.run, "checker-only node: probe and exchange, serve no DNS"),
        ("balance", balance_cli.add_arguments, balance_cli.run, "the regional HTTP load balancer"),
        ("keys", keys_cli.add_arguments, keys_cli.run, "DNSSEC zone keys: generate, ds, list, state"),
        ("webhook", webhook.add_arguments, webhook.run, "ExternalDNS webhook provider: Kubernetes records into a node's zones"),
    ):
        p = sub.add_parser(name, help=text)
        add(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `geodns query ... | head`: the reader left; say nothing more, and keep
        # Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
