"""The restart core (policy.decide) for every restart type, strategy, intensity window, back-off step
and stable_s reset; pure, with the clock passed in."""

from __future__ import annotations

import attrs
import pytest

from labctl.actors.policy import Decision, Ended, Member, decide
from labctl.config.schema import Supervision

SUP = Supervision(max_restarts=3, within_s=10.0, backoff_s=0.1, backoff_max_s=1.0, stable_s=5.0)
GROUP = [Member("stage", "running"), Member("camera", "running"), Member("light", "running")]


def crash(unit: str = "camera", ran_s: float = 0.5, normal: bool = False) -> Ended:
    return Ended(unit, normal, "exited normally" if normal else "killed by SIGKILL", ran_s)


def test_one_for_one_restarts_the_unit_alone_after_the_first_back_off_step():
    decision = decide(crash(), SUP, 0, (), GROUP, now=100.0)
    assert decision == Decision(consecutive=0, restart_times=(100.0,), restart=("camera",), delay=0.1)


@pytest.mark.parametrize("strategy,restarted", [("one_for_all", ("stage", "camera", "light")),
                                                ("rest_for_one", ("camera", "light"))])
def test_strategies_restart_their_part_of_the_group(strategy, restarted):
    decision = decide(crash(), attrs.evolve(SUP, strategy=strategy), 0, (), GROUP, now=0.0)
    assert decision.restart == restarted


def test_members_given_up_on_or_stopped_stay_so():
    group = [Member("stage", "failed"), Member("camera", "running"), Member("light", "stopped")]
    decision = decide(crash(), attrs.evolve(SUP, strategy="one_for_all"), 0, (), group, now=0.0)
    assert decision.restart == ("camera",)


def test_back_off_doubles_with_each_quick_restart_up_to_its_cap():
    delays = [decide(crash(), SUP, n, (), GROUP, now=0.0).delay for n in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_unit_that_ran_stable_s_starts_its_back_off_afresh():
    assert decide(crash(ran_s=5.0), SUP, 4, (), GROUP, now=0.0).delay == 0.1
    assert decide(crash(ran_s=5.0), SUP, 4, (), GROUP, now=0.0).consecutive == 0
    assert decide(crash(ran_s=4.9), SUP, 4, (), GROUP, now=0.0).delay == 1.0


def test_intensity_allows_exactly_max_restarts_within_the_window():
    times = (1.0, 2.0)
    third = decide(crash(), SUP, 0, times, GROUP, now=3.0)
    assert third.restart == ("camera",) and third.restart_times == (1.0, 2.0, 3.0)
    fourth = decide(crash(), SUP, 0, third.restart_times, GROUP, now=4.0)
    assert fourth.restart == () and fourth.fail == ("camera",)
    assert "gave up: more than 3 restarts within 10 s" in fourth.reason and "SIGKILL" in fourth.reason


def test_restarts_that_left_the_window_no_longer_count():
    decision = decide(crash(), SUP, 0, (1.0, 2.0, 3.0), GROUP, now=12.5)
    assert decision.restart == ("camera",) and decision.restart_times == (3.0, 12.5)


def test_a_window_edge_restart_still_counts():
    decision = decide(crash(), SUP, 0, (2.0, 3.0, 4.0), GROUP, now=12.0)  # 2.0 is exactly within_s old
    assert decision.fail == ("camera",)


def test_a_group_that_exceeds_its_intensity_fails_as_a_whole():
    decision = decide(crash(), attrs.evolve(SUP, strategy="one_for_all"), 0, (1.0, 2.0, 3.0), GROUP, now=4.0)
    assert decision.fail == ("stage", "camera", "light") and decision.restart == ()
    decision = decide(crash(), attrs.evolve(SUP, strategy="rest_for_one"), 0, (1.0, 2.0, 3.0), GROUP, now=4.0)
    assert decision.fail == ("camera", "light")


@pytest.mark.parametrize("restart,normal,settle", [
    ("transient", True, "stopped"), ("temporary", True, "stopped"), ("temporary", False, "failed")])
def test_restart_types_that_say_no(restart, normal, settle):
    decision = decide(crash(normal=normal), attrs.evolve(SUP, restart=restart), 2, (1.0,), GROUP, now=2.0)
    assert decision.settle == settle and decision.restart == () and decision.fail == ()
    assert decision.restart_times == (1.0,)  # a unit not restarted uses none of its intensity
    assert f"{restart} device: not restarted" in decision.reason


@pytest.mark.parametrize("restart,normal", [("permanent", True), ("permanent", False), ("transient", False)])
def test_restart_types_that_say_yes(restart, normal):
    decision = decide(crash(normal=normal), attrs.evolve(SUP, restart=restart), 0, (), GROUP, now=0.0)
    assert decision.restart == ("camera",) and decision.settle is None


def test_a_unit_outside_any_group_is_its_own_group():
    decision = decide(crash("valves"), attrs.evolve(SUP, strategy="one_for_all"), 0, (), [], now=0.0)
    assert decision.restart == ("valves",)
