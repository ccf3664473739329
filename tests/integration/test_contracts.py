"""What the README promises and no other test held the lab to: exactly one reply per request, requests
to a device that is not running answered at once, in-flight requests of a dead process answered (never
re-sent), a group failed by intensity, SIGTERM to a foreground `up`, port resolution, `restart` and
`--no-recover` exit statuses, and the example labs started as real labs."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid

import attrs
import pytest

from labctl.actors import processes
from labctl.actors.errors import DeviceUnavailable
from labctl.actors.messages import Call, Failure, GetValveStates, OpenValve, Reply

from ..conftest import ROOT, free_port, wait_for_text

pytestmark = pytest.mark.integration


def device(status: dict, name: str) -> dict:
    return next(d for d in status["devices"] if d["name"] == name)


def events(lab) -> list[dict]:
    return [json.loads(line) for line in lab.labctl("events", "--json", check=True).stdout.splitlines()]


# -- one reply per request ---------------------------------------------------------------------

def test_every_request_gets_exactly_one_reply(lab, client_for):
    """Read straight off a Thespian context, below the client's request-id filter (which would hide
    a duplicate): after each reply, the next message to arrive is the next request's reply. Each
    round bounds the one before it, so a second copy of any reply shows up as a stray message."""
    lab.write("""
[devices.valves]
driver = "sim-valves"
""")
    assert lab.up().returncode == 0
    client = client_for(lab)
    context = client._context()
    supervisor = client._supervisor(context, 10.0)
    requests = [GetValveStates(), OpenValve("A"), OpenValve("Z"), Call("get_states"), GetValveStates(),
                OpenValve("Z")]  # replies and failures (an unknown valve), from the device process
    stray, answers = [], []
    for request in requests:
        request = attrs.evolve(request, device="valves", request_id=uuid.uuid4().hex)
        reply = context.ask(supervisor, request, 10)
        while reply is not None and getattr(reply, "request_id", None) != request.request_id:
            stray.append(reply)
            reply = context.listen(10)
        assert reply is not None, f"no reply to {request}"
        answers.append(reply)
    assert not stray, stray
    assert [type(a) for a in answers] == [Reply, Reply, Failure, Reply, Reply, Failure], answers
    assert answers[4].value["A"] == "open"


# -- requests to a device that is not running -------------------------------------------------

def test_requests_to_a_failed_restarting_or_stopped_device_are_answered_at_once_with_its_state(lab, client_for):
    lab.write("""
[devices.valves]
driver = "sim-valves"
backoff_s = 60
backoff_max_s = 60
[devices.unit]
driver = "labtest_drivers:Exiter"
restart = "transient"
[devices.broken]
driver = "labtest_drivers:Broken"
max_restarts = 0
""")
    assert lab.up().returncode == 1  # broken failed at once
    client = client_for(lab, timeout=10)

    def refused(name: str, request) -> DeviceUnavailable:
        began = time.monotonic()
        with pytest.raises(DeviceUnavailable) as info:
            client.send(name, request)
        assert time.monotonic() - began < 2.0, "answered at once, not left to the client's 10 s timeout"
        return info.value

    failed = refused("broken", Call("ping"))
    assert failed.state == "failed" and "broken has failed: RuntimeError: no hardware here" in failed.text
    assert "was not sent" in failed.text

    os.kill(lab.pids()["valves"], signal.SIGKILL)  # its restart waits 60 s
    lab.wait_for(lambda s: device(s, "valves")["state"] == "restarting", what="valves restarting")
    restarting = refused("valves", OpenValve("A"))
    assert restarting.state == "restarting" and "valves is restarting; OpenValve was not sent" in restarting.text

    with pytest.raises(DeviceUnavailable):
        client.send("unit", Call("exit", (0,)))  # a normal end of a transient device: stopped
    lab.wait_for(lambda s: device(s, "unit")["state"] == "stopped", what="unit stopped")
    stopped = refused("unit", Call("ping"))
    assert stopped.state == "stopped" and "unit is stopped; Call was not sent" in stopped.text

    assert client.stop() == "stopped"  # the whole lab stopped (the admin still answers)
    for name in ("valves", "unit"):
        assert refused(name, Call("ping")).state == "stopped"


# -- in-flight requests of a process that dies ------------------------------------------------

@pytest.mark.parametrize("lane", ["off", "auto"])   # through the supervisor, and on the device's lane
def test_a_request_in_a_killed_process_fails_at_once_and_is_never_re_sent(lab, client_for, lane):
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.valves]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}", move_time_s = 3.0 }}
backoff_s = 0.01
""")
    assert lab.up().returncode == 0
    client = client_for(lab, lane=lane)
    pid = lab.pids()["valves"]
    outcome: dict = {}

    def actuate() -> None:
        try:
            outcome["value"] = client.send("valves", OpenValve("A"), timeout=10)
        except Exception as exc:  # judged below
            outcome["error"] = exc
        outcome["answered"] = time.monotonic()

    worker = threading.Thread(target=actuate)
    worker.start()
    wait_for_text(journal, "set A 1")  # the valve is moving (3 s)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=30)
    error = outcome.get("error")
    assert isinstance(error, DeviceUnavailable), outcome  # a failure: not a timeout, not a value
    assert outcome["answered"] - killed < 2.5, "answered when the process ended, well before the 10 s timeout"
    assert "valves ended (killed by SIGKILL) while handling OpenValve; the request was not re-sent" in error.text
    assert error.state in ("restarting", "failed", "stopped")
    lab.wait_for(lambda s: device(s, "valves")["state"] == "running" and device(s, "valves")["pid"] != pid,
                 what="valves back")
    # A device runs requests in order: a re-sent OpenValve would run (and journal) before this is answered.
    assert client.send("valves", GetValveStates(), timeout=10)["A"] == "closed"
    assert [line for line in journal.read_text().splitlines() if line.startswith("set ")] == [f"set A 1 {pid}"]


