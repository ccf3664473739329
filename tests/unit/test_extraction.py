"""Extraction-line helpers without a lab: valve names, descriptions, ambiguity, unknown names, waits,
and the literal names `labctl run` finds in a script before running it."""

from __future__ import annotations

import ast
import logging

import pytest

from labctl.actors.errors import DeviceUnavailable, UnknownDevice
from labctl.actors.extraction import (AmbiguousValve, ExtractionLine, UnknownValve, Valve, WaitTimeout, find_valve,
                                      valve_table)
from labctl.actors.messages import CloseValve, DeviceDescription, GetValveState, OpenValve
from labctl.bin.run import NameUse, names_used

CONTROLLERS = {
    "valves": {"A": "bone to turbo", "B": "turbo to ion pump", "inlet": ""},
    "box.left": {"A": "getter inlet", "X": "Inlet"},
}


def valve_controller(name: str, valves: dict[str, str]) -> DeviceDescription:
    return DeviceDescription(name, "SimValves", ("ValveController", "Device"), (), valves=valves)


class FakeLab:
    """Just what ExtractionLine asks of a lab: device names, descriptions, and send."""

    def __init__(self, descriptions: list[DeviceDescription], composite=(), unavailable=()) -> None:
        self.descriptions = {d.name: d for d in descriptions}
        self.composite, self.unavailable = set(composite), set(unavailable)
        self.sent: list[tuple[str, object]] = []
        self.states = {(d.name, v): "closed" for d in descriptions for v in d.valves}

    def device_names(self) -> list[str]:
        return [*self.descriptions, *self.composite, *self.unavailable]

    def describe(self, name: str) -> DeviceDescription:
        if name in self.composite:
            raise UnknownDevice(f"{name} is a composite device", name)
        if name in self.unavailable:
            raise DeviceUnavailable(f"{name} has failed", name, state="failed")
        return self.descriptions[name]

    def send(self, device: str, message) -> object:
        self.sent.append((device, message))
        if isinstance(message, (OpenValve, CloseValve)):
            self.states[device, message.valve] = "open" if isinstance(message, OpenValve) else "closed"
        return self.states[device, message.valve]


def test_a_unique_bare_name_finds_its_valve():
    assert find_valve("B", CONTROLLERS) == Valve("valves", "B", "turbo to ion pump")
    assert find_valve("X", CONTROLLERS) == Valve("box.left", "X", "Inlet")


def test_a_description_matches_in_any_case_when_no_valve_has_that_name():
    assert find_valve("  BONE to Turbo", CONTROLLERS) == Valve("valves", "A", "bone to turbo")
    assert find_valve("getter inlet", CONTROLLERS).device == "box.left"
    # a valve named "inlet" wins over the valve described as "Inlet"
    assert find_valve("inlet", CONTROLLERS) == Valve("valves", "inlet", "")


def test_a_name_on_two_controllers_is_ambiguous_and_both_are_listed():
    with pytest.raises(AmbiguousValve) as info:
        find_valve("A", CONTROLLERS)
    text = str(info.value)
    assert "valves:A (bone to turbo)" in text and "box.left:A (getter inlet)" in text
    with pytest.raises(AmbiguousValve):
        find_valve("same", {"v1": {"P": "same"}, "v2": {"Q": "Same"}})


def test_device_colon_valve_picks_one_controller_even_with_dotted_device_names():
    assert find_valve("box.left:A", CONTROLLERS) == Valve("box.left", "A", "getter inlet")
    assert find_valve("valves:A", CONTROLLERS) == Valve("valves", "A", "bone to turbo")
    assert find_valve("valves:Turbo to ion pump", CONTROLLERS).name == "B"
    with pytest.raises(UnknownValve) as info:
        find_valve("box:A", CONTROLLERS)
    assert "no valve controller 'box'" in str(info.value) and "box.left" in str(info.value)
    with pytest.raises(UnknownValve) as info:
        find_valve("box.left:B", CONTROLLERS)  # B exists, but not on box.left
    assert "box.left:A" in str(info.value) and "valves:B" not in str(info.value)


