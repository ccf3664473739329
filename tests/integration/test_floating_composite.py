"""Floating devices found by probing, composite devices in one process, controllers with sub-devices."""

from __future__ import annotations

import json
import os
import signal

import pytest

from labctl.actors import processes

pytestmark = pytest.mark.integration


def cameras(lab, present, *uids, backoff=0.5) -> str:
    """Floating camera devices, one per uid, all reading the connected units from `present`."""
    return f"[supervision]\nprobe_backoff_max_s = {backoff}\n" + "".join(f"""
[devices.cam_{uid.lower()}]
driver = "sim-floating-camera"
uid = "{uid}"
conf = {{ present_file = "{present}", shape = [16, 16] }}
""" for uid in uids)


def serial(lab, device: str) -> str:
    return json.loads(lab.labctl("send", device, "GetStatus", "--json", check=True).stdout)["value"]["serial"]


def test_floating_cameras_get_their_own_unit_whatever_the_order_even_after_a_crash(lab):
    present = lab.dir / "present.txt"
    present.write_text("B\nA\n")
    lab.write(cameras(lab, present, "A", "B"))
    assert lab.up().returncode == 0
    assert serial(lab, "cam_a") == "A" and serial(lab, "cam_b") == "B"
    present.write_text("A\nB\n")  # the bus order changes (replugged elsewhere)...
    pid = lab.pids()["cam_a"]
    os.kill(pid, signal.SIGKILL)  # ...and cam_a crashes: its restart must probe again
    lab.wait_for(lambda s: all(d["state"] == "running" for d in s["devices"]) and
                 next(d for d in s["devices"] if d["name"] == "cam_a")["pid"] != pid, what="cam_a back")
    assert serial(lab, "cam_a") == "A" and serial(lab, "cam_b") == "B"


def test_a_missing_unit_fails_alone_and_comes_up_when_plugged_in(lab):
    present = lab.dir / "present.txt"
    present.write_text("A\nB\n")
    lab.write(cameras(lab, present, "A", "C") + '\n[devices.valves]\ndriver = "sim-valves"\n')
    assert lab.up().returncode == 1  # not every device runs
    missing = lab.device("cam_c")
    assert missing["state"] == "failed"
    assert "unit C is not present; units found: A, B" in missing["last_error"]
    assert lab.device("cam_a")["state"] == "running" and lab.device("valves")["state"] == "running"
    present.write_text("A\nB\nC\n")  # plug the camera in
    lab.wait_for(lambda s: next(d for d in s["devices"] if d["name"] == "cam_c")["state"] == "running",
                 what="cam_c up by itself")
    assert serial(lab, "cam_c") == "C"


def test_composite_members_share_a_pid_and_restart_together(lab, client_for):
    lab.write("""
[devices.scope]
factory = "labctl.hardware.simulated:stage_aware_camera"
conf = { camera = { shape = [32, 32], sample_shape = [256, 256] } }
[devices.wheel]
driver = "sim-filterwheel"
[devices.light]
driver = "sim-light"
[devices.valves]
driver = "sim-valves"
[groups.illumination]
devices = ["wheel", "light"]
""")
    assert lab.up().returncode == 0
    pids = lab.pids()
    assert pids["scope.stage"] == pids["scope.camera"] == pids["scope"]
    assert pids["wheel"] == pids["light"] != pids["scope"]
    first = json.loads(lab.labctl("send", "scope.camera", "Acquire", "--json").stdout)["value"]["image"]
    lab.labctl("send", "scope.stage", "MoveTo", "x", "9000", check=True)
    moved = json.loads(lab.labctl("send", "scope.camera", "Acquire", "--json").stdout)["value"]["image"]
    assert first["mean"] != moved["mean"]  # the camera sees what lies under its stage
    client = client_for(lab)
    assert client.scope.stage.move_to("y", 100.0) == 100.0  # a factory's parts through handles
    assert {"camera", "stage"} <= set(dir(client.scope))
    whole = lab.labctl("send", "scope", "GetStatus")
    assert whole.returncode == 1 and "composite device; address its parts: scope.stage, scope.camera" in whole.stderr
    os.kill(pids["scope.camera"], signal.SIGKILL)
    status = lab.wait_for(lambda s: all(d["state"] == "running" for d in s["devices"]) and
                          lab_pids(s)["scope.stage"] != pids["scope.stage"], what="scope restarted")
    after = lab_pids(status)
    assert after["scope.stage"] == after["scope.camera"] and not processes.is_alive(pids["scope"])
    assert after["wheel"] == pids["wheel"] and after["valves"] == pids["valves"]
    os.kill(pids["light"], signal.SIGKILL)  # a shared group restarts as one process
    status = lab.wait_for(lambda s: lab_pids(s)["wheel"] != pids["wheel"] and
                          all(d["state"] == "running" for d in s["devices"]), what="group restarted")
    assert lab_pids(status)["wheel"] == lab_pids(status)["light"]


