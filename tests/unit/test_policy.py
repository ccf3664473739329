"""OTP's restart rules as pure functions."""

import pytest

from labctl.actors.policy import backoff_delay, restart_set, should_restart, within_intensity


def test_restart_types():
    assert should_restart("permanent", normal_exit=True) and should_restart("permanent", normal_exit=False)
    assert should_restart("transient", normal_exit=False) and not should_restart("transient", normal_exit=True)
    assert not should_restart("temporary", normal_exit=False)
    with pytest.raises(ValueError):
        should_restart("sometimes", True)


def test_strategies():
    members = ["stage", "camera", "light"]
    assert restart_set("camera", "one_for_one", members) == ["camera"]
    assert restart_set("camera", "one_for_all", members) == members
    assert restart_set("stage", "rest_for_one", members) == members
    assert restart_set("camera", "rest_for_one", members) == ["camera", "light"]
    assert restart_set("light", "rest_for_one", members) == ["light"]


def test_intensity_allows_max_restarts_within_the_window():
    ok, times = within_intensity((), 0.0, max_restarts=2, within_s=10)
    assert ok and times == (0.0,)
    ok, times = within_intensity(times, 1.0, 2, 10)
    assert ok and times == (0.0, 1.0)
    ok, times = within_intensity(times, 2.0, 2, 10)
    assert not ok and times == (0.0, 1.0)     # a third restart within 10 s: give up
    ok, times = within_intensity(times, 11.5, 2, 10)
    assert ok and times == (11.5,)            # the first two have left the window


def test_backoff_doubles_up_to_a_cap():
    assert [backoff_delay(n, 0.1, 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
