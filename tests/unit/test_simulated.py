"""Every simulator called directly: what it does, and the clear errors for bad names and values."""

from __future__ import annotations

import numpy as np
import pytest

from labctl.hardware import OutOfRange, UnknownName, ValveLocked, declared_time_limits, probe, remote_methods
from labctl.hardware.simulated import (SimCamera, SimFilterWheel, SimFloatingCamera, SimFurnace, SimLaserCombiner,
                                       SimLightSource, SimStage, SimValves, stage_aware_camera)


def test_valves_open_close_states_and_locks():
    valves = SimValves({"A": 0, "B": {"channel": 1, "description": "turbo"}})
    changes = []
    valves.subscribe(lambda event, detail: changes.append((event, detail)))
    assert valves.get_states() == {"A": "closed", "B": "closed"}
    assert valves.open("A") == "open" and valves.get_state("A") == "open"
    assert valves.close("A") == "closed"
    assert valves.describe_valves() == {"A": "", "B": "turbo"}
    valves.lock("B")
    with pytest.raises(ValveLocked, match="valve B is locked"):
        valves.open("B")
    assert valves.get_state("B") == "closed"  # a locked valve does not move
    valves.unlock("B")
    assert valves.open("B") == "open"
    with pytest.raises(UnknownName, match="unknown valve 'Z'; known: A, B"):
        valves.open("Z")
    assert ("valve", {"valve": "A", "state": "open"}) in changes


def test_furnace_approaches_setpoint_within_limits(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("labctl.hardware.simulated.time.monotonic", lambda: now[0])
    furnace = SimFurnace(ambient=20, tau_s=10, max_setpoint=800)
    assert furnace.read_temperature() == pytest.approx(20)
    furnace.set_setpoint(520)
    now[0] += 10  # one time constant: 63 % of the way
    assert furnace.read_temperature() == pytest.approx(20 + 500 * (1 - np.exp(-1)), rel=1e-6)
    assert 0 < furnace.get_output() <= 100
    now[0] += 1000
    assert furnace.read_temperature() == pytest.approx(520, abs=1e-6)
    with pytest.raises(OutOfRange, match=r"setpoint 900 is out of range \[0, 800\]"):
        furnace.set_setpoint(900)
    with pytest.raises(OutOfRange, match="must be a number"):
        furnace.set_setpoint("hot")
    assert furnace.get_setpoint() == 520


def test_camera_images_carry_a_frame_counter():
    camera = SimCamera(shape=(32, 48), dtype="uint16", exposure=0.001)
    first, second = camera.acquire(), camera.acquire()
    assert first.shape == (32, 48) and first.dtype == np.uint16
    assert first[0, 0] == 1 and second[0, 0] == 2
    assert camera.get_sensor_shape() == [32, 48] and camera.get_dtype() == "uint16"
    camera.set_exposure(0.002)
    assert camera.get_exposure() == 0.002
    with pytest.raises(OutOfRange, match="exposure"):
        camera.set_exposure(0)


def test_filter_wheel_rejects_out_of_range():
    wheel = SimFilterWheel(positions=6)
    assert wheel.set_position(5) == 5 and wheel.get_position() == 5
    with pytest.raises(OutOfRange, match=r"position 6 is out of range 0..5"):
        wheel.set_position(6)
    with pytest.raises(OutOfRange, match="must be an integer"):
        wheel.set_position(1.5)


def test_stage_moves_within_limits():
    stage = SimStage(axes={"x": [0, 100], "y": [-5, 5]})
    assert stage.get_position() == {"x": 50.0, "y": 0.0}
    assert stage.move_to("x", 10) == 10
    assert stage.move_by("x", 5) == 15 and stage.get_position()["x"] == 15
    with pytest.raises(OutOfRange, match=r"axis y position 6 is out of range \[-5, 5\]"):
        stage.move_to("y", 6)
    with pytest.raises(OutOfRange):
        stage.move_by("x", 100)
    assert stage.get_position()["x"] == 15  # a refused move does not move
    with pytest.raises(UnknownName, match="unknown axis 'q'"):
        stage.move_to("q", 1)


def test_light_source_power():
    light = SimLightSource(power=0.2)
    assert light.get_is_on() is False
    assert light.turn_on() is True and light.get_is_on() is True
    assert light.set_power(1.0) == 1.0
    with pytest.raises(OutOfRange, match=r"power 1.5 is out of range \[0, 1\]"):
        light.set_power(1.5)
    assert light.turn_off() is False


def test_laser_combiner_exposes_its_lasers():
    combiner = SimLaserCombiner({"l488": 488, "l561": 561})
    lasers = combiner.sub_devices()
    assert sorted(lasers) == ["l488", "l561"]
    lasers["l488"].turn_on()
    assert lasers["l488"].get_is_on() and not lasers["l561"].get_is_on()
    assert lasers["l561"].get_wavelength() == 561


def test_floating_camera_probe_finds_units_in_any_order(tmp_path):
    present = tmp_path / "present.txt"
    present.write_text("B2\nA1\n")
    found, errors = probe(SimFloatingCamera, {"present": ["A1", "B2"], "present_file": str(present)})
    assert found == {"B2": 0, "A1": 1} and errors == {}
    unit = SimFloatingCamera.open_candidate(1, present_file=str(present))
    assert unit.get_id() == "A1"


def test_stage_aware_camera_sees_what_lies_under_the_stage():
    parts = stage_aware_camera(camera={"shape": [16, 16], "sample_shape": [64, 64]})
    stage, camera = parts["stage"], parts["camera"]
    stage.move_to("x", 0)
    stage.move_to("y", 0)
    corner = camera.acquire()
    stage.move_to("x", 10000)
    stage.move_to("y", 10000)
    far = camera.acquire()
    assert corner.shape == (16, 16) and not np.array_equal(corner, far)
    assert camera.view_origin() == [48, 48]


def test_remote_methods_leave_out_lifecycle_and_private_ones():
    methods = remote_methods(SimValves())
    assert {"open", "close", "get_state", "lock", "status"} <= set(methods)
    assert not {"shutdown", "subscribe", "reconnect", "_do_set"} & set(methods)
    assert declared_time_limits(SimValves()) == {}
