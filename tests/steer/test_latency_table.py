"""The latency table file: the shipped one loads; errors carry file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from geodns.steer import LatencyTableError, load_latency_table

from .helpers import ALL, LONDON, SAN_FRANCISCO, ip, net

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "latency.yaml"


def test_shipped_table_covers_the_example_regions():
    table = load_latency_table(SHIPPED, set(ALL))
    assert table.networks[0][0] in (net("81.2.69.0/24"), net("8.8.8.0/24"))
    row, matched = table.lookup(ip("81.2.69.160"), LONDON)
    assert (matched, min(row, key=row.get)) == ("network 81.2.69.0/24", "eu-west")
    row, matched = table.lookup(ip("203.0.113.1"), SAN_FRANCISCO)
    assert (matched, min(row, key=row.get)) == ("country US", "us-east")
    assert table.lookup(None, None) is None


def test_most_specific_network_first(tmp_path):
    path = tmp_path / "lat.yaml"
    path.write_text("networks:\n  10.0.0.0/8: {a: 5}\n  10.1.0.0/16: {a: 1}\n")
    table = load_latency_table(path)
    assert [str(n) for n, _ in table.networks] == ["10.1.0.0/16", "10.0.0.0/8"]
    assert table.lookup(ip("10.1.2.3"), None)[1] == "network 10.1.0.0/16"


def test_errors_have_file_and_line(tmp_path):
    path = tmp_path / "lat.yaml"
    path.write_text(
        "networks:\n"
        "  10.0.0.1/8: {eu-west: 5}\n"
        "countries:\n"
        "  GB: {eu-west: fast}\n"
        "  DE: {mars: 3}\n"
        "bogus: 1\n"
    )
    with pytest.raises(LatencyTableError) as info:
        load_latency_table(path, set(ALL))
    assert sorted(str(info.value).splitlines()) == sorted([
        f"{path}:6: bogus: unknown key (expected networks, countries, continents)",
        f"{path}:4: countries.GB.eu-west: 'fast' is not a latency in ms",
        f"{path}:5: countries.DE.mars: not a region of the zone",
        f"{path}:2: networks.10.0.0.1/8: not a CIDR network",
    ])