# -- a group failed by its intensity ----------------------------------------------------------

def test_a_group_that_exceeds_its_intensity_fails_as_a_whole(lab):
    lab.write("""
[devices.valves]
driver = "sim-valves"
[devices.broken]
driver = "labtest_drivers:Broken"
[devices.outside]
driver = "sim-light"
[groups.line]
devices = ["valves", "broken"]
process = "separate"
strategy = "one_for_all"
max_restarts = 2
within_s = 60
backoff_s = 0.01
""")
    assert lab.up().returncode == 1
    status = lab.status()
    valves, broken = device(status, "valves"), device(status, "broken")
    assert broken["state"] == "failed" and valves["state"] == "failed", status
    assert "no hardware here" in broken["last_error"]
    assert "gave up: more than 2 restarts within 60 s" in broken["last_error"]
    assert valves["last_error"].startswith("its group failed: broken: "), valves["last_error"]
    assert valves["pid"] is None or not processes.is_alive(valves["pid"])
    assert broken["restarts"] == 2 and valves["restarts"] == 2  # one_for_all: each restart restarts both
    assert device(status, "outside")["state"] == "running" and device(status, "outside")["restarts"] == 0
    failed = {e["device"] for e in events(lab) if e["kind"] == "failed"}
    assert failed == {"valves", "broken"}


# -- the command line -------------------------------------------------------------------------

def test_sigterm_stops_a_foreground_up_cleanly(lab):
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.valves]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}" }}
[devices.light]
driver = "sim-light"
""")
    proc = lab.popen("up", lab.config)
    try:
        lab.wait_for(lambda s: len(s["devices"]) == 2 and all(d["state"] == "running" for d in s["devices"]),
                     what="lab running")
        pid = lab.pids()["valves"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "lab test stopped in" in err
    assert f"shutdown {pid}" in journal.read_text().splitlines()  # the driver's own shutdown ran
    assert processes.wait_gone(lab.leftovers(), 5.0) == set() and processes.port_is_free(lab.port)


def test_the_lab_is_found_by_port_then_config_then_labctl_port_then_1900(lab, tmp_path, client_for, monkeypatch):
    lab.write('[devices.valves]\ndriver = "sim-valves"\n')
    assert lab.up().returncode == 0
    elsewhere = free_port()  # no lab there
    other = tmp_path / "other.toml"
    other.write_text(f'[lab]\nport = {elsewhere}\n[devices.v]\ndriver = "sim-valves"\n')
    portless = tmp_path / "portless.toml"
    portless.write_text('[devices.v]\ndriver = "sim-valves"\n')

    def status(*args: str, env_port: str | None) -> tuple[int, str]:
        """`labctl status --json ARGS` with $LABCTL_PORT set to `env_port` (None: unset)."""
        saved = lab.env.copy()
        lab.env.pop("LABCTL_PORT", None)
        if env_port is not None:
            lab.env["LABCTL_PORT"] = env_port
        try:
            result = lab.labctl("status", "--json", *args)
        finally:
            lab.env = saved
        if result.returncode == 0:
            return json.loads(result.stdout)["port"], ""
        return 0, result.stderr

    assert status("--port", str(lab.port), "--config", str(other), env_port=str(elsewhere)) == (lab.port, "")
    assert status("--config", str(lab.config), env_port=str(elsewhere)) == (lab.port, "")
    assert status(env_port=str(lab.port)) == (lab.port, "")
    assert f"port {elsewhere}" in status("--config", str(other), env_port=str(lab.port))[1]  # --config wins
    assert "port 1900" in status(env_port=None)[1]          # nothing said: 1900 (no lab of ours there)
    assert "port 1900" in status("--config", str(portless), env_port=None)[1]  # a file without [lab].port
    bad = status(env_port="nineteen")[1]
    assert "LABCTL_PORT must be a port number, got 'nineteen'" in bad
    monkeypatch.setenv("LABCTL_PORT", str(lab.port))  # connect() in a program: the same rule
    from labctl.actors.client import connect

    with connect(key_file=lab.key_file) as client:
        assert client.port == lab.port and client.status().devices[0].name == "valves"
    saved = lab.env.pop("LABCTL_PORT")
    try:
        down = lab.labctl("down", "--config", lab.config)
    finally:
        lab.env["LABCTL_PORT"] = saved
    assert down.returncode == 0 and f"lab test on port {lab.port} stopped" in down.stdout


def test_restart_exits_1_when_the_device_does_not_come_back(lab):
    attempts = lab.dir / "attempts.txt"
    lab.env["LABCTL_TEST_BROKEN_LOG"] = str(attempts)
    lab.write("""
