"""Zone files on disk: directories, duplicate origins, and the `geodns check` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from geodns.config import ConfigInvalid, load_zones, zone_files

from .helpers import EXAMPLE, HEAD, REPO, line_of


def test_directory_loads_yaml_and_yml_and_ignores_others(tmp_path):
    (tmp_path / "a.yaml").write_text(HEAD)
    (tmp_path / "b.yml").write_text(HEAD.replace("zone: example.test", "zone: other.test"))
    (tmp_path / "notes.txt").write_text("not a zone")
    assert [p.name for p in zone_files(tmp_path)] == ["a.yaml", "b.yml"]
    assert sorted(z.origin for z in load_zones(tmp_path)) == ["example.test", "other.test"]


def test_two_files_with_the_same_origin(tmp_path):
    (tmp_path / "a.yaml").write_text(HEAD)
    (tmp_path / "b.yaml").write_text(HEAD.replace("zone: example.test", "zone: Example.Test."))
    with pytest.raises(ConfigInvalid) as info:
        load_zones(tmp_path)
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'b.yaml'}:1: zone: 'example.test' is also defined in {tmp_path / 'a.yaml'}"
    ]


def test_errors_of_every_file_are_collected(tmp_path):
    (tmp_path / "a.yaml").write_text(HEAD.replace("serial: 1", "serial: x"))
    (tmp_path / "b.yaml").write_text(HEAD.replace("zone: example.test", "zone: other.test") + "bogus: 1\n")
    with pytest.raises(ConfigInvalid) as info:
        load_zones(tmp_path)
    files = [e.file for e in info.value.errors]
    assert files == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]


def test_empty_directory_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigInvalid, match="no zone files"):
        load_zones(tmp_path)
    with pytest.raises(ConfigInvalid, match="cannot read"):
        load_zones(tmp_path / "missing.yaml")


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geodns", "check", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


def test_check_command_accepts_the_example():
    result = check(EXAMPLE.relative_to(REPO))
    assert result.returncode == 0, result.stderr
    assert "gslb.example.test" in result.stdout


def test_check_command_reports_file_line_field(tmp_path):
    text = HEAD.replace("endpoints: [192.0.2.30, 2001:db8::30]", "endpoints: [10.0.0.1, 10.0.0.300]")
    text = text.replace("serial: 1", "serial: one")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = check(path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"{path}:{line_of(text, 'serial')}: soa.serial: 'one' is not an integer" in output
    assert f"{path}:{line_of(text, '10.0.0.300')}: regions.eu-west.endpoints[1]: '10.0.0.300' is not an IP address" in output
