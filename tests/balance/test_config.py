"""Config errors name the file and the field; the shipped examples validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from geodns.balance import ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict:
    return {"listen": "127.0.4.2:8080", "pools": {"web": {"backends": ["127.0.4.10:80"]}}}


def test_minimal_defaults() -> None:
    c = parse(base(), "x.yaml")
    assert c.routes[0].pool == "web" and c.retries == 2 and c.timeouts.connect == 3.0
    assert c.pools["web"].backends[0].key == "127.0.4.10:80"
    t = c.timeouts
    assert (t.request_head, t.request_body, t.response_body, c.max_clients) == (10.0, 60.0, 300.0, None)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (lambda d: d.update(listne="x"), "x.yaml: listne: unknown key"),
        (lambda d: d["pools"]["web"].update(algoritm="ip_hash"), "x.yaml: pools.web.algoritm: unknown key"),
        (lambda d: d["pools"]["web"].update(algorithm="random"), "x.yaml: pools.web.algorithm: must be one of"),
        (lambda d: d["pools"]["web"].update(backends=[{"address": "127.0.4.10:80", "weight": -1}]),
         "x.yaml: pools.web.backends[0].weight: must be an integer >= 0"),
        (lambda d: d["pools"]["web"].update(backends=["127.0.4.10"]), "pools.web.backends[0].address: must be 'host:port'"),
        (lambda d: d["pools"]["web"].update(backends=["127.0.4.10:80", "127.0.4.10:80"]), "duplicate backend"),
        (lambda d: d.update(routes=[{"path": "/", "pool": "nope"}]), "x.yaml: routes[0].pool: no pool named 'nope'"),
        (lambda d: d.update(routes=[{"path": "api", "pool": "web"}]), "routes[0].path: must start with '/'"),
        (lambda d: d["pools"]["web"].update(hash_key={"source": "header"}), "pools.web.hash_key.name: is required"),
        (lambda d: d["pools"]["web"].update(check={"type": "http", "intervl": 1}), "x.yaml: pools.web.check.intervl: unknown key"),
        (lambda d: d["pools"]["web"].update(check={"type": "dns"}), "x.yaml: pools.web.check.type: 'dns' is not one of http, https, tcp"),
        (lambda d: d["pools"]["web"].update(check={"expect": [200, 99]}), "x.yaml: pools.web.check.expect[1]: 99 is out of range 100..599"),
        (lambda d: d["pools"]["web"].update(check={"interval": 1, "timeout": 2}), "x.yaml: pools.web.check.timeout: must not exceed the interval"),
        (lambda d: d["pools"]["web"].update(check={"type": "tcp", "kind": "http"}), "x.yaml: pools.web.check.kind: give type (or its old spelling kind), not both"),
        (lambda d: d.update(timeouts={"connect": 0}), "x.yaml: timeouts.connect: must be > 0"),
        (lambda d: d.update(timeouts={"request_head": -1}), "x.yaml: timeouts.request_head: must be > 0"),
        (lambda d: d.update(timeouts={"request_body": "1s"}), "x.yaml: timeouts.request_body: must be a number"),
        (lambda d: d.update(timeouts={"response_body": 0}), "x.yaml: timeouts.response_body: must be > 0"),
        (lambda d: d.update(timeouts={"header": 5}), "x.yaml: timeouts.header: unknown key"),
        (lambda d: d.update(max_clients=0), "x.yaml: max_clients: must be an integer >= 1"),
        (lambda d: d.update(saturation=1.5), "saturation: is a utilisation"),
        (lambda d: d.pop("listen"), "x.yaml: listen: is required"),
        (lambda d: d.update(admin={"listen": "127.0.4.2:9", "token_env": "GEODNS_NO_SUCH_VAR"}), "admin.token_env"),
    ],
)
def test_errors_name_file_and_field(patch, message: str) -> None:
    data = base()
    patch(data)
    with pytest.raises(ConfigError) as info:
        parse(data, "x.yaml")
    assert message in str(info.value)


def test_load_reports_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: YAML syntax: "):
        load(bad)
    bad.write_text("listen: 127.0.4.2:8080\npools:\n  web: {backends: [127.0.4.10:80]}\nlisten: 127.0.4.2:8081\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: duplicate key 'listen' \(first at line 1\)"):
        load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["us-east.yaml", "eu-west.yaml"])
def test_deploy_examples_validate(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODNS_BALANCE_TOKEN", "example")
    config = load(ROOT / "deploy" / "balance" / name)
    assert config.region and config.admin.listen is not None
    for a in (*config.listen, config.admin.listen, *(b.address for p in config.pools.values() for b in p.backends)):
        assert a.host.startswith("127.")


def test_errors_in_a_file_carry_its_line(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(
        "listen: 127.0.4.2:8080\n"
        "pools:\n"
        "  web:\n"
        "    backends:\n"
        "      - 127.0.4.10:80\n"
        "      - {address: 127.0.4.11:80, weight: -1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}:6: pools.web.backends[1].weight: must be an integer >= 0, got -1"
    path.write_text("listen: 127.0.4.2:8080\npools:\n  web:\n    backends: [127.0.4.10:80]\n    check:\n      type: http\n      pth: /health\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}:7: pools.web.check.pth: unknown key (expected one of: ")


def test_a_pool_check_is_spelled_as_a_zone_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "b.yaml"
    body = "listen: 127.0.4.2:8080\npools:\n  web:\n    backends: [127.0.4.10:80]\n    check:\n"
    path.write_text(body + "      type: https\n      expect: [200, 204]\n      path: /health\n")
    with caplog.at_level("WARNING", logger="geodns.balance.config"):
        new = load(path).pools["web"].check
    assert (new.kind, new.expect_status, new.path, new.jitter) == ("https", (200, 204), "/health", 0.2)
    assert not caplog.records
    # The first spelling still loads, to the same check, with one line saying where and what to write.
    path.write_text(body + "      kind: https\n      expect_status: [200, 204]\n      path: /health\n")
    with caplog.at_level("WARNING", logger="geodns.balance.config"):
        assert load(path).pools["web"].check == new
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:6: pools.web.check: old spelling, still accepted: write type: for kind: and expect: for expect_status:, as zone files do"
    ]
