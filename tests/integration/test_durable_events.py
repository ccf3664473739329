"""The lab's history survives its supervisor and its admin: events keep their numbers, restart counts
are kept, and a running `labctl events --follow` prints the recovery and what follows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from labctl.actors import processes

from ..conftest import wait_for_text

pytestmark = pytest.mark.integration

LAB = """
[devices.valves]
driver = "sim-valves"
[devices.furnace]
driver = "sim-furnace"
"""


def record(lab) -> dict:
    return json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())


def events(lab) -> list[dict]:
    out = lab.labctl("events", "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_history_and_restart_counts_survive_sigkill_of_the_supervisor_then_the_admin(lab):
    lab.write(LAB)
    assert lab.up().returncode == 0
    followed = lab.dir / "followed.jsonl"
    with followed.open("w") as out:
        follow = subprocess.Popen([sys.executable, "-m", "labctl.bin.cli", "events", "--follow", "--json"],
                                  cwd=lab.dir, env=lab.env, stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        os.kill(lab.pids()["valves"], signal.SIGKILL)  # a restart to count
        lab.wait_for(lambda s: s["devices"][0]["restarts"] == 1 and s["devices"][0]["state"] == "running",
                     what="valves restarted once")
        before = events(lab)
        assert [e["seq"] for e in before] == list(range(1, len(before) + 1))

        supervisor = record(lab)["supervisor_pid"]
        os.kill(supervisor, signal.SIGKILL)
        lab.wait_for(lambda s: record(lab)["supervisor_pid"] != supervisor and s["devices"]
                     and all(d["state"] == "running" for d in s["devices"]), what="a new supervisor")
        admin = record(lab)["admin_pid"]
        os.kill(admin, signal.SIGKILL)
        status = lab.wait_for(lambda s: record(lab)["admin_pid"] != admin and s["devices"]
                              and all(d["state"] == "running" for d in s["devices"]), what="a new admin")

        after = events(lab)
        assert after[:len(before)] == before                     # every earlier event, same numbers
        assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
        recovered = [e for e in after if e["kind"] == "recovered" and e["device"] == "lab"]
        assert len(recovered) == 2
        valves = next(d for d in status["devices"] if d["name"] == "valves")
        assert valves["restarts"] == 1                           # kept through both replacements
        assert all(d["restarts"] == 0 for d in status["devices"] if d["name"] != "valves")
        last = after[-1]["seq"]
        # the follower prints the recoveries, as they happened, and what follows them
        lab.labctl("send", "valves", "OpenValve", "A", check=True)
        wait_for_text(followed, '"kind": "valve"', timeout=30)
    finally:
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
    printed = [json.loads(line) for line in followed.read_text().splitlines()]
    assert sum(1 for e in printed if e["kind"] == "recovered" and e["device"] == "lab") == 2, err
    assert any(e["kind"] == "valve" and e["seq"] > last for e in printed)
    assert [e["seq"] for e in printed] == sorted({e["seq"] for e in printed})   # none twice, in order
    assert follow.returncode == 0, err
    assert processes.is_alive(record(lab)["keeper_pid"])
