"""Serial instruments in a running lab: the demo end to end through its emulators, faults, unplugging."""

from __future__ import annotations

import json

import pytest

from labctl.hardware.emulators import make_emulator

from ..conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_valves_and_furnace_end_to_end_through_the_cli(lab):
    lab.config = ROOT / "config" / "demo.toml"
    up = lab.labctl("up", lab.config, "--detach", "--port", lab.port)
    assert up.returncode == 0, up.stderr
    status = {d["name"]: d for d in lab.status()["devices"]}
    assert status["valves"]["driver"] == "arduino-valves" and status["furnace"]["driver"] == "eurotherm"
    assert lab.labctl("send", "valves", "OpenValve", "C").stdout.strip() == "open"
    states = json.loads(lab.labctl("send", "valves", "GetValveStates", "--json").stdout)["value"]
    assert states["C"] == "open" and states["A"] == "closed"
    assert lab.labctl("send", "valves", "CloseValve", "C").stdout.strip() == "closed"
    locked = lab.labctl("send", "valves", "LockValve", "A")
    assert locked.returncode == 0
    refused = lab.labctl("send", "valves", "OpenValve", "A")
    assert refused.returncode == 1 and "ValveLocked" in refused.stderr
    assert lab.labctl("send", "furnace", "SetSetpoint", "650").stdout.strip() == "650"
    assert float(lab.labctl("send", "furnace", "GetSetpoint").stdout) == 650
    temperature = float(lab.labctl("send", "furnace", "ReadTemperature").stdout)
    assert 15 <= temperature < 650  # the emulator's furnace heats with a time constant of 20 s
    assert 0 <= float(lab.labctl("send", "furnace", "Call", "get_output").stdout) <= 100
    too_hot = lab.labctl("send", "furnace", "SetSetpoint", "5000")
    assert too_hot.returncode == 1 and "out of range" in too_hot.stderr
    assert (lab.dir / "logs" / "demo" / "valves.log").exists()  # one log per device, under ./logs/<lab>
    lab.labctl("down", "--port", lab.port, check=True)


@pytest.fixture
def furnace_emulator(tmp_path):
    emulator = make_emulator("eurotherm", link=str(tmp_path / "furnace.tty"), tau_s=5.0).start()
    yield emulator
    emulator.stop()


def test_injected_faults_give_their_error_and_the_device_keeps_serving(lab, furnace_emulator):
    lab.write(f"""
[devices.furnace]
driver = "eurotherm"
conf = {{ port = "{furnace_emulator.port}", timeout = 0.3 }}
""")
    assert lab.up().returncode == 0, lab.labctl("status").stdout
    pid = lab.pids()["furnace"]
    expected = {"nak": "Rejected", "bad_checksum": "ChecksumError", "garbage": "GarbledReply", "no_reply": "NoReply"}
    for fault, error in expected.items():
        furnace_emulator.inject(fault)
        failed = lab.labctl("send", "furnace", "ReadTemperature")
        assert failed.returncode == 1 and f"furnace: {error}:" in failed.stderr, (fault, failed.stderr)
        assert lab.labctl("send", "furnace", "SetSetpoint", "100").stdout.strip() == "100"
    assert lab.pids()["furnace"] == pid and lab.device("furnace")["restarts"] == 0


def test_unplug_and_replug_the_device_comes_back_by_itself(lab, furnace_emulator):
    lab.write(f"""
[devices.furnace]
driver = "eurotherm"
conf = {{ port = "{furnace_emulator.port}", timeout = 0.3 }}
""")
    assert lab.up().returncode == 0
    pid = lab.pids()["furnace"]
    furnace_emulator.unplug()
    lost = lab.labctl("send", "furnace", "ReadTemperature")
    assert lost.returncode == 1 and "LinkError" in lost.stderr
    degraded = lab.wait_for(lambda s: s["devices"][0]["degraded"], what="degraded")["devices"][0]
    assert degraded["state"] == "running" and "link lost" in degraded["last_error"]
    furnace_emulator.replug()
    lab.wait_for(lambda s: not s["devices"][0]["degraded"], what="reconnected by itself")
    assert float(lab.labctl("send", "furnace", "ReadTemperature").stdout) > 0
    assert lab.pids()["furnace"] == pid  # reconnecting sufficed: no process restart
    kinds = [json.loads(line)["kind"] for line in lab.labctl("events", "--json").stdout.splitlines()]
    assert "degraded" in kinds and "recovered" in kinds
