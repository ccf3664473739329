"""The ZMQ status channel: a subscriber sees a valve change at once, heartbeats keep coming, and the
REP socket answers everything (it never sticks on an unknown request)."""

from __future__ import annotations

import json
import time

import pytest

from ..conftest import free_port, kill

zmq = pytest.importorskip("zmq")   # in the test extra: CI always has it
pytestmark = pytest.mark.integration

LAB = """
[devices.valves]
driver = "sim-valves"
[devices.furnace]
driver = "sim-furnace"
[devices.status]
driver = "zmq-status"
conf = {{ port = {port}, devices = ["valves"], temperatures = ["furnace"], heartbeat_s = 0.5, poll_s = 0.2 }}
"""


def receive(sub, topic: str, timeout: float = 10.0, where=lambda payload: True) -> dict:
    """The next message on `topic` that `where` accepts (others are passed over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            name, _, payload = sub.recv_string().partition(" ")
            data = json.loads(payload)
            if name == topic and where(data):
                return data
    raise AssertionError(f"no {topic} message within {timeout} s")


@pytest.fixture
def status_lab(lab):
    lab.zmq = free_port()
    lab.write(LAB.format(port=lab.zmq))
    result = lab.up()
    assert result.returncode == 0, result.stderr
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, "")
    sub.connect(f"tcp://127.0.0.1:{lab.zmq}")
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(f"tcp://127.0.0.1:{lab.zmq + 1}")
    lab.sub, lab.req = sub, req
    # Heartbeats repeat (a PUB drops what it sent before a subscriber joined): one saying the valves
    # are followed means every later change reaches this subscriber.
    receive(sub, "dashboard", where=lambda p: p["devices"] == {"valves": True})
    yield lab
    sub.close()
    req.close()
    context.term()


def test_a_subscriber_sees_a_valve_change_at_once_and_heartbeats_and_temperatures(status_lab):
    lab = status_lab
    heartbeat = receive(lab.sub, "dashboard")
    assert heartbeat["kind"] == "heartbeat" and heartbeat["devices"] == {"valves": True}
    from labctl.actors.client import connect
    from labctl.actors.messages import OpenValve

    with connect(lab.port, key_file=lab.key_file) as client:
        sent = time.time()
        client.send("valves", OpenValve("C"))
        change = receive(lab.sub, "valve", where=lambda p: p["valve"] == "C")
    assert change == {"device": "valves", "kind": "valve", "valve": "C", "state": "open", "ts": change["ts"]}
    assert change["ts"] - sent < 0.05      # published by the valve's own process as it happened
    assert receive(lab.sub, "temperature")["device"] == "furnace"


def test_the_rep_socket_answers_everything_and_never_sticks(status_lab):
    req = status_lab.req
    for request, check in [("ping", lambda r: r == "echo"),
                           ("nonsense", lambda r: r.startswith("error")),
                           ("config_json", lambda r: json.loads(r)["pub"] == status_lab.zmq),
                           ("", lambda r: r.startswith("error")),
                           ("status", lambda r: json.loads(r)["connected"] == {"valves": True})]:
        req.send_string(request)
        reply = req.recv_string()
        assert check(reply), (request, reply)


def test_a_lost_device_is_announced_and_its_return_too(status_lab):
    lab = status_lab
    pid = lab.pids()["valves"]
    kill(pid)
    assert receive(lab.sub, "lifecycle", where=lambda p: p["kind"] == "lost")["device"] == "valves"
    assert receive(lab.sub, "lifecycle", where=lambda p: p["kind"] == "running")["device"] == "valves"
