"""labctl up/send/status/down with real Thespian admins, one process per device, real signals."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from labctl.actors import processes
from ..conftest import wait_for_text
from labctl.actors.errors import BadArgument, DriverError, UnknownDevice, UnknownMessage
from labctl.actors.messages import CloseValve, GetValveState, OpenValve, SetSetpoint

pytestmark = pytest.mark.integration

SMALL_LAB = """
[devices.valves]
driver = "sim-valves"
conf = { valves = ["A", "B", "C"] }

[devices.furnace]
driver = "sim-furnace"
conf = { tau_s = 5.0 }

[devices.camera]
driver = "sim-camera"
conf = { shape = [64, 64] }
"""


def test_cli_cycle_up_send_status_down(lab):
    lab.write(SMALL_LAB)
    up = lab.up()
    assert up.returncode == 0, up.stderr
    assert "running" in up.stdout and "valves" in up.stdout

    sent = lab.labctl("send", "valves", "OpenValve", "A", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["value"] == "open"
    states = json.loads(lab.labctl("send", "valves", "GetValveStates", "--json").stdout)["value"]
    assert states == {"A": "open", "B": "closed", "C": "closed"}
    assert lab.labctl("send", "furnace", "SetSetpoint", "500").stdout.strip() == "500"
    image = json.loads(lab.labctl("send", "camera", "Acquire", "--json").stdout)["value"]["image"]
    assert image["shape"] == [64, 64] and image["dtype"] == "uint16" and image["frame"] == 1

    status = lab.status()
    assert status["lab"] == "test" and status["port"] == lab.port
    assert [d["name"] for d in status["devices"]] == ["valves", "furnace", "camera"]
    for device in status["devices"]:
        assert set(device) >= {"name", "driver", "host", "pid", "state", "restarts", "uptime_s", "last_error"}
        assert device["state"] == "running" and device["restarts"] == 0 and device["last_error"] is None
        assert device["host"] == "local" and device["uptime_s"] >= 0
    table = lab.labctl("status").stdout
    assert "sim-furnace" in table and "RESTARTS" in table

    down = lab.labctl("down", "--port", lab.port)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert processes.port_is_free(lab.port)
    assert processes.wait_gone(lab.leftovers(), 5.0) == set()
    gone = lab.labctl("status")
    assert gone.returncode == 1 and f"no lab is running on port {lab.port}" in gone.stderr


def test_client_cycle(lab, client_for):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    client = client_for(lab)
    assert client.send("valves", OpenValve("B")) == "open"
    assert client.send("valves", GetValveState("B")) == "open"
    assert client.send("valves", CloseValve("B")) == "closed"
    assert client.send("furnace", SetSetpoint(300)) == 300
    assert client.valves.open("C") == "open"  # a handle sends the typed message
    assert {d.name: d.state for d in client.status().devices} == {n: "running" for n in ("valves", "furnace", "camera")}
    with pytest.raises(UnknownDevice) as info:
        client.send("valvez", OpenValve("A"))
    assert "valves" in str(info.value) and "furnace" in str(info.value)  # the known names are listed
    with pytest.raises(DriverError) as info:
        client.send("valves", OpenValve("Z"))
    assert info.value.error_type == "UnknownName" and "'Z'" in info.value.text
    with pytest.raises(UnknownMessage):
        client.send("furnace", OpenValve("A"))
    with pytest.raises(BadArgument):
        client.furnace.set_setpoint("hot")  # refused before anything is sent
    client.close()
    assert lab.labctl("down").returncode == 0
    assert processes.port_is_free(lab.port)


def test_one_process_per_device(lab):
    lab.write(SMALL_LAB)
    up = lab.popen("up", lab.config, "--detach")
    assert up.wait(timeout=60) == 0
    record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
    pids = lab.pids()
    assert len(set(pids.values())) == 3, pids
    assert record["supervisor_pid"] not in pids.values() and up.pid not in pids.values()  # nor the CLI's
    assert record["keeper_pid"] not in pids.values() and os.getpid() not in pids.values()
    for pid in pids.values():
        assert processes.is_alive(pid)
        # each device process is a child of the supervisor, in the lab's own session
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == record["supervisor_pid"]
        assert processes.session_of(pid) == record["session"]


def test_sigkill_of_a_device_restarts_it(lab, client_for):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    before = lab.pids()
    os.kill(before["valves"], signal.SIGKILL)
    status = lab.wait_for(lambda s: any(d["name"] == "valves" and d["state"] == "running" and d["restarts"] == 1
                                        for d in s["devices"]), what="valves restarted")
    after = {d["name"]: d for d in status["devices"]}
    assert after["valves"]["pid"] != before["valves"]
    assert after["valves"]["last_error"] == "killed by SIGKILL"
    assert after["furnace"]["pid"] == before["furnace"] and after["camera"]["pid"] == before["camera"]
    assert client_for(lab).send("valves", OpenValve("A")) == "open"
    assert not processes.is_alive(before["valves"])


def test_constructor_error_fails_only_that_device(lab):
    lab.write(SMALL_LAB + """
