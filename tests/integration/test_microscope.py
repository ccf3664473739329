"""python-microscope interoperability: microscope's own device classes as labctl drivers, and labctl
serving them to microscope's own Pyro clients (Client, DataClient, a plain Pyro4.Proxy)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from labctl.actors import processes

from ..conftest import free_port

pytestmark = pytest.mark.integration

Pyro4 = pytest.importorskip("Pyro4")
clients = pytest.importorskip("microscope.clients")


def scope_lab(lab) -> dict[str, int]:
    """The example lab's devices on free ports; {device: Pyro port}."""
    ports = {name: free_port() for name in ("camera", "wheel", "light", "stage", "controller")}
    lab.write(f"""
[devices.camera]
driver = "microscope:microscope.simulators:SimulatedCamera"
conf = {{ sensor_shape = [96, 128] }}
pyro = {{ port = {ports["camera"]} }}
[devices.wheel]
driver = "microscope:microscope.simulators:SimulatedFilterWheel"
conf = {{ positions = 6 }}
pyro = {{ port = {ports["wheel"]} }}
[devices.light]
driver = "microscope:microscope.simulators:SimulatedLightSource"
pyro = {{ port = {ports["light"]} }}
[devices.stage]
driver = "microscope:microscope.simulators:SimulatedStage"
conf = {{ limits = {{ x = [0, 25000], y = [0, 12000] }} }}
pyro = {{ port = {ports["stage"]} }}
[devices.controller]
driver = "microscope:microscope.simulators:SimulatedController"
pyro = {{ port = {ports["controller"]} }}
[devices.controller.conf.devices]
laser = {{ driver = "microscope.simulators:SimulatedLightSource" }}
filter = {{ driver = "microscope.simulators:SimulatedFilterWheel", conf = {{ positions = 4 }} }}
""")
    return ports


def uri(name: str, port: int) -> str:
    return f"PYRO:{name}@127.0.0.1:{port}"


def test_microscope_devices_answer_labctls_messages(lab):
    scope_lab(lab)
    up = lab.up()
    assert up.returncode == 0, up.stdout + up.stderr
    names = [d["name"] for d in lab.status()["devices"]]
    assert {"camera", "wheel", "light", "stage", "stage.x", "stage.y", "controller", "controller.laser",
            "controller.filter"} <= set(names)
    assert lab.labctl("send", "wheel", "SetPosition", "3", check=True).stdout.strip() == "3"
    assert lab.labctl("send", "wheel", "GetPosition", check=True).stdout.strip() == "3"
    assert lab.labctl("send", "light", "SetPower", "0.25", check=True).stdout.strip() == "0.25"
    assert lab.labctl("send", "light", "TurnOn", check=True).stdout.strip() == "True"
    assert lab.labctl("send", "controller.laser", "SetPower", "0.5", check=True).stdout.strip() == "0.5"
    assert lab.labctl("send", "stage", "MoveTo", "x", "1200", check=True).stdout.strip() == "1200"
    image = lab.labctl("send", "camera", "Acquire", check=True).stdout
    assert image.startswith("image 128x96 ")   # microscope: sensor_shape is (width, height)
    # microscope's own methods, settings and properties, by Call
    assert lab.labctl("send", "camera", "Call", "get_is_enabled", check=True).stdout.strip() == "True"
    assert lab.labctl("send", "light", "Call", "get_power", check=True).stdout.strip() == "0.25"
    settings = lab.labctl("send", "camera", "Call", "get_all_settings", "--json", check=True).stdout
    assert '"ok": true' in settings


