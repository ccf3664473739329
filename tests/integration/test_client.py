"""The client against Thespian's pitfalls: replies crossing threads, stalls after a dead peer."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from labctl.actors.errors import LabTimeout
from labctl.actors.messages import GetPosition, MoveTo

pytestmark = pytest.mark.integration

STAGES = """
[devices.stage]
driver = "sim-stage"
conf = { axes = { x = [0, 100000], y = [0, 100000] } }
[devices.valves]
driver = "sim-valves"
"""


@pytest.mark.parametrize("lane", ["off", "unix", "tcp"])
def test_threads_sharing_one_client_each_get_their_own_replies(lab, client_for, lane):
    lab.write(STAGES)
    assert lab.up().returncode == 0
    client = client_for(lab, lane=lane)   # through the supervisor, or on each device's own lane
    wrong, errors = [], []

    def worker(thread: int) -> None:
        try:
            for i in range(40):
                position = float(thread * 1000 + i)
                reply = client.send("stage", MoveTo("x" if thread % 2 else "y", position))
                if reply != position:
                    wrong.append((thread, i, reply))
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not wrong, (errors, wrong[:5])


def test_a_stopped_supervisor_costs_a_timeout_not_a_stall(lab, client_for):
    lab.write(STAGES)
    assert lab.up().returncode == 0
    supervisor = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())["supervisor_pid"]
    client = client_for(lab)
    os.kill(supervisor, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(LabTimeout):
            client.send("stage", GetPosition(), timeout=1.0)
        assert time.monotonic() - began < 3.0  # the client's own timeout, not Thespian's 35-60 s
    finally:
        os.kill(supervisor, signal.SIGCONT)
    began = time.monotonic()
    assert "x" in client.send("stage", GetPosition(), timeout=10)
    assert time.monotonic() - began < 3.0  # no 33 s transmit stall on the next request


def test_sigterm_of_a_device_counts_one_restart(lab):
    """Thespian reports a SIGTERMed child's exit twice; the supervisor must restart it once."""
    lab.write(STAGES)
    assert lab.up().returncode == 0
    pid = lab.pids()["valves"]
    os.kill(pid, signal.SIGTERM)
    lab.wait_for(lambda s: s["devices"][1]["state"] == "running" and s["devices"][1]["pid"] != pid)
    time.sleep(0.5)  # time for a duplicate exit report to arrive, had it been acted upon
    assert lab.device("valves")["restarts"] == 1
    events = [json.loads(line) for line in lab.labctl("events", "--json").stdout.splitlines()]
    assert sum(e["kind"] == "running" and e["device"] == "valves" for e in events) == 2