[devices.broken]
driver = "labtest_drivers:Broken"
conf = { why = "the box is unplugged" }
max_restarts = 1
backoff_s = 0.05
""")
    up = lab.up()
    assert up.returncode == 1  # not every device runs
    devices = {d["name"]: d for d in lab.status()["devices"]}
    assert devices["broken"]["state"] == "failed"
    assert "RuntimeError: the box is unplugged" in devices["broken"]["last_error"]
    assert all(devices[n]["state"] == "running" for n in ("valves", "furnace", "camera"))
    assert lab.labctl("send", "valves", "OpenValve", "A").returncode == 0
    refused = lab.labctl("send", "broken", "Call", "anything")
    assert refused.returncode == 1 and "the box is unplugged" in refused.stderr


def test_failing_method_replies_failure_once_and_keeps_serving(lab):
    counter = lab.dir / "count.txt"
    lab.write(f"""
[devices.counter]
driver = "labtest_drivers:Counter"
conf = {{ path = "{counter}" }}
""")
    assert lab.up().returncode == 0
    pid = lab.pids()["counter"]
    failed = lab.labctl("send", "counter", "Call", "bump")
    assert failed.returncode == 1 and "HardwareError: bump always fails" in failed.stderr
    # Thespian would have delivered the message a second time had the exception escaped
    assert counter.read_text() == "x"
    assert lab.labctl("send", "counter", "Call", "ping").stdout.strip() == "pong"
    assert lab.device("counter")["pid"] == pid and lab.device("counter")["restarts"] == 0


def test_every_socket_of_the_lab_listens_on_loopback_only(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    lab_pids = set(lab.leftovers())
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                listening.append((fields[1], f"socket:[{fields[9]}]"))
    owned = []
    for pid in lab_pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            owned.extend(address for address, inode in listening if inode == target)
    assert owned, "the lab listens nowhere?"
    for address in owned:
        ip_hex = address.split(":")[0]
        assert ip_hex == "0100007F", f"a lab socket listens on {address} (not 127.0.0.1)"


def test_send_errors_are_clear_and_harmless(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    pids = lab.pids()
    unknown_device = lab.labctl("send", "valvez", "OpenValve", "A")
    assert unknown_device.returncode == 1 and "no device 'valvez'" in unknown_device.stderr
    assert "valves" in unknown_device.stderr
    unknown_message = lab.labctl("send", "valves", "OpenValf", "A")
    assert unknown_message.returncode == 1 and "unknown message 'OpenValf'" in unknown_message.stderr
    assert "OpenValve" in unknown_message.stderr and "CloseValve" in unknown_message.stderr
    wrong_device = lab.labctl("send", "valves", "SetSetpoint", "3")
    assert wrong_device.returncode == 1 and "does not accept SetSetpoint" in wrong_device.stderr
    bad_number = lab.labctl("send", "furnace", "SetSetpoint", "hot")
    assert bad_number.returncode == 1 and "must be a number, got 'hot'" in bad_number.stderr
    too_many = lab.labctl("send", "valves", "OpenValve", "A", "B")
    assert too_many.returncode == 1 and "takes 1 argument" in too_many.stderr
    out_of_range = lab.labctl("send", "furnace", "SetSetpoint", "99999")
    assert out_of_range.returncode == 1 and "out of range" in out_of_range.stderr
    assert lab.pids() == pids and all(d["state"] == "running" for d in lab.status()["devices"])


def slow_start_lab(lab) -> Path:
    """A lab of valves and a device whose constructor hangs (so `up` waits); its journal."""
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.valves]
driver = "sim-valves"
[devices.slow]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}", hang = true }}
init_timeout_s = 60.0
""")
    return journal