[devices.valves]
driver = "sim-valves"
[devices.broken]
driver = "labtest_drivers:Broken"
max_restarts = 0
""")
    assert lab.up().returncode == 1
    again = lab.labctl("restart", "broken")
    assert again.returncode == 1, again.stdout
    assert "broken is failed after restarting: RuntimeError: no hardware here" in again.stderr
    assert len(attempts.read_text().split()) == 2  # it was tried again, once
    assert any(e["kind"] == "restarting" and e["detail"].get("by") == "hand" for e in events(lab))
    unknown = lab.labctl("restart", "nosuch")
    assert unknown.returncode == 1 and "no device 'nosuch'" in unknown.stderr
    assert lab.labctl("restart", "valves").returncode == 0  # and a device that comes back: 0


def test_no_recover_exits_exactly_1_when_the_admin_is_killed(lab):
    lab.write('[devices.valves]\ndriver = "sim-valves"\n')
    proc = lab.popen("up", lab.config, "--no-recover")
    try:
        lab.wait_for(lambda s: len(s["devices"]) == 1 and s["devices"][0]["state"] == "running", what="lab running")
        admin = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())["admin_pid"]
        os.kill(admin, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert f"the lab's admin (pid {admin}) died" in err and "--no-recover" in err
    assert processes.wait_gone(lab.leftovers(), 5.0) == set() and processes.port_is_free(lab.port)


# -- the example labs, as shipped -------------------------------------------------------------

def example(lab, name: str) -> None:
    """config/NAME, verbatim but for its port and log folder, as this lab's file."""
    text = (ROOT / "config" / name).read_text()
    text, ports = re.subn(r"(?m)^port = \d+$", f"port = {lab.port}\nlog_dir = \"{lab.log_dir}\"", text, count=1)
    assert ports == 1, f"config/{name} has no [lab].port line"
    lab.config.write_text(text)
    check = lab.labctl("check", lab.config)
    assert check.returncode == 0, check.stderr


def test_example_floating_lab_runs_as_its_comments_say(lab):
    example(lab, "floating.toml")
    up = lab.up()
    assert up.returncode == 1 and "camera_missing" in up.stdout, up.stderr  # it asks for a unit not plugged in
    status = lab.status()
    missing = device(status, "camera_missing")
    assert missing["state"] == "failed"
    assert "unit 20991231 is not present; units found: 20130802, 20200910" in missing["last_error"]
    assert device(status, "camera_left")["state"] == "running" and device(status, "lasers")["state"] == "running"
    left = json.loads(lab.labctl("send", "camera_left", "GetStatus", "--json", check=True).stdout)["value"]
    assert left["serial"] == "20200910"
    assert lab.labctl("send", "lasers.l405", "TurnOn", check=True).stdout.strip() == "True"
    (lab.dir / "floating-present.txt").write_text("20130802\n20200910\n20991231\n")  # plug it in
    lab.wait_for(lambda s: device(s, "camera_missing")["state"] == "running", what="camera_missing up by itself")
    found = json.loads(lab.labctl("send", "camera_missing", "GetStatus", "--json", check=True).stdout)["value"]
    assert found["serial"] == "20991231"


def test_example_composite_lab_runs_as_its_comments_say(lab):
    example(lab, "composite.toml")
    assert lab.up().returncode == 0
    pids = lab.pids()
    assert pids["scope.stage"] == pids["scope.camera"]
    assert pids["wheel"] == pids["shutter_light"] != pids["scope.stage"]
    assert lab.labctl("send", "scope.stage", "MoveTo", "x", "2500", check=True).stdout.strip() == "2500"
    image = json.loads(lab.labctl("send", "scope.camera", "Acquire", "--json", check=True).stdout)["value"]["image"]
    assert image["shape"] == [256, 256]
