"""A new snapshot keeps the answer cache only when no answer could differ."""

from geodns.control.controller import Controller
from geodns.steer import Verdict


def started() -> Controller:
    controller = Controller("zones", "data/geoip-bundle.mmdb")
    controller.start()
    return controller


def test_moving_verdict_bounds_keeps_the_cache():
    c = started()
    c.set_health_verdicts({"us-east": Verdict(True, until=10.0)})
    before = c.snapshot
    c.set_health_verdicts({"us-east": Verdict(True, until=20.0, cause="probe ok")})
    assert c.snapshot.generation == before.generation + 1
    assert c.snapshot.cache is before.cache


def test_a_state_change_drops_the_cache():
    c = started()
    c.set_health_verdicts({"us-east": Verdict(True, until=10.0)})
    before = c.snapshot
    c.set_health_verdicts({"us-east": Verdict(False, until=10.0)})
    assert c.snapshot.cache is not before.cache
    before = c.snapshot
    c.set_health_verdicts({"us-east": Verdict(False, forced=True)})  # a drain: forced flips
    assert c.snapshot.cache is not before.cache


def test_utilisation_and_reload_drop_the_cache():
    c = started()
    before = c.snapshot
    c.set_utilisation({"us-east": 0.9})
    assert c.snapshot.cache is not before.cache
    before = c.snapshot
    c.reload()  # same files, but a reload also reopens the GeoIP file: a new reader, a new cache
    assert c.snapshot.cache is not before.cache