def test_foreground_up_stops_in_order_on_sigint(lab):
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.valves]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}" }}
[devices.furnace]
driver = "sim-furnace"
""")
    proc, said = lab.up_in_foreground()
    try:
        try:
            lab.wait_for(lambda s: len(s["devices"]) == 2 and all(d["state"] == "running" for d in s["devices"]),
                         what="lab running")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nup said: {said.read_text()}") from None
        device_pid = lab.pids()["valves"]
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    err = said.read_text()
    assert proc.returncode == 0, err
    assert "stopped in" in err
    assert f"shutdown {device_pid}" in journal.read_text()  # the driver's shutdown ran
    assert lab.leftovers() == [] and processes.port_is_free(lab.port)
    assert elapsed < 10, f"stopping took {elapsed:.1f} s"  # generous: catches hangs, not slowness


def test_foreground_up_whose_admin_hangs_while_it_starts_recovers_and_keeps_running(lab):
    journal = slow_start_lab(lab)
    proc, said = lab.up_in_foreground()
    try:
        wait_for_text(journal, "open")  # the slow constructor runs: up is waiting for it
        record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
        os.kill(record["admin_pid"], signal.SIGSTOP)
        # The keeper kills the hung admin and brings the lab back; up keeps running all along.
        try:
            status = lab.wait_for(lambda s: any(d["name"] == "valves" and d["state"] == "running"
                                                for d in s["devices"]), timeout=60, what="the lab recovered")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nup said: {said.read_text()}\nlab.log: "
                                 f"{(lab.log_dir / 'lab.log').read_text()}") from None
        assert proc.poll() is None, said.read_text()
        new_record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
        assert new_record["admin_pid"] != record["admin_pid"], status
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, said.read_text()
    assert "its keeper is taking over" in said.read_text()
    assert processes.wait_gone(lab.leftovers(), 5.0) == set() and processes.port_is_free(lab.port)


def test_up_refuses_a_port_where_a_lab_runs(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    again = lab.up()
    assert again.returncode == 1
    assert f"already running on port {lab.port}" in again.stderr
    assert all(d["state"] == "running" for d in lab.status()["devices"])


def test_up_never_kills_a_stranger_holding_its_port(lab):
    """A process that is no recorded part of a dead lab is never killed, even one whose command line
    says labctl: `up` says who holds the port and exits 1, at once."""
    lab.write(SMALL_LAB)
    squatter = lab.popen_python(f"import socket,time; s=socket.socket(); "
                                f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                f"s.bind(('127.0.0.1', {lab.port})); s.listen(); time.sleep(600)", "labctl-leftover")
    try:
        deadline = time.monotonic() + 10
        while processes.port_is_free(lab.port) and time.monotonic() < deadline:
            time.sleep(0.01)
        began = time.monotonic()
        up = lab.up()
        assert up.returncode == 1, up.stderr
        assert f"port {lab.port} is in use by another program (pids: {squatter.pid})" in up.stderr
        assert time.monotonic() - began < 10  # Thespian alone would wait ~15 s, then fail
        assert squatter.poll() is None  # still alive
    finally:
        squatter.kill()
        squatter.wait()


def test_dead_lab_after_keeper_and_admin_are_killed_leaves_nothing(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
    device_pids = list(lab.pids().values())
    os.kill(record["keeper_pid"], signal.SIGKILL)
    os.kill(record["admin_pid"], signal.SIGKILL)
    # every actor process dies with its parent, the logger too, so nothing keeps the port
    assert processes.wait_gone(device_pids + [record["supervisor_pid"]], 5.0) == set()
    assert processes.wait_port_free(lab.port, timeout=5.0)
    assert lab.up().returncode == 0  # and the port takes a new lab at once


def test_logs_one_file_per_device_each_line_naming_its_device(lab):
    lab.write(SMALL_LAB + f"""