def test_microscopes_own_clients_work_unchanged_against_labctl(lab):
    ports = scope_lab(lab)
    assert lab.up().returncode == 0
    pids = lab.pids()

    camera = clients.Client(uri("camera", ports["camera"]))
    camera.enable()
    assert camera.get_is_enabled() is True
    camera.set_exposure_time(0.05)
    assert camera.get_exposure_time() == pytest.approx(0.05)
    assert "gain" in camera.get_all_settings()
    camera.set_setting("gain", 3)
    assert camera.get_setting("gain") == 3

    wheel = Pyro4.Proxy(uri("wheel", ports["wheel"]))
    with pytest.raises(RuntimeError) as refused:   # a device's error, as a builtin any client can unpickle
        wheel.set_position(99)
    assert type(refused.value).__module__ == "builtins" and "99" in str(refused.value)
    wheel.position = 4                      # a remote property, both ways
    assert wheel.position == 4 and wheel.n_positions == 6
    assert lab.labctl("send", "wheel", "GetPosition", check=True).stdout.strip() == "4"   # the same device

    light = Pyro4.Proxy(uri("light", ports["light"]))
    light.enable()
    light.power = 0.75
    assert light.power == pytest.approx(0.75) and light.get_is_on() is True

    stage = Pyro4.Proxy(uri("stage", ports["stage"]))
    stage.enable()
    stage.move_to({"x": 500.0, "y": 250.0})
    assert stage.position == {"x": 500.0, "y": 250.0}
    axes = stage.axes                       # autoproxied axes
    assert isinstance(axes["x"], Pyro4.Proxy)
    axes["x"].move_by(25.0)
    assert axes["x"].position == pytest.approx(525.0)

    controller = Pyro4.Proxy(uri("controller", ports["controller"]))
    devices = controller.devices            # autoproxied devices
    assert set(devices) == {"laser", "filter"} and isinstance(devices["laser"], Pyro4.Proxy)
    devices["laser"].enable()
    devices["laser"].power = 0.5
    assert devices["laser"].power == pytest.approx(0.5)
    assert lab.labctl("send", "controller.laser", "GetStatus", "--json", check=True).stdout.count("0.5") >= 1

    # calls pass through labctl: counted like any other request, and nothing restarted
    status = {d["name"]: d for d in lab.status()["devices"]}
    assert lab.pids() == pids
    # lane and Pyro counts reach the supervisor about once a second
    lab.wait_for(lambda s: any(d["name"] == "wheel" and d["requests"] >= 3 for d in s["devices"]),
                 what="the wheel's Pyro calls counted")
    assert status["camera"]["state"] == "running"


def test_frames_pushed_to_a_data_client_and_pulled_by_two_clients_in_turn(lab):
    ports = scope_lab(lab)
    assert lab.up().returncode == 0
    data = clients.DataClient(uri("camera", ports["camera"]))
    data.enable()
    frame, timestamp = data.trigger_and_wait()
    assert frame.shape == (128, 96) and frame.dtype == np.uint8 and timestamp > 0

    # pull: one client, then another after the first has gone (microscope's own server hangs here)
    for _ in range(2):
        proxy = Pyro4.Proxy(uri("camera", ports["camera"]))
        proxy.enable()
        pulled, _stamp = proxy.grab_next_data()
        assert pulled.shape == (128, 96)
        proxy._pyroRelease()


