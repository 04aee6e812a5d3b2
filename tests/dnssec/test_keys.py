"""Zone keys: the files `geodns keys` writes, the DS it prints, and what `geodns check` says.

DNSKEY, key tag and DS are checked against dnspython's own implementation.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from geodns.dnssec import keys as zkeys

REPO = Path(__file__).resolve().parents[2]
ZONE = "gslb.example.test"


def geodns(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "geodns", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def as_dnskey(key: zkeys.Key):
    return dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, key.rdata, 0, len(key.rdata))


@pytest.mark.parametrize("algorithm", [13, 15])
def test_generated_key_round_trips_and_matches_dnspython(tmp_path: Path, algorithm: int) -> None:
    key = zkeys.generate(ZONE, algorithm)
    public, private = zkeys.write(key, tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.name == f"K{ZONE}.+{algorithm:03d}+{key.tag:05d}.key"
    back = zkeys.read(public)
    assert back == key
    dnskey = as_dnskey(key)
    assert dnskey.flags == 257 and dnskey.algorithm == algorithm
    assert dns.dnssec.key_id(dnskey) == key.tag
    ds = dns.dnssec.make_ds(dns.name.from_text(ZONE + "."), dnskey, "SHA256")
    assert zkeys.ds_text(key).endswith(ds.to_text().upper().split(" ", 3)[3].replace(" ", ""))
    assert zkeys.ds_rdata(key) == ds.to_wire()
    assert zkeys.load(ZONE, tmp_path) == (key,)


def test_cli_generate_ds_list_and_state(tmp_path: Path) -> None:
    out = geodns("keys", "generate", ZONE, "--dir", str(tmp_path / "k"))
    assert out.returncode == 0, out.stderr
    (first,) = zkeys.load(ZONE, tmp_path / "k")
    assert first.algorithm == 13 and first.state == "active"
    out = geodns("keys", "generate", ZONE, "--dir", str(tmp_path / "k"), "--algorithm", "15", "--publish-only")
    assert out.returncode == 0, out.stderr
    keys = zkeys.load(ZONE, tmp_path / "k")
    second = next(k for k in keys if k.tag != first.tag)
    assert second.algorithm == 15 and second.state == "published"

    ds = geodns("keys", "ds", ZONE, "--dir", str(tmp_path / "k"))
    assert ds.returncode == 0, ds.stderr
    lines = ds.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{ZONE}. 3600 IN DS ") for line in lines)
    assert f"DS {first.tag} 13 2 " in ds.stdout and f"DS {second.tag} 15 2 " in ds.stdout

    listing = geodns("keys", "list", "--dir", str(tmp_path / "k"))
    assert listing.returncode == 0
    assert f"{first.tag:>5}  13 active" in listing.stdout
    assert f"{second.tag:>5}  15 published" in listing.stdout

    # The rollover's last step: the old key retired, the new one active.
    assert geodns("keys", "state", ZONE, str(second.tag), "active", "--dir", str(tmp_path / "k")).returncode == 0
    assert geodns("keys", "state", ZONE, str(first.tag), "retired", "--dir", str(tmp_path / "k")).returncode == 0
    states = {k.tag: k.state for k in zkeys.load(ZONE, tmp_path / "k")}
    assert states == {first.tag: "retired", second.tag: "active"}
    ds = geodns("keys", "ds", ZONE, "--dir", str(tmp_path / "k"))
    assert str(first.tag) not in ds.stdout and f"DS {second.tag} 15 2 " in ds.stdout

    missing = geodns("keys", "state", ZONE, "1", "active", "--dir", str(tmp_path / "k"))
    assert missing.returncode == 1 and "no key with tag 1" in missing.stderr
    none = geodns("keys", "ds", "other.test", "--dir", str(tmp_path / "k"))
    assert none.returncode == 1 and "no published key" in none.stderr


def test_a_mismatched_or_foreign_key_file_is_refused(tmp_path: Path) -> None:
    key = zkeys.generate(ZONE)
    public, private = zkeys.write(key, tmp_path)
    other = zkeys.generate(ZONE)
    _, other_private = zkeys.write(other, tmp_path / "other")
    mine = private.read_text()
    private.write_text(other_private.read_text())
    with pytest.raises(zkeys.KeyFileError, match="does not match"):
        zkeys.load(ZONE, tmp_path)
    private.write_text(mine)
    public.write_text(public.read_text().replace(f"{ZONE}. IN", "evil.test. IN"))
    with pytest.raises(zkeys.KeyFileError, match="not 'gslb.example.test'"):
        zkeys.load(ZONE, tmp_path)
    public.write_text("garbage\n")
    with pytest.raises(zkeys.KeyFileError, match="not a DNSKEY"):
        zkeys.load(ZONE, tmp_path)


def test_geodns_check_verifies_the_zone_keys(tmp_path: Path) -> None:
    zone = tmp_path / "zone.yaml"
    zone.write_text(
        f"zone: {ZONE}\nsoa: {{mname: ns1, rname: hostmaster, serial: 1}}\n"
        "nameservers: [{name: ns1, glue: [192.0.2.53]}]\n"
        "records:\n  www: {A: [192.0.2.1]}\n"
        "dnssec:\n  keys: keys\n"
    )
    out = geodns("check", str(zone))
    assert out.returncode == 1
    assert f"{zone}:7: dnssec.keys: " in out.stderr and "not a directory" in out.stderr

    (tmp_path / "keys").mkdir()
    out = geodns("check", str(zone))
    assert out.returncode == 1 and "no key files" in out.stderr and "geodns keys generate" in out.stderr

    key = zkeys.generate(ZONE, state="published")
    zkeys.write(key, tmp_path / "keys")
    out = geodns("check", str(zone))
    assert out.returncode == 1 and "1 key(s), none active" in out.stderr

    zkeys.set_state(key, "active", tmp_path / "keys")
    out = geodns("check", str(zone))
    assert out.returncode == 0, out.stderr
    assert f"signed: key {key.tag} (algorithm 13)" in out.stdout

    zone.write_text(zone.read_text().replace("keys: keys", "keys: keys\n  algorithm: 13"))
    out = geodns("check", str(zone))
    assert out.returncode == 1 and "dnssec.algorithm: unknown key" in out.stderr