[devices.counter]
driver = "labtest_drivers:Counter"
conf = {{ path = "{lab.dir / 'count.txt'}" }}
""")
    assert lab.up().returncode == 0
    lab.labctl("send", "valves", "OpenValve", "A", check=True)
    lab.labctl("send", "counter", "Call", "bump")
    lab.labctl("send", "furnace", "SetSetpoint", "99999")  # a failure, logged by the device's process
    assert lab.labctl("down").returncode == 0
    logs = lab.log_dir
    assert {p.name for p in logs.glob("*.log")} >= {"lab.log", "valves.log", "furnace.log", "camera.log"}
    valves = (logs / "valves.log").read_text().splitlines()
    assert valves and all("[valves]" in line for line in valves if line[:4].isdigit())
    assert any("valve=A state=open" in line for line in valves)
    counter_lines = (logs / "counter.log").read_text()
    assert "bumping count.txt, from the driver's own module logger" in counter_lines  # not lost to keeper.out
    furnace = (logs / "furnace.log").read_text()
    assert "out of range" in furnace and "[valves]" not in furnace
    assert "[furnace]" in (logs / "lab.log").read_text()


def recorder_lab(lab, **conf) -> Path:
    journal = lab.dir / "journal.txt"
    extra = "".join(f", {k} = {json.dumps(v)}" for k, v in conf.items())
    lab.write(SMALL_LAB + f"""
