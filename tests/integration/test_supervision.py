"""Supervision under fault injection: real processes, real SIGKILL and SIGSTOP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from labctl.actors import processes
from labctl.actors.errors import DeviceUnavailable, LabTimeout
from labctl.actors.messages import Call, GetValveStates, OpenValve

from ..conftest import wait_for_text

pytestmark = pytest.mark.integration

THREE = """
[devices.stage]
driver = "sim-stage"
[devices.camera]
driver = "sim-camera"
conf = {{ shape = [32, 32] }}
[devices.light]
driver = "sim-light"
{extra}
"""


def record(lab) -> dict:
    return json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())


def restarted(lab, before: dict, names: list[str]) -> dict:
    """Wait until exactly the devices in `names` run with new pids; return the new pids."""
    def done(status):
        now = {d["name"]: d for d in status["devices"]}
        return all(d["state"] == "running" for d in now.values()) and \
            all(now[n]["pid"] != before[n] for n in names)
    status = lab.wait_for(done, what=f"{names} restarted")
    return {d["name"]: d["pid"] for d in status["devices"]}


def test_one_for_one_restarts_only_the_dead(lab):
    lab.write(THREE.format(extra=""))
    assert lab.up().returncode == 0
    before = lab.pids()
    os.kill(before["camera"], signal.SIGKILL)
    after = restarted(lab, before, ["camera"])
    assert after["stage"] == before["stage"] and after["light"] == before["light"]


def test_one_for_all_restarts_the_whole_group(lab):
    lab.write(THREE.format(extra="""
[devices.valves]
driver = "sim-valves"
[groups.optics]
devices = ["stage", "camera", "light"]
process = "separate"
strategy = "one_for_all"
"""))
    assert lab.up().returncode == 0
    before = lab.pids()
    os.kill(before["camera"], signal.SIGKILL)
    after = restarted(lab, before, ["stage", "camera", "light"])
    assert after["valves"] == before["valves"]  # outside the group: untouched
    restarts = {d["name"]: d["restarts"] for d in lab.status()["devices"]}
    assert restarts == {"stage": 1, "camera": 1, "light": 1, "valves": 0}


def test_rest_for_one_restarts_the_dead_and_those_declared_after_it(lab):
    lab.write(THREE.format(extra='[supervision]\nstrategy = "rest_for_one"\n'))
    assert lab.up().returncode == 0
    before = lab.pids()
    os.kill(before["camera"], signal.SIGKILL)
    after = restarted(lab, before, ["camera", "light"])
    assert after["stage"] == before["stage"]


def test_sigstop_is_detected_as_hung_and_restarted(lab):
    lab.write(THREE.format(extra='[supervision]\nheartbeat_s = 0.2\nheartbeat_misses = 2\n'))
    assert lab.up().returncode == 0
    before = lab.pids()
    stopped_at = time.monotonic()
    os.kill(before["light"], signal.SIGSTOP)
    after = restarted(lab, before, ["light"])
    took = time.monotonic() - stopped_at
    light = lab.device("light")
    assert "hung: missed 2 heartbeats" in light["last_error"]
    assert not processes.is_alive(before["light"])  # killed by pid, not left stopped
    assert after["stage"] == before["stage"]
    assert took < 10, took  # heartbeat_s x (misses + 1) = 0.6 s, plus restart; generous bound


def sleeper_lab(lab, **settings) -> Path:
    """A lab of one Sleeper device, `slow`, with these supervision settings; returns its journal."""
    journal = lab.dir / "journal.txt"
    lab.write(f'[devices.slow]\ndriver = "labtest_drivers:Sleeper"\nconf = {{ journal = "{journal}" }}\n'
              + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    assert lab.up().returncode == 0
    return journal


def test_a_declared_time_limit_is_not_a_hang_but_a_plain_block_is(lab, client_for):
    sleeper_lab(lab, heartbeat_s=0.2, heartbeat_misses=2)
    client = client_for(lab, timeout=10)
    pid = lab.pids()["slow"]
    assert client.send("slow", Call("long_exposure", (1.5,))) == 1.5  # limit 5 s: allowed
    assert lab.device("slow")["pid"] == pid
    with pytest.raises(DeviceUnavailable) as info:
        client.send("slow", Call("nap", (30,)))  # no limit declared: a hang after 0.6 s
    assert "hung" in info.value.text and "was not re-sent" in info.value.text
    assert lab.wait_for(lambda s: s["devices"][0]["state"] == "running" and s["devices"][0]["pid"] != pid)


def test_request_in_flight_when_its_device_dies_fails_fast_and_is_not_repeated(lab, client_for):
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.valves]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}", move_time_s = 3.0 }}
""")
    assert lab.up().returncode == 0
    client = client_for(lab)
    pid = lab.pids()["valves"]
    outcome = {}

    def actuate():
        began = time.monotonic()
        try:
            outcome["value"] = client.send("valves", OpenValve("A"), timeout=8)
        except Exception as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - began

    worker = threading.Thread(target=actuate)
    worker.start()
    wait_for_text(journal, "set A 1")
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=20)
    assert isinstance(outcome.get("error"), (DeviceUnavailable, LabTimeout)), outcome
    assert outcome["took"] < 8.5  # never longer than the client's own timeout
    lab.wait_for(lambda s: s["devices"][0]["state"] == "running" and s["devices"][0]["pid"] != pid)
    # Requests run in order: had OpenValve been re-sent to the new process, it would have run
    # (and journaled) before this one is answered.
    assert client_for(lab).send("valves", GetValveStates())["A"] == "closed"
    actuations = [line for line in journal.read_text().splitlines() if line.startswith("set A 1")]
    assert len(actuations) == 1, journal.read_text()


