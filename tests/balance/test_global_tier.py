"""The global tier's view of a region: /v1/load as health check and as `capacity` input.

Uses the health package's real probe and the steering chain's real
`capacity` step against two running balancers (us-east saturated, eu-west not).
"""

from __future__ import annotations

import asyncio

from geodns.config.model import Check
from geodns.health.probes import probe
from geodns.steer.capacity import capacity
from geodns.steer.context import Client, Context

from .conftest import admin_url, url


async def test_region_check_and_capacity_steering(backends, balancer, client) -> None:
    backs = await backends(2, first=60)
    east = await balancer({"region": "us-east", "saturation": 0.8,
                           "pools": {"web": {"backends": [backs[0].address], "max_conns": 4}}})
    west = await balancer({"region": "eu-west", "saturation": 0.8,
                           "pools": {"web": {"backends": [backs[1].address], "max_conns": 4}}})

    def region_check(b) -> Check:
        assert b.admin_address is not None
        return Check(kind="http", port=b.admin_address.port, path="/v1/load", timeout=2.0)

    # Both regions healthy: the balancer's URL passes as the region's check.
    for b in (east, west):
        assert (await probe(region_check(b), b.admin_address.host)).ok

    # Load us-east to 4 of 4 in flight (utilisation 1.0 > 0.8).
    held = [asyncio.create_task(client.get(url(east, "/slow?s=1.5"))) for _ in range(4)]
    await asyncio.sleep(0.5)
    utilisation = {}
    for name, b in (("us-east", east), ("eu-west", west)):
        async with client.get(admin_url(b, "/v1/load")) as r:
            load = await r.json()
        assert load["region"] == name
        utilisation[name] = load["utilisation"]
        assert load["saturated"] is (name == "us-east")
    ctx = Context(client=Client(None, None, None), regions={}, region_up={}, verdicts={},
                  family=4, utilisation=utilisation)
    kept = capacity(("us-east", "eu-west"), ctx, 0.8)
    assert kept.candidates == ("eu-west",), kept.note
    # Saturated, but still healthy: the region check itself passes.
    assert (await probe(region_check(east), east.admin_address.host)).ok
    for r in await asyncio.gather(*held):
        assert r.status == 200

    # eu-west with its only backend drained: /v1/load answers 503, the check fails.
    async with client.post(admin_url(west, f"/v1/backends/web/{backs[1].address}/drain"),
                           headers={"Authorization": "Bearer s3cret"}) as r:
        assert r.status == 200
    result = await probe(region_check(west), west.admin_address.host)
    assert not result.ok and "503" in result.detail