[devices.recorder]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}"{extra} }}
""")
    return journal


def test_down_after_the_keeper_died_stops_the_lab_in_order(lab):
    journal = recorder_lab(lab)
    assert lab.up().returncode == 0
    record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
    device = lab.pids()["recorder"]
    os.kill(record["keeper_pid"], signal.SIGKILL)
    assert processes.wait_gone([record["keeper_pid"]], 5.0) == set()
    down = lab.labctl("down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
    assert f"shutdown {device}" in journal.read_text()  # the driver's shutdown still ran
    assert processes.wait_gone(lab.leftovers(), 5.0) == set() and processes.port_is_free(lab.port)


def test_down_never_signals_a_process_that_reused_a_recorded_pid(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    path = lab.dir / "run" / f"lab-{lab.port}.json"
    record = json.loads(path.read_text())
    os.kill(record["keeper_pid"], signal.SIGKILL)
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    stranger = lab.popen_python("import time; time.sleep(120)")
    try:
        record["supervisor_pid"] = stranger.pid  # as if the dead supervisor's pid had been reused
        path.write_text(json.dumps(record))
        assert lab.labctl("down").returncode == 0
        assert stranger.poll() is None  # not the recorded process (its start time differs): untouched
    finally:
        stranger.kill()
        stranger.wait()


def test_down_with_a_hung_supervisor_still_shuts_every_driver_down(lab):
    journal = recorder_lab(lab)
    assert lab.up().returncode == 0
    record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
    device = lab.pids()["recorder"]
    os.kill(record["supervisor_pid"], signal.SIGSTOP)
    began = time.monotonic()
    down = lab.labctl("down")
    assert down.returncode == 0, down.stderr
    assert time.monotonic() - began < 10  # generous; Thespian alone took ~12 s here
    assert f"shutdown {device}" in journal.read_text()  # SIGTERM let the device host stop in order
    assert processes.wait_gone(lab.leftovers(), 5.0) == set() and processes.port_is_free(lab.port)


def test_a_refused_up_leaves_the_running_lab_and_its_record_alone(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    pids = lab.pids()
    record = lab.dir / "run" / f"lab-{lab.port}.json"
    assert lab.up().returncode == 1
    assert record.exists()  # the refused keeper did not delete the live lab's record
    lab.env["LABCTL_RUN_DIR"] = str(lab.dir / "elsewhere")  # a keeper that cannot see the record
    again = lab.up()
    lab.env["LABCTL_RUN_DIR"] = str(lab.dir / "run")
    # without the lab's record and key it cannot tell a lab from another program: it only refuses
    assert again.returncode == 1 and "in use by another program" in again.stderr
    assert lab.pids() == pids and all(processes.is_alive(pid) for pid in pids.values())


def test_a_port_that_is_not_a_lab_fails_fast_and_clearly(lab):
    import socket

    lab.write(SMALL_LAB)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", lab.port))
    listener.listen()
    try:
        began = time.monotonic()
        status = lab.labctl("status")
        assert status.returncode == 1 and f"not authorised for lab on port {lab.port}: no key" in status.stderr
        (lab.dir / "run").mkdir(mode=0o700, exist_ok=True)
        lab.key_file.write_text("ab" * 32)
        lab.key_file.chmod(0o600)
        status = lab.labctl("status")  # with a key, it talks to what listens there: nothing answers
        assert time.monotonic() - began < 8  # Thespian alone retries ~11 s, then a traceback
        assert status.returncode == 1 and "no lab's admin answers" in status.stderr
        assert "Traceback" not in status.stderr
        sent = lab.labctl("send", "valves", "OpenValve", "A", "--json")
        assert sent.returncode == 1 and json.loads(sent.stdout)["ok"] is False
        up = lab.up()
        assert up.returncode == 1 and "in use by another program" in up.stderr
    finally:
        listener.close()


def test_send_json_reports_every_failure_as_json(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    for args, kind in [(["valves", "OpenValf", "A"], "UnknownMessage"), (["furnace", "SetSetpoint", "hot"], "BadArgument"),
                       (["valvez", "OpenValve", "A"], "UnknownDevice"), (["valves", "OpenValve", "Z"], "UnknownName")]:
        result = lab.labctl("send", *args, "--json")
        reply = json.loads(result.stdout)
        assert result.returncode == 1 and reply["ok"] is False and reply["error"]["type"] == kind, result.stdout
        assert reply["error"]["message"]


def test_down_with_a_hung_admin_is_bounded_and_clean(lab):
    lab.write(SMALL_LAB)
    assert lab.up().returncode == 0
    record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
    os.kill(record["admin_pid"], signal.SIGSTOP)
    began = time.monotonic()
    assert lab.labctl("down").returncode == 0
    assert time.monotonic() - began < 8  # generous; Thespian's own shutdown waited 10 s here
    assert processes.wait_gone(lab.leftovers(), 5.0) == set() and processes.port_is_free(lab.port)


def test_up_detach_says_at_once_when_the_lab_is_stopped_while_it_starts(lab):
    """`down` from another terminal while `up --detach` waits for a slow device: up exits 1 saying so."""
    journal = slow_start_lab(lab)
    up = lab.popen("up", lab.config, "--detach")
    try:
        wait_for_text(journal, "open")  # the slow constructor is running: up is waiting for it
        began = time.monotonic()
        assert lab.labctl("down").returncode == 0
        out, err = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 1, err
    assert "stopped while starting" in err and "Traceback" not in err
    assert time.monotonic() - began < 8  # not the client's 10 s timeout
