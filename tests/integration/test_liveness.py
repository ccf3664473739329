"""Liveness above the devices: a hung supervisor is replaced by the keeper; a supervisor's own stall
never gets a healthy device blamed."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from labctl.actors import processes
from labctl.actors.messages import OpenValve

pytestmark = pytest.mark.integration

LAB = """
[devices.valves]
driver = "sim-valves"
heartbeat_s = 0.2
heartbeat_misses = 2
[devices.furnace]
driver = "sim-furnace"
"""


def record(lab) -> dict:
    return json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())


def loggers(lab) -> list[int]:
    """Thespian's logger processes of the lab: the admin's children other than the supervisor."""
    rec = record(lab)
    return [pid for pid in lab.leftovers()
            if processes.parent_of(pid) == rec["admin_pid"] and pid != rec["supervisor_pid"]]


def test_a_stopped_supervisor_is_replaced_by_the_keeper(lab):
    lab.write(LAB)
    assert lab.up().returncode == 0
    old = record(lab)["supervisor_pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        began = time.monotonic()
        status = lab.wait_for(lambda s: record(lab)["supervisor_pid"] != old and s["devices"]
                              and all(d["state"] == "running" for d in s["devices"]), timeout=30,
                              what="a new supervisor and every device running")
        assert time.monotonic() - began < 20  # the keeper checks every 2 s and acts after 2 silent checks
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "hung; killing it" in (lab.log_dir / "lab.log").read_text()
    assert all(d["restarts"] == 0 for d in status["devices"])


def test_a_supervisor_stall_gets_no_device_restarted(lab):
    """The supervisor stalls for more than twice a device process's watchdog on its silence (3 s):
    no device ends itself or is counted as hung for it. (The keeper is stopped too, so that it does
    not replace the supervisor meanwhile: that is the test above.)"""
    lab.write(LAB)
    assert lab.up().returncode == 0
    pids = lab.pids()
    stopped = [record(lab)["keeper_pid"], record(lab)["supervisor_pid"]]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(7)  # the stall itself is what is tested: nothing to wait for
    finally:
        for pid in reversed(stopped):
            os.kill(pid, signal.SIGCONT)
    assert lab.labctl("send", "valves", "GetValveState", "A").returncode == 0
    status = lab.status()
    assert {d["name"]: d["pid"] for d in status["devices"]} == pids
    assert all(d["restarts"] == 0 and d["state"] == "running" for d in status["devices"])
    assert "it is alive, so it is busy: staying up" in (lab.log_dir / "valves.log").read_text()


def test_sigkill_of_thespians_logger_costs_no_device_nor_the_admin(lab):
    """Losing the logger may cost log lines (processes that knew the old one log into the void), never
    a device or the admin."""
    lab.write(LAB)
    assert lab.up().returncode == 0
    pids, rec = lab.pids(), record(lab)
    old = loggers(lab)
    assert len(old) == 1, old
    os.kill(old[0], signal.SIGKILL)
    assert processes.wait_gone(old, 5.0) == set()
    # the admin starts another logger instead of crashing, and nothing else changes
    lab.wait_for(lambda s: set(loggers(lab)) - set(old), timeout=10, what="a new logger")
    assert lab.labctl("send", "valves", "OpenValve", "A").returncode == 0
    assert processes.is_alive(rec["admin_pid"]) and record(lab)["supervisor_pid"] == rec["supervisor_pid"]
    assert lab.pids() == pids and all(d["restarts"] == 0 for d in lab.status()["devices"])


def test_a_stopped_admin_is_replaced_by_the_keeper(lab):
    lab.write(LAB)
    assert lab.up().returncode == 0
    old = record(lab)["admin_pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        lab.wait_for(lambda s: record(lab)["admin_pid"] != old and s["devices"]
                     and all(d["state"] == "running" for d in s["devices"]), timeout=40,
                     what="a new admin and every device running")
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "the admin (pid" in (lab.log_dir / "lab.log").read_text()


def test_thousands_of_abandoned_long_polls_cost_nothing(lab, client_for):
    """A client leaves 5,000 long-polls (wait_s=1e6) and exits: the supervisor keeps a few per client
    and answers the rest at once, so status stays fast and no device is restarted."""
    lab.write(LAB)
    assert lab.up().returncode == 0
    pids = lab.pids()
    flood = ("import os, sys, uuid\n"
             "from labctl.actors.client import connect\n"
             "from labctl.actors.messages import GetEvents\n"
             "lab = connect(int(sys.argv[1]), key_file=sys.argv[2])\n"
             "context = lab._context()\n"
             "supervisor = lab._supervisor(context, 10.0)\n"
             "for _ in range(5000):\n"
             "    context.tell(supervisor, GetEvents(10**9, 1e6, request_id=uuid.uuid4().hex))\n"
             "os._exit(0)\n")
    done = lab.popen_python(flood, str(lab.port), str(lab.key_file))
    assert done.wait(timeout=120) == 0
    client = client_for(lab, timeout=5)
    client.send("valves", OpenValve("A"))  # an event: every waiter kept is answered, its client gone
    for _ in range(5):  # over several heartbeat periods (0.2 s), each answered at once
        began = time.monotonic()
        status = client.status()
        assert time.monotonic() - began < 1
        client.events(client.events().last_seq, wait_s=0.3)  # waits for an event that does not come
    assert {d.name: d.pid for d in status.devices} == pids
    assert all(d.restarts == 0 and d.state == "running" for d in status.devices)


def test_a_stopped_logger_costs_no_device(lab):
    """Thespian's logger stopped while a device logs thousands of lines: device processes on the
    leader write their own logs, so nothing blocks, no heartbeat is missed, nothing restarts."""
    lab.write(LAB + """
[devices.chatty]
driver = "labtest_drivers:Chatty"
heartbeat_s = 0.2
heartbeat_misses = 2
""")
    assert lab.up().returncode == 0
    pids = lab.pids()
    logger = loggers(lab)[0]
    os.kill(logger, signal.SIGSTOP)
    try:
        for _ in range(5):  # 5 x 3,000 lines, over several heartbeat periods
            sent = lab.labctl("send", "chatty", "Call", "talk", "3000")
            assert sent.returncode == 0, sent.stderr
        assert lab.labctl("send", "valves", "OpenValve", "A").returncode == 0
        status = lab.status()
    finally:
        os.kill(logger, signal.SIGCONT)
    assert {d["name"]: d["pid"] for d in status["devices"]} == pids
    assert all(d["restarts"] == 0 and d["state"] == "running" for d in status["devices"])
    assert "chatty line 2999 of 3000" in (lab.log_dir / "chatty.log").read_text()  # written all the same
