"""`geodns keys`: generate a zone's signing key, print its DS for the parent, list keys, roll them."""

from __future__ import annotations

import argparse
import sys
import time

from geodns.dnssec import keys as zkeys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True)
    g = sub.add_parser("generate", help="make a new key pair for a zone (private file mode 0600)")
    g.add_argument("zone")
    g.add_argument("--dir", required=True, help="key directory (the zone file's dnssec.keys)")
    g.add_argument("--algorithm", type=int, choices=sorted(zkeys.ALGORITHMS), default=zkeys.DEFAULT_ALGORITHM,
                   help="13 = ECDSA P-256/SHA-256 (default), 15 = Ed25519")
    g.add_argument("--publish-only", action="store_true",
                   help="publish the DNSKEY but do not sign with it yet (pre-publishing a rollover's next key)")
    d = sub.add_parser("ds", help="print the DS records (SHA-256) to hand to the parent")
    d.add_argument("zone")
    d.add_argument("--dir", required=True)
    d.add_argument("--ttl", type=int, default=3600)
    s = sub.add_parser("list", help="list the keys of a zone (or of every zone) in a directory")
    s.add_argument("zone", nargs="?")
    s.add_argument("--dir", required=True)
    t = sub.add_parser("state", help="set a key's state: published (DNSKEY only), active (signs), retired (gone)")
    t.add_argument("zone")
    t.add_argument("tag", type=int)
    t.add_argument("state", choices=zkeys.STATES)
    t.add_argument("--dir", required=True)


def run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.keys_command](args)
    except (zkeys.KeyFileError, ValueError, OSError) as exc:
        print(f"geodns keys {args.keys_command}: {exc}", file=sys.stderr)
        return 1


def _generate(args: argparse.Namespace) -> int:
    key = zkeys.generate(args.zone, args.algorithm, "published" if args.publish_only else "active")
    public, private = zkeys.write(key, args.dir)
    print(f"{key.basename}: algorithm {key.algorithm}, tag {key.tag}, {key.state}")
    print(f"wrote {public} and {private} (mode 0600)")
    return 0


def _ds(args: argparse.Namespace) -> int:
    keys = [k for k in zkeys.load(args.zone, args.dir) if k.published]
    if not keys:
        print(f"geodns keys ds: no published key for {args.zone} in {args.dir}", file=sys.stderr)
        return 1
    for key in keys:
        print(zkeys.ds_text(key, args.ttl))
    return 0


def _list(args: argparse.Namespace) -> int:
    from pathlib import Path

    zones = [args.zone] if args.zone else sorted({p.name[1:].split(".+", 1)[0] for p in Path(args.dir).glob("K*.+*.key")})
    print(f"{'zone':<32} {'tag':>5} {'alg':>3} {'state':<9} created")
    for zone in zones:
        for key in zkeys.load(zone, args.dir):
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created)) if key.created else "-"
            print(f"{key.zone + '.':<32} {key.tag:>5} {key.algorithm:>3} {key.state:<9} {created}")
    return 0


def _state(args: argparse.Namespace) -> int:
    for key in zkeys.load(args.zone, args.dir):
        if key.tag == args.tag:
            zkeys.set_state(key, args.state, args.dir)
            print(f"{key.basename}: {key.state} -> {args.state}")
            return 0
    print(f"geodns keys state: no key with tag {args.tag} for {args.zone} in {args.dir}", file=sys.stderr)
    return 1


_COMMANDS = {"generate": _generate, "ds": _ds, "list": _list, "state": _state}