def lab_pids(status: dict) -> dict:
    return {d["name"]: d["pid"] for d in status["devices"]}


def test_controller_sub_devices_are_addressable(lab, client_for):
    lab.write("""
[devices.lasers]
driver = "sim-laser-combiner"
conf = { lasers = { l488 = 488, l561 = 561 } }
[devices.broken]
driver = "labtest_drivers:Broken"
max_restarts = 0
""")
    assert lab.up().returncode == 1
    names = [d["name"] for d in lab.status()["devices"]]
    assert names == ["lasers", "lasers.l488", "lasers.l561", "broken"]
    assert lab.labctl("send", "lasers.l488", "TurnOn").stdout.strip() == "True"
    assert lab.labctl("send", "lasers.l488", "SetPower", "0.25").stdout.strip() == "0.25"
    client = client_for(lab)
    assert client.lasers.l488.get_is_on() is True
    assert client.lasers.l561.get_is_on() is False
    assert client.device("lasers.l561").get_wavelength() == 561
    assert not hasattr(client, "broken")  # a failed device: AttributeError (completion relies on it)
    with pytest.raises(AttributeError, match="broken has failed"):
        client.broken
    unknown = lab.labctl("send", "lasers.l999", "TurnOn")
    assert unknown.returncode == 1 and "lasers.l488" in unknown.stderr


def test_constructor_arguments_pass_through_untouched_and_conf_is_per_device(lab):
    lab.write("""
[devices.echo]
driver = "labtest_drivers:ConfEcho"
conf = { port = "/dev/ttyUSB7", host = "valvepi", index = 3, uid = "mine", nested = { a = [1, 2] } }
[devices.floater]
driver = "labtest_drivers:FloatingEcho"
uid = "unit1"
conf = { index = 0, uid = "not-the-device-uid", port = "COM9" }
[devices.left]
driver = "sim-valves"
conf = { valves = { A = 0, B = 1 } }
[devices.right]
driver = "sim-valves"
conf = { valves = { A = 0, B = 1 } }
""")
    assert lab.up().returncode == 0

    def call(device, method):
        return json.loads(lab.labctl("send", device, "Call", method, "--json", check=True).stdout)["value"]

    expected = {"port": "/dev/ttyUSB7", "host": "valvepi", "index": 3, "uid": "mine", "nested": {"a": [1, 2]}}
    assert call("echo", "conf") == expected
    assert call("floater", "conf") == {"index": 0, "uid": "not-the-device-uid", "port": "COM9"}
    assert call("floater", "candidate") == 1  # opened by probing for uid "unit1", whatever conf says
    lab.labctl("restart", "echo", check=True)
    assert call("echo", "conf") == expected  # the driver spoiled its kwargs; the restart got fresh ones
    lab.labctl("send", "left", "OpenValve", "A", check=True)
    assert call("left", "get_states") == {"A": "open", "B": "closed"}
    assert call("right", "get_states") == {"A": "closed", "B": "closed"}
