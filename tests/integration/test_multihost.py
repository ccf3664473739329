"""A lab on two hosts: the leader and a `labctl node` member (two admins on loopback)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from labctl.actors import processes

from ..conftest import free_port

pytestmark = pytest.mark.integration


def test_devices_run_on_the_host_the_config_names(lab, client_for):
    node_port = free_port()
    lab.write(f"""
[hosts.pi]
address = "127.0.0.1"
port = {node_port}
[devices.valves]
driver = "sim-valves"
host = "pi"
heartbeat_s = 0.25
heartbeat_misses = 2
[devices.furnace]
driver = "sim-furnace"
""", hosts_wait_s=1)
    up = lab.up()  # no node yet: up waits hosts_wait_s for it, then says which host did not join
    assert up.returncode == 1
    waiting = lab.device("valves")
    assert waiting["state"] == "failed" and "host 'pi' did not join within 1 s" in waiting["last_error"]
    assert f"labctl node pi --bind 127.0.0.1 --leader 127.0.0.1:{lab.port}" in waiting["last_error"]
    assert waiting["restarts"] == 0 and lab.device("furnace")["state"] == "running"

    with lab.node("pi", node_port):
        status = lab.wait_for(lambda s: s["devices"][0]["state"] == "running", what="valves placed on pi")
        pid = status["devices"][0]["pid"]
        node_record = lab.record(node_port)  # the node writes it once its admin runs
        assert processes.parent_of(pid) == node_record["admin_pid"]  # it runs under the node's admin
        # a remote device's changes still come by its lane; its requests go through the supervisor
        with client_for(lab).notices("valves", timeout=20) as notices:
            assert lab.labctl("send", "valves", "OpenValve", "B").stdout.strip() == "open"
            notice = next(iter(notices))
            assert (notice.device, notice.detail.get("valve"), notice.detail.get("state")) == ("valves", "B", "open")

        os.kill(pid, signal.SIGKILL)  # a remote crash is reported and restarted on the same host
        status = lab.wait_for(lambda s: s["devices"][0]["state"] == "running" and s["devices"][0]["pid"] != pid)
        pid = status["devices"][0]["pid"]
        assert processes.parent_of(pid) == node_record["admin_pid"]

        os.kill(pid, signal.SIGSTOP)  # a remote hang: killed on its host by a reaper, then restarted
        status = lab.wait_for(lambda s: s["devices"][0]["state"] == "running" and s["devices"][0]["pid"] != pid)
        assert "hung" in status["devices"][0]["last_error"]
        assert processes.wait_gone([pid], 5.0) == set()

        remote = status["devices"][0]["pid"]
        assert lab.labctl("down").returncode == 0
        assert processes.wait_gone([remote], 5.0) == set()  # stopping the lab stops its remote devices
        assert processes.is_alive(node_record["admin_pid"])  # the host itself stays, ready for the next lab


def test_remote_devices_never_run_twice(lab):
    """A node started before its lab; a remote constructor that hangs; the supervisor killed while a
    remote device runs. Each new process of a device notes it if an earlier one still runs."""
    node_port = free_port()
    journal, stuck = lab.dir / "journal.txt", lab.dir / "stuck.txt"
    lab.write(f"""
[hosts.pi]
address = "127.0.0.1"
port = {node_port}
[devices.valves]
driver = "labtest_drivers:Recorder"
host = "pi"
conf = {{ journal = "{journal}" }}
[devices.stuck]
driver = "labtest_drivers:Recorder"
host = "pi"
conf = {{ journal = "{stuck}", hang = true }}
init_timeout_s = 1.0
max_restarts = 1
backoff_s = 0.05
""")
    with lab.node("pi", node_port):
        lab.up()  # the node waited for the lab, then joined it
        status = lab.wait_for(lambda s: s["devices"][0]["state"] == "running" and s["devices"][1]["state"] == "failed"
                              and s["devices"][1]["restarts"] == 1, what="valves on pi; stuck given up")
        assert "construction took longer than 1 s" in status["devices"][1]["last_error"]
        assert len([line for line in stuck.read_text().splitlines() if line.startswith("open")]) == 2
        first = status["devices"][0]["pid"]
        record = json.loads((lab.dir / "run" / f"lab-{lab.port}.json").read_text())
        os.kill(record["supervisor_pid"], signal.SIGKILL)  # the remote process outlives its supervisor...
        status = lab.wait_for(lambda s: s["devices"] and s["devices"][0]["state"] == "running"
                              and s["devices"][0]["pid"] != first, what="valves back on pi")
        assert not processes.is_alive(first)  # ...until the new supervisor has it reaped
        assert "OVERLAP" not in journal.read_text() and "OVERLAP" not in stuck.read_text()
        assert lab.labctl("down").returncode == 0


def test_a_gateway_on_the_leader_drives_valves_on_a_member_host(lab):
    """A gateway's client cannot use the supervisor: it reaches a member host's device by its lane."""
    from .test_pychron_gateway import ask

    node_port, gateway = free_port(), free_port()
    lab.write(f"""
[hosts.pi]
address = "127.0.0.1"
port = {node_port}
[devices.valves]
driver = "sim-valves"
host = "pi"
[devices.pychron]
driver = "pychron-gateway"
conf = {{ port = {gateway}, valves = ["valves"] }}
""")
    with lab.node("pi", node_port):
        assert lab.up().returncode == 0
        deadline = time.monotonic() + 20   # the gateway reads the valves once their host's process runs
        while not ask(gateway, "GetValveStates\r").startswith("A0") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ask(gateway, "Open A\r") == "OK"
        assert lab.labctl("send", "valves", "GetValveState", "A", check=True).stdout.strip() == "open"
        assert lab.labctl("down").returncode == 0