def test_flapping_device_fails_after_max_restarts_and_restart_by_hand_brings_it_back(lab):
    flag = lab.dir / "flapping"
    flag.touch()
    lab.write(f"""
[devices.valves]
driver = "sim-valves"
[devices.flaky]
driver = "labtest_drivers:Flaky"
conf = {{ fail_flag = "{flag}" }}
max_restarts = 3
within_s = 60
backoff_s = 0.02
""")
    up = lab.up()
    assert up.returncode == 1
    flaky = lab.device("flaky")
    assert flaky["state"] == "failed" and flaky["restarts"] == 3
    assert "flapping" in flaky["last_error"] and "gave up: more than 3 restarts within 60 s" in flaky["last_error"]
    assert lab.device("valves")["state"] == "running" and lab.device("valves")["restarts"] == 0
    flag.unlink()
    again = lab.labctl("restart", "flaky")
    assert again.returncode == 0, again.stderr
    assert lab.device("flaky")["state"] == "running"
    kinds = [json.loads(line)["kind"] for line in lab.labctl("events", "--json").stdout.splitlines()
             if json.loads(line)["device"] == "flaky"]
    assert kinds[:2] == ["starting", "crashed"] and "failed" in kinds and kinds[-1] == "running"


def test_backoff_grows_between_restarts(lab):
    attempts = lab.dir / "attempts.txt"
    lab.env["LABCTL_TEST_BROKEN_LOG"] = str(attempts)
    lab.write("""
[devices.broken]
driver = "labtest_drivers:Broken"
max_restarts = 4
backoff_s = 0.1
backoff_max_s = 0.3
""")
    assert lab.up().returncode == 1
    times = [float(t) for t in attempts.read_text().split()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 5  # the first try and 4 restarts
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.29 and gaps[3] >= 0.29  # 0.1, 0.2, 0.3 (cap)
    events = [json.loads(line) for line in lab.labctl("events", "--json").stdout.splitlines()]
    delays = [e["detail"]["delay_s"] for e in events if e["kind"] == "restarting"]
    assert delays == [0.1, 0.2, 0.3, 0.3]


def test_down_while_a_constructor_keeps_failing_is_clean_and_fast(lab):
    lab.write("""
[devices.valves]
driver = "sim-valves"
[devices.broken]
driver = "labtest_drivers:Broken"
max_restarts = 1000
backoff_s = 0.05
backoff_max_s = 0.05
""")
    proc = lab.popen("up", lab.config, "--detach")
    lab.wait_for(lambda s: any(d["name"] == "broken" and d["restarts"] >= 3 for d in s["devices"]),
                 what="a few failed constructions")
    began = time.monotonic()
    down = lab.labctl("down")
    took = time.monotonic() - began
    proc.kill()
    proc.wait()
    assert down.returncode == 0 and "stopped" in down.stdout
    assert processes.wait_gone(lab.leftovers(), 2.0) == set() and processes.port_is_free(lab.port)
    assert took < 10, took


@pytest.mark.parametrize("restart, code, state", [("transient", 0, "stopped"), ("transient", 3, "running"),
                                                  ("temporary", 3, "failed"), ("permanent", 0, "running")])
def test_restart_types(lab, client_for, restart, code, state):
    lab.write(f"""
[devices.unit]
driver = "labtest_drivers:Exiter"
restart = "{restart}"
backoff_s = 0.01
""")
    assert lab.up().returncode == 0
    pid = lab.pids()["unit"]
    with pytest.raises(DeviceUnavailable):
        client_for(lab).send("unit", Call("exit", (code,)))
    status = lab.wait_for(lambda s: s["devices"][0]["pid"] != pid and s["devices"][0]["state"] in
                          ("running", "stopped", "failed"), what="the exit handled")
    assert status["devices"][0]["state"] == state


def test_sigkill_of_the_supervisor_recovers_with_one_process_per_device(lab):
    lab.write(THREE.format(extra=""))
    assert lab.up().returncode == 0
    old = record(lab)
    before = lab.pids()
    os.kill(old["supervisor_pid"], signal.SIGKILL)
    status = lab.wait_for(lambda s: len(s["devices"]) == 3 and all(d["state"] == "running" for d in s["devices"])
                          and all(d["pid"] not in before.values() for d in s["devices"]), what="recovery")
    assert processes.wait_gone(before.values(), 5.0) == set()  # the old device processes are gone
    new = record(lab)
    assert new["supervisor_pid"] != old["supervisor_pid"] and new["admin_pid"] == old["admin_pid"]
    running = set(lab.leftovers())
    expected = {new["keeper_pid"], new["admin_pid"], new["supervisor_pid"], *[d["pid"] for d in status["devices"]]}
    assert expected <= running and len(running - expected) == 1  # plus the admin's logger; nothing else


def test_sigkill_of_the_admin_recovers_and_frees_the_port(lab):
    lab.write(THREE.format(extra=""))
    assert lab.up().returncode == 0
    old = record(lab)
    before = set(lab.leftovers()) - {old["keeper_pid"]}
    os.kill(old["admin_pid"], signal.SIGKILL)
    assert processes.wait_gone(before, 5.0) == set()  # everything of the old admin died with it
    lab.wait_for(lambda s: len(s["devices"]) == 3 and all(d["state"] == "running" for d in s["devices"]),
                 what="the lab back")
    new = record(lab)
    assert new["admin_pid"] != old["admin_pid"] and new["keeper_pid"] == old["keeper_pid"]
    assert any(e["kind"] == "recovered" for e in map(json.loads, lab.labctl("events", "--json").stdout.splitlines()))


def test_no_recover_exits_non_zero_and_leaves_nothing(lab):
    lab.write(THREE.format(extra=""))
    proc = lab.popen("up", lab.config, "--no-recover")
    try:
        lab.wait_for(lambda s: len(s["devices"]) == 3 and all(d["state"] == "running" for d in s["devices"]))
        admin = record(lab)["admin_pid"]
        os.kill(admin, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "admin" in err and "died" in err and "--no-recover" in err
    assert processes.wait_gone(lab.leftovers(), 5.0) == set() and processes.port_is_free(lab.port)


def test_events_follow_prints_crashes_as_they_happen(lab):
    lab.write(THREE.format(extra=""))
    assert lab.up().returncode == 0
    follow = subprocess.Popen([*lab.labctl_argv(), "events", "--follow", "--json"], cwd=lab.dir, env=lab.env,
                              stdout=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in follow.stdout:
            seen.append(json.loads(line))
            if seen[-1]["kind"] == "running" and seen[-1]["device"] == "light" and len(seen) > 6:
                break
            if len(seen) == 6:  # the start-up history has been printed: now kill a device
                os.kill(lab.pids()["light"], signal.SIGKILL)
        crash = next(e for e in seen if e["kind"] == "crashed")
        assert crash["device"] == "light" and crash["detail"]["cause"] == "killed by SIGKILL"
        restart = next(e for e in seen if e["kind"] == "restarting")
        assert restart["detail"]["attempt"] == 1 and "delay_s" in restart["detail"]
    finally:
        follow.kill()
        follow.wait()


def test_queued_time_limited_calls_each_get_their_whole_limit(lab, client_for):
    """A limit runs from when the call starts, not from when it was routed behind another."""
    sleeper_lab(lab, heartbeat_s=0.2, heartbeat_misses=2)
    client = client_for(lab, timeout=20)
    pid = lab.pids()["slow"]
    results = []

    def expose():
        results.append(client.send("slow", Call("long_exposure", (3.0,))))

    threads = [threading.Thread(target=expose) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [3.0, 3.0]  # the second ran 3 s but finished 6 s after routing: limit is 5 s
    assert lab.device("slow")["pid"] == pid and lab.device("slow")["restarts"] == 0


def test_a_long_camera_exposure_is_not_a_hang(lab):
    lab.write("""
[devices.camera]
driver = "sim-camera"
conf = { shape = [32, 32] }
heartbeat_s = 0.2
heartbeat_misses = 2
""")
    assert lab.up().returncode == 0
    pid = lab.pids()["camera"]
    lab.labctl("send", "camera", "SetExposure", "2", check=True)
    image = json.loads(lab.labctl("send", "camera", "Acquire", "--json", check=True).stdout)["value"]["image"]
    assert image["shape"] == [32, 32]  # acquire's limit follows the exposure (2 x exposure + 10 s)
    assert lab.device("camera")["pid"] == pid and lab.device("camera")["restarts"] == 0


def test_an_unsendable_result_is_a_failure_not_silence(lab):
    lab.write("""
[devices.odd]
driver = "labtest_drivers:Unsendable"
""")
    assert lab.up().returncode == 0
    began = time.monotonic()
    result = lab.labctl("send", "odd", "Call", "numbers", "--timeout", "20")
    assert result.returncode == 1 and "UnsendableResult" in result.stderr
    assert time.monotonic() - began < 10  # answered, not left to the client's 20 s timeout
    assert lab.labctl("send", "odd", "Call", "ping").stdout.strip() == "pong"


def test_a_hanging_constructor_is_ended_by_its_own_alarm_with_no_overlap(lab):
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.stuck]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}", hang = true }}
init_timeout_s = 1.0
backoff_s = 0.05
max_restarts = 2
[devices.valves]
driver = "sim-valves"
""")
    assert lab.up().returncode == 1
    stuck = lab.device("stuck")
    assert stuck["state"] == "failed" and "construction took longer than 1 s" in stuck["last_error"]
    opened = [line for line in journal.read_text().splitlines() if line.startswith("open ")]
    assert len(opened) == 3  # the first try and two restarts
    assert "OVERLAP" not in journal.read_text()  # each started only once the one before was gone
    assert lab.device("valves")["state"] == "running"


def test_a_slow_driver_shutdown_gets_its_stop_timeout(lab):
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.slow]
driver = "labtest_drivers:SlowShutdown"
conf = {{ journal = "{journal}", seconds = 2.0 }}
stop_timeout_s = 6.0
heartbeat_s = 0.3
heartbeat_misses = 2
""")
    assert lab.up().returncode == 0
    down = lab.labctl("down")
    assert down.returncode == 0
    assert journal.read_text().splitlines() == ["shutdown start", "shutdown end"]  # not killed half-way


def test_time_limits_worked_out_per_call(lab):
    unplugged = lab.dir / "unplugged"
    lab.write(f"""
[devices.cam]
driver = "labtest_drivers:Limited"
conf = {{ unplugged = "{unplugged}" }}
heartbeat_s = 0.2
heartbeat_misses = 2
""")
    assert lab.up().returncode == 0
    pid = lab.pids()["cam"]
    assert lab.labctl("send", "cam", "Call", "shoot").stdout.strip() == "shot"
    assert lab.labctl("send", "cam", "Call", "wait", "-5").stdout.strip() == "-5"  # a nonsense limit: the default
    unplugged.touch()  # the limit's own hardware query loses the link: degraded, not an error
    lost = lab.labctl("send", "cam", "Call", "shoot")
    assert lost.returncode == 1 and "LinkError" in lost.stderr
    lab.wait_for(lambda s: s["devices"][0]["degraded"], what="degraded")
    unplugged.unlink()
    lab.wait_for(lambda s: not s["devices"][0]["degraded"], what="recovered by itself")
    assert lab.labctl("send", "cam", "Call", "shoot").stdout.strip() == "shot"
    odd = lab.labctl("send", "cam", "Call", "objects")
    assert odd.returncode == 1 and "UnsendableResult" in odd.stderr
    assert lab.device("cam")["pid"] == pid and lab.device("cam")["restarts"] == 0


def test_a_call_that_finishes_during_a_restart_still_gets_its_reply(lab, client_for):
    journal = sleeper_lab(lab, stop_timeout_s=3.0)
    client = client_for(lab, timeout=10)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(value=client.send("slow", Call("nap", (0.8,)))))
    worker.start()
    wait_for_text(journal, "nap 0.8")  # the nap is under way
    assert lab.labctl("restart", "slow").returncode == 0
    worker.join(timeout=20)
    assert outcome.get("value") == 0.8  # the reply of a call that completed, not "may or may not"


def test_requests_queued_behind_a_hang_are_told_they_never_started(lab, client_for):
    journal = sleeper_lab(lab, heartbeat_s=0.5, heartbeat_misses=2)
    client = client_for(lab, timeout=10)
    errors = {}

    def send(key, call):
        try:
            client.send("slow", call)
        except DeviceUnavailable as exc:
            errors[key] = exc.text

    hang = threading.Thread(target=send, args=("nap", Call("nap", (30,))))
    hang.start()
    wait_for_text(journal, "nap 30")  # under way (1 s before it counts as hung); this one queues behind it
    send("ping", Call("ping"))
    hang.join(timeout=20)
    assert "hung" in errors["nap"] and "may or may not have taken effect" in errors["nap"]
    assert "was not started" in errors["ping"]  # it never ran: no "may or may not" for it