def test_a_killed_device_process_is_back_at_once_and_a_pyro_client_reconnects(lab):
    ports = scope_lab(lab)
    assert lab.up().returncode == 0
    wheel = Pyro4.Proxy(uri("wheel", ports["wheel"]))
    wheel.position = 2
    pid = lab.pids()["wheel"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    status = lab.wait_for(lambda s: any(d["name"] == "wheel" and d["state"] == "running" and d["pid"] != pid
                                        for d in s["devices"]), what="wheel back")
    assert time.monotonic() - killed < 10   # well under a second here; generous against a hang
    wheel._pyroReconnect()
    assert wheel.position == 0              # a new process: a new device, at its start position
    wheel.position = 5
    assert wheel.position == 5
    assert processes.is_alive(next(d["pid"] for d in status["devices"] if d["name"] == "wheel"))


def test_floating_microscope_units_are_resolved_by_uid_and_a_missing_one_fails_alone(lab):
    journal = lab.dir / "units.txt"
    lab.write(f"""
[devices.second]
driver = "microscope:scope_drivers:ScopeUnit"
uid = "u-two"
conf = {{ units = 2, journal = "{journal}" }}
[devices.missing]
driver = "microscope:scope_drivers:ScopeUnit"
uid = "u-nine"
conf = {{ units = 2 }}
[devices.light]
driver = "microscope:microscope.simulators:SimulatedLightSource"
""")
    assert lab.up().returncode == 1   # one unit is not there
    status = {d["name"]: d for d in lab.status()["devices"]}
    assert status["second"]["state"] == "running" and status["light"]["state"] == "running"
    assert status["missing"]["state"] == "failed" and "u-nine" in status["missing"]["last_error"]
    said = lab.labctl("send", "second", "Call", "whoami", check=True).stdout.strip()
    assert said == "unit u-two at index 1"


def test_a_microscope_device_whose_initialize_raises_fails_with_its_error_and_the_others_run(lab):
    lab.write("""
[devices.broken]
driver = "microscope:scope_drivers:BrokenInit"
max_restarts = 0
[devices.light]
driver = "microscope:microscope.simulators:SimulatedLightSource"
""")
    assert lab.up().returncode == 1
    status = {d["name"]: d for d in lab.status()["devices"]}
    assert status["broken"]["state"] == "failed"
    assert "InitialiseError: no answer from the controller on COM3" in status["broken"]["last_error"]
    assert status["light"]["state"] == "running"


def test_a_pyro_facade_off_loopback_needs_a_key_or_an_explicit_insecure(lab, tmp_path):
    lab.write('[devices.light]\ndriver = "microscope:microscope.simulators:SimulatedLightSource"\n'
              'pyro = { port = 8123, host = "10.1.2.3" }\n')
    check = lab.labctl("check", lab.config)
    assert check.returncode == 1 and "takes a Pyro HMAC key: set hmac_key_file" in check.stderr, check.stderr


def test_a_keyed_facade_refuses_a_client_without_the_key_and_serves_labctls_own_drivers(lab):
    key_file = lab.dir / "pyro.key"
    key_file.write_text("a shared secret\n")
    port = free_port()
    lab.write(f"""
[devices.light]
driver = "sim-light"
pyro = {{ port = {port}, hmac_key_file = "{key_file}" }}
""")
    assert lab.up().returncode == 0
    stranger = Pyro4.Proxy(uri("light", port))
    with pytest.raises(Pyro4.errors.CommunicationError):
        stranger.turn_on()
    stranger._pyroRelease()
    light = Pyro4.Proxy(uri("light", port))
    light._pyroHmacKey = b"a shared secret"
    assert light.turn_on() is True and light.set_power(0.4) == pytest.approx(0.4)   # labctl's own API
    assert lab.labctl("send", "light", "Call", "get_power", check=True).stdout.strip() == "0.4"


def test_a_device_server_config_imported_serves_each_device_at_its_old_uri(lab):
    camera_port, wheel_port = free_port(), free_port()
    server_config = lab.dir / "devices.py"
    server_config.write_text(f"""
from microscope.device_server import device
from microscope.simulators import SimulatedCamera, SimulatedFilterWheel

DEVICES = [
    device(SimulatedCamera, "127.0.0.1", {camera_port}, conf={{"sensor_shape": (64, 48)}}),
    device(SimulatedFilterWheel, "127.0.0.1", {wheel_port}, conf={{"positions": 6}}),
]
""")
    imported = lab.labctl("import-microscope", server_config, "-o", lab.dir / "imported.toml")
    assert imported.returncode == 0, imported.stderr
    text = (lab.dir / "imported.toml").read_text()
    lab.write(text.split("[lab]", 1)[1].split("\n", 2)[2])   # its devices, on this test's port and log folder
    assert lab.labctl("check", lab.config).returncode == 0
    assert lab.up().returncode == 0
    wheel = Pyro4.Proxy(f"PYRO:SimulatedFilterWheel@127.0.0.1:{wheel_port}")   # the URI the device server used
    wheel.position = 5
    assert wheel.position == 5
    camera = clients.Client(f"PYRO:SimulatedCamera@127.0.0.1:{camera_port}")
    camera.enable()
    assert camera.grab_next_data()[0].shape == (48, 64)


def test_import_reports_what_a_lab_file_cannot_hold(lab):
    server_config = lab.dir / "devices.py"
    server_config.write_text("""
from microscope.device_server import device
from microscope.simulators import SimulatedController, SimulatedLightSource

DEVICES = [device(SimulatedController, "127.0.0.1", 8005, conf={"devices": {"laser": SimulatedLightSource()}})]
""")
    imported = lab.labctl("import-microscope", server_config)
    assert imported.returncode == 1
    assert "left out: SimulatedController: its conf holds SimulatedLightSource" in imported.stderr
    assert "conf.devices = {NAME = {driver, conf}}" in imported.stderr


def test_a_factory_of_microscope_devices_shares_one_process_and_serves_each_part_by_its_key(lab):
    port = free_port()
    lab.write(f"""
[devices.bench]
factory = "scope_drivers:light_and_wheel"
conf = {{ positions = 5 }}
pyro = {{ port = {port} }}
""")
    assert lab.up().returncode == 0
    devices = {d["name"]: d for d in lab.status()["devices"]}
    assert devices["bench.laser"]["pid"] == devices["bench.wheel"]["pid"]   # one process
    assert lab.labctl("send", "bench.wheel", "SetPosition", "4", check=True).stdout.strip() == "4"
    wheel = Pyro4.Proxy(uri("wheel", port))                                  # the part's own key, as the server does
    assert wheel.position == 4 and wheel.n_positions == 5
    laser = Pyro4.Proxy(uri("laser", port))
    laser.enable()
    assert laser.get_is_on() is True
    assert lab.labctl("send", "bench.laser", "Call", "get_is_on", check=True).stdout.strip() == "True"


def test_stopping_with_many_pyro_clients_connected_still_shuts_the_driver_down(lab):
    journal, port = lab.dir / "journal.txt", free_port()
    lab.write(f"""
[devices.valves]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}" }}
pyro = {{ port = {port} }}
""")
    assert lab.up().returncode == 0
    pid = lab.pids()["valves"]
    proxies = [Pyro4.Proxy(uri("valves", port)) for _ in range(16)]   # as Cockpit keeps many open
    for proxy in proxies:
        assert proxy.get_state("A") == "closed"
    assert lab.labctl("down").returncode == 0
    assert f"shutdown {pid}" in journal.read_text()
    for proxy in proxies:
        proxy._pyroRelease()