def test_an_unknown_valve_lists_every_valve_and_suggests_the_closest():
    with pytest.raises(UnknownValve) as info:
        find_valve("bone to turbine", CONTROLLERS)
    text = str(info.value)
    assert "no valve 'bone to turbine'" in text and "did you mean 'bone to turbo'" in text
    assert all(f"{d}:{v}" in text for d, valves in CONTROLLERS.items() for v in valves)
    with pytest.raises(UnknownValve, match="did you mean 'B'"):
        find_valve("b", CONTROLLERS)
    with pytest.raises(UnknownValve, match=r"could not ask pumps: failed"):
        find_valve("Z", CONTROLLERS, ["pumps: failed"])
    with pytest.raises(TypeError):
        find_valve(3, CONTROLLERS)


def test_valve_table_keeps_only_valve_controllers():
    furnace = DeviceDescription("furnace", "SimFurnace", ("TemperatureController", "Device"), ())
    assert valve_table([valve_controller("valves", {"A": ""}), furnace]) == {"valves": {"A": ""}}


def test_the_line_sends_each_helper_to_the_valve_it_names_and_logs_it(caplog):
    lab = FakeLab([valve_controller("valves", CONTROLLERS["valves"]), valve_controller("box.left", {"Y": ""})],
                  composite=["stack"], unavailable=["pumps"])
    line = ExtractionLine(lab)
    caplog.set_level(logging.INFO, logger="labctl.script")
    assert line.open("bone to turbo") == "open"
    assert line.is_open("A") and not line.is_closed("valves:A")
    assert line.close("Y") == "closed"
    assert lab.sent == [("valves", OpenValve("A")), ("valves", GetValveState("A")), ("valves", GetValveState("A")),
                        ("box.left", CloseValve("Y"))]
    assert [r.getMessage() for r in caplog.records] == ["open valves:A (bone to turbo): open",
                                                       "close box.left:Y: closed"]
    # a composite parent has no description and is skipped; a failed device is named when nothing fits
    with pytest.raises(UnknownValve, match="could not ask pumps: failed"):
        line.open("Z")
    assert len(lab.sent) == 4
    assert set(line.helpers()) == {"open", "close", "is_open", "is_closed", "lock", "unlock", "sleep", "info",
                                   "wait_until"}


def test_wait_until_returns_the_first_true_value_or_times_out():
    line = ExtractionLine(FakeLab([]))
    answers = iter([0, None, "ready"])
    assert line.wait_until(lambda: next(answers), timeout=10, poll=0) == "ready"
    with pytest.raises(WaitTimeout, match=r"condition at test_extraction.py:\d+ still false after 0.05 s"):
        line.wait_until(lambda: False, timeout=0.05, poll=0.01)
    with pytest.raises(ValueError, match="seconds >= 0"):
        line.sleep(-1)
    with pytest.raises(TypeError, match="needs a function"):
        line.wait_until(True, timeout=1)


def test_names_used_finds_every_literal_device_and_valve_name():
    source = '''
open("A")
close(name="inlet")
is_open(valve_name)
lab.valves.open("Q")
lab.furnace.set_setpoint(3)
lab.send("valves", OpenValve("R"))
lab.device("camera")
lab.status()
'''
    uses = names_used(ast.parse(source), source)
    assert NameUse(2, 'open("A")', "valve", (), "A") in uses
    assert NameUse(3, 'close(name="inlet")', "valve", (), "inlet") in uses
    assert NameUse(5, 'lab.valves.open("Q")', "attribute", ("valves",), "Q") in uses
    assert NameUse(5, "lab.valves.open", "attribute", ("valves", "open")) in uses
    assert NameUse(6, "lab.furnace.set_setpoint", "attribute", ("furnace", "set_setpoint")) in uses
    assert NameUse(7, 'lab.send("valves", OpenValve("R"))', "device", ("valves",), "R") in uses
    assert NameUse(8, 'lab.device("camera")', "device", ("camera",)) in uses
    assert not [u for u in uses if u.line == 4]  # a name computed at run time is checked when it is used
    # the client's own API is reported as an attribute chain and told apart when checked
    assert NameUse(9, "lab.status", "attribute", ("status",)) in uses
