"""python-microscope device classes wrapped as labctl drivers (called directly, no lab)."""

from __future__ import annotations

import sys

import pytest

from labctl.config.drivers import DriverNotFound, resolve_driver
from labctl.hardware import Camera, FilterWheel, HardwareError, LightSource, Stage, remote_methods

pytest.importorskip("microscope")
SIM = "microscope:microscope.simulators:"


@pytest.mark.parametrize("name, interface", [("SimulatedCamera", Camera), ("SimulatedFilterWheel", FilterWheel),
                                             ("SimulatedLightSource", LightSource), ("SimulatedStage", Stage)])
def test_each_microscope_interface_becomes_the_matching_labctl_interface(name, interface):
    assert issubclass(resolve_driver(SIM + name), interface)


def test_labctl_calls_reach_the_microscope_object_and_its_own_methods_stay_callable():
    stage = resolve_driver(SIM + "SimulatedStage")(limits={"x": [0, 100], "y": [0, 50]})
    assert stage.move_to("x", 10) == 10 and stage.scope.position["x"] == 10
    with pytest.raises(HardwareError):
        stage.move_to("x", 1000)            # labctl's limits check, before the microscope object moves
    stage.scope_call("move_to", {"y": 5.0})   # microscope's own signature, as Pyro clients call it
    assert stage.get_position() == {"x": 10.0, "y": 5.0}
    assert set(stage.sub_devices()) == {"x", "y"}
    methods = remote_methods(stage)
    assert {"get_setting", "describe_settings", "get_limits", "scope_call"} <= set(methods)
    assert "set_limits" not in methods      # a read-only property gets no setter
    wheel = resolve_driver(SIM + "SimulatedFilterWheel")(positions=6)
    assert wheel.set_position(4) == 4 and wheel.scope.position == 4 and wheel.get_n_positions() == 6


@pytest.mark.parametrize("member", ["_do_shutdown", "__class__", "receiveData", "no_such_method"])
def test_scope_call_reaches_public_members_only(member):
    light = resolve_driver(SIM + "SimulatedLightSource")()
    with pytest.raises(HardwareError, match="has no public member"):
        light.scope_call(member)


def test_without_python_microscope_the_error_says_how_to_install_it(monkeypatch):
    import labctl.hardware.microscope_devices as adapter

    monkeypatch.setitem(sys.modules, "microscope.abc", None)   # as if it were not installed
    adapter.wrapper_for.cache_clear()
    with pytest.raises(DriverNotFound, match=r"pip install -e '\.\[microscope\]'"):
        resolve_driver(SIM + "SimulatedCamera")
    adapter.wrapper_for.cache_clear()


def test_a_class_that_is_not_a_microscope_device_is_refused():
    with pytest.raises(DriverNotFound, match="is not a python-microscope device class"):
        resolve_driver("microscope:collections:OrderedDict")
