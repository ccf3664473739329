"""The Pychron gateway, black-box with plain sockets as a Pychron client talks (a new connection per
command, the request ending in CR, the reply read until EOF), and the valve safety model it serves:
interlocks, positive interlocks, locks kept across restarts, owners."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from labctl.actors import processes
from labctl.hardware.pychronwire import crc16

from ..conftest import free_port, kill

pytestmark = pytest.mark.integration

LAB = """
[devices.valves]
driver = "sim-valves"
[devices.valves.conf.valves]
A = {{ channel = 0, description = "bone to turbo", interlocks = ["B"] }}
B = {{ channel = 1, interlocks = ["A"] }}
C = {{ channel = 2, positive_interlocks = ["E"], owner = "10.9.9.9" }}
D = {{ channel = 3, locked = true }}
E = {{ channel = 4 }}
[devices.furnace]
driver = "sim-furnace"
[devices.pychron]
driver = "pychron-gateway"
conf = {{ port = {gateway}, valves = ["valves"], furnace = "furnace", flags = ["CO2"] }}
"""


def ask(port: int, request: bytes | str, timeout: float = 5.0) -> str:
    """One command as Pychron's EthernetCommunicator sends it: connect, write, read until EOF."""
    data = request.encode() if isinstance(request, str) else request
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply.decode()


@pytest.fixture
def gateway_lab(lab):
    lab.gateway = free_port()
    lab.write(LAB.format(gateway=lab.gateway))
    result = lab.up()
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 20   # the gateway learns the valves from the controller's lane
    while not ask(lab.gateway, "GetValveStates\r").startswith("A0,B0"):
        assert time.monotonic() < deadline, "the gateway never listed the valves"
        time.sleep(0.05)
    return lab


def test_every_valve_command_answers_as_pychron_does(gateway_lab):
    port = gateway_lab.gateway
    word = ask(port, "GetValveStates\r")
    assert word == "A0,B0,C0,D0,E0" + crc16("A0,B0,C0,D0,E0")
    assert ask(port, "GetValveLockStates\r") == "A0,B0,C0,D1,E0" + crc16("A0,B0,C0,D1,E0")
    assert ask(port, "GetValveOwners\r") == "A,B,D,E:10.9.9.9-C" + crc16("A,B,D,E:10.9.9.9-C")
    assert ask(port, "Open A\r") == "OK"
    assert ask(port, "Open A\r") == "OK"                       # already open: still OK (a retry is harmless)
    assert ask(port, "Open B\r") == "ERROR 015 : Valve B failed to actuate open"   # interlock A is open
    assert ask(port, "Close B\r") == "ok"                      # closed already, an interlock open: left alone
    assert ask(port, "Open D\r") == "ok"                       # software-locked: not moved, acceptable
    assert ask(port, "Open C\r") == "ERROR 015 : Valve C failed to actuate open"   # owned by another address
    assert ask(port, "Open Z\r") == "ERROR 004 : invalid arguments: Open Z"
    assert ask(port, "Open\r") == "ERROR 004 : invalid arguments: Open"
    assert ask(port, "GetValveState A\r") == "OK" and ask(port, "GetIndicatorState B\r") == "False"
    assert ask(port, "GetValveState Z\r") == "ERROR 005 : Z is not a registered valve name"
    assert ask(port, "GetValveLockState D\r") == "OK" and ask(port, "GetValveLockState A\r") == "False"
    assert ask(port, "GetValveLockState Z\r") == "No Response"
    import zlib
    expected = zlib.crc32(b"VALVE-ATrueFalseVALVE-DFalseTrue")
    assert ask(port, "GetStateChecksum A,Z,D\r") == str(expected)   # unknown names skipped, order kept
    assert ask(port, "Set CO2 1\r") == "OK" and ask(port, "Read CO2\r") == "1"
    assert abs(float(ask(port, "Ping CO2\r")) - time.time()) < 5
    assert ask(port, "Read spec2\r") == "ERROR 008 : device spec2 not connected"
    assert ask(port, "GetPressure bone,ig\r") == "ERROR 016 : bone ig not available"
    assert ask(port, "Bogus\r") == "" and ask(port, "open A\r") == ""   # Pychron closes without a word
    assert ask(port, "\r") == ""


def test_an_open_is_seen_by_the_indicator_50_ms_later_and_the_furnace_answers(gateway_lab):
    port = gateway_lab.gateway
    assert ask(port, "Open E\r") == "OK"
    time.sleep(0.05)   # what pyExperiment does between the two
    assert ask(port, "GetIndicatorState E\r") == "OK"
    assert ask(port, "SetSetpoint 450\r") == "OK"
    assert ask(port, "GetSetpoint\r") == "450.0"
    summary = json.loads(ask(port, "GetFurnaceSummary\r"))
    assert summary["setpoint"] == 450.0 and set(summary) == {"setpoint", "response", "output"}
    assert ask(port, "GetVersion\r") == "1.0"


def test_framed_and_json_requests(gateway_lab):
    port = gateway_lab.gateway
    body = "A0,B0,C0,D0,E0" + crc16("A0,B0,C0,D0,E0")
    assert ask(port, "{0014}GetValveStates\r\n") == "{%04X}%s" % (6 + len(body), body)
    assert ask(port, "{0013}GetValveStates\r\n").startswith("{")   # within the CRLF's slack
    assert ask(port, "{00FF}GetValveStates\r\n").startswith("{") and "ERROR 004" in ask(port, "{00FF}Open A\r\n")
    assert ask(port, '{"command": "GetValveState", "value": "A"}') == "False"
    assert ask(port, '{"command": "Open", "value": "E"}') == "OK"


def test_conflicting_opens_of_interlocked_valves_exactly_one_wins(gateway_lab):
    port = gateway_lab.gateway
    for _ in range(10):
        assert ask(port, "Close A\r") in ("OK", "ok") and ask(port, "Close B\r") in ("OK", "ok")
        replies, barrier = {}, threading.Barrier(2)

        def open_(valve):
            barrier.wait()
            replies[valve] = ask(port, f"Open {valve}\r")

        threads = [threading.Thread(target=open_, args=(v,)) for v in ("A", "B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(replies.values()) == ["ERROR 015 : Valve %s failed to actuate open" % v
                                            for v in "AB" if replies[v] != "OK"] + ["OK"], replies
        states = ask(port, "GetValveStates\r")
        assert states.startswith(("A1,B0", "A0,B1")), states


def test_garbage_idle_oversize_and_200_clients_at_once(gateway_lab):
    port = gateway_lab.gateway
    assert ask(port, b"\xff\xfe\x00garbage\r") == ""
    assert ask(port, b"A" * (70 << 10)).startswith("ERROR 004")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
        began = time.monotonic()
        assert idle.recv(100) == b""        # never said anything: dropped after a few seconds
        assert time.monotonic() - began < 15
    with socket.create_connection(("127.0.0.1", port), timeout=30) as half:
        half.sendall(b"GetValveSt")         # no terminator: answered (as Pychron does) or dropped, never held
        half.recv(100)
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(200)]
    began = time.monotonic()
    for sock in sockets:
        sock.sendall(b"GetValveStates\r")
    replies = []
    for sock in sockets:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        replies.append(data.decode())
        sock.close()
    assert all(r.startswith("A0,B0") for r in replies) and time.monotonic() - began < 15


def test_locks_outlive_the_device_and_the_lab_and_refusals_are_events(gateway_lab):
    lab = gateway_lab
    assert lab.labctl("send", "valves", "LockValve", "E").returncode == 0
    assert lab.labctl("send", "valves", "UnlockValve", "D").returncode == 0
    pid = lab.pids()["valves"]
    kill(pid)
    lab.wait_for(lambda s: any(d["name"] == "valves" and d["state"] == "running" and d["pid"] != pid
                               for d in s["devices"]), what="valves restarted")
    locks = json.loads(lab.labctl("send", "valves", "Call", "get_locks", "--json").stdout)["value"]
    assert locks == {"A": False, "B": False, "C": False, "D": False, "E": True}
    assert lab.labctl("down").returncode == 0 and processes.wait_port_free(lab.port, timeout=5)
    assert lab.up().returncode == 0
    locks = json.loads(lab.labctl("send", "valves", "Call", "get_locks", "--json").stdout)["value"]
    assert locks["E"] is True and locks["D"] is False
    result = lab.labctl("send", "valves", "OpenValve", "A")
    assert result.returncode == 0
    refused = lab.labctl("send", "valves", "OpenValve", "B", "--json")
    assert refused.returncode == 1 and "interlock A is open" in refused.stdout
    events = [json.loads(line) for line in lab.labctl("events", "--json").stdout.splitlines()]
    assert any(e["kind"] == "valve_refused" and e["detail"]["valve"] == "B" and "interlock A" in e["detail"]["reason"]
               for e in events), events[-5:]


def test_check_refuses_an_interlock_on_no_valve(lab):
    lab.write("""
[devices.valves]
driver = "sim-valves"
[devices.valves.conf.valves]
A = { channel = 0, interlocks = ["Q"] }
""")
    result = lab.labctl("check", lab.config)
    assert result.returncode == 1 and "devices.valves.conf.valves" in result.stderr + result.stdout
    assert "interlocks names Q" in result.stderr + result.stdout


def test_scripts_count_a_locked_valve_as_done_and_name_the_interlock_that_refused(gateway_lab):
    lab = gateway_lab
    script = lab.dir / "pump.py"
    script.write_text('open("D")\ninfo("after the locked one")\nopen("bone to turbo")\nopen("B")\n')
    result = lab.labctl("run", script)
    assert "open valves:D: locked, not moved" in result.stderr
    assert "after the locked one" in result.stderr            # the script went on
    assert result.returncode == 1 and "interlock A is open" in result.stderr   # and stopped at B, saying why
    assert 'line 4' in result.stderr


def test_the_pychron_valves_driver_drives_another_labs_gateway(gateway_lab, tmp_path):
    from ..conftest import Lab

    first, port = gateway_lab, gateway_lab.gateway
    (tmp_path / "second").mkdir()
    second = Lab(tmp_path / "second")
    second.write(f"""
[devices.box]
driver = "pychron-valves"
conf = {{ host = "127.0.0.1", port = {port}, valves = ["A", "B", "C", "D", "E"] }}
[devices.furnace]
driver = "pychron-furnace"
conf = {{ host = "127.0.0.1", port = {port} }}
""", name="second")
    try:
        assert second.up().returncode == 0
        assert second.labctl("send", "box", "OpenValve", "E").returncode == 0
        assert ask(port, "GetIndicatorState E\r") == "OK"                       # the first lab's valve moved
        assert json.loads(second.labctl("send", "box", "GetValveState", "E", "--json").stdout)["value"] == "open"
        assert second.labctl("send", "box", "OpenValve", "A").returncode == 0
        refused = second.labctl("send", "box", "OpenValve", "B")               # the first lab's interlock holds
        assert refused.returncode == 1 and "ERROR 015" in refused.stderr
        assert ask(port, "GetIndicatorState B\r") == "False"
        assert second.labctl("send", "furnace", "SetSetpoint", "321").returncode == 0
        assert first.labctl("send", "furnace", "GetSetpoint", "--json").stdout.count("321") == 1
    finally:
        second.labctl("down")
        assert processes.wait_gone(second.leftovers(), 5.0) == set()


def test_interlocks_across_controllers_of_one_process_never_both_pass(lab, client_for):
    lab.write("""
[devices.valves]
driver = "sim-valves"
[devices.valves.conf.valves]
A = { channel = 0, interlocks = ["pipettes:P"] }
[devices.pipettes]
driver = "sim-valves"
[devices.pipettes.conf.valves]
P = { channel = 0, interlocks = ["valves:A"] }
[groups.line]
devices = ["valves", "pipettes"]
""")
    assert lab.up().returncode == 0
    from labctl.actors.errors import DriverError
    from labctl.actors.messages import CloseValve, GetValveState, OpenValve

    first, second = client_for(lab), client_for(lab, lane="off")   # one by its lane, one through the supervisor
    for _ in range(15):
        first.send("valves", CloseValve("A"))
        first.send("pipettes", CloseValve("P"))
        outcomes, barrier = {}, threading.Barrier(2)

        def open_(client, device, valve):
            barrier.wait()
            try:
                outcomes[valve] = client.send(device, OpenValve(valve))
            except DriverError as exc:
                outcomes[valve] = exc.error_type

        threads = [threading.Thread(target=open_, args=(first, "valves", "A")),
                   threading.Thread(target=open_, args=(second, "pipettes", "P"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(outcomes.values()) == ["InterlockRefused", "open"], outcomes
        states = [first.send("valves", GetValveState("A")), first.send("pipettes", GetValveState("P"))]
        assert sorted(states) == ["closed", "open"]


def test_changes_made_by_other_clients_reach_the_gateways_answers(gateway_lab, client_for):
    from labctl.actors.messages import LockValve, OpenValve

    port, client = gateway_lab.gateway, client_for(gateway_lab)
    client.send("valves", OpenValve("E"))
    client.send("valves", LockValve("A"))
    deadline = time.monotonic() + 5
    while not (ask(port, "GetIndicatorState E\r") == "OK" and ask(port, "GetValveLockState A\r") == "OK"):
        assert time.monotonic() < deadline, "the gateway never learnt of the other client's changes"
        time.sleep(0.01)
    kill(gateway_lab.pids()["valves"])   # a new process of the controller: followed again, from a full read
    gateway_lab.wait_for(lambda s: any(d["name"] == "valves" and d["state"] == "running" for d in s["devices"]))
    client.send("valves", OpenValve("B"))
    deadline = time.monotonic() + 10
    while ask(port, "GetIndicatorState B\r") != "OK":
        assert time.monotonic() < deadline, "the gateway stopped following the restarted controller"
        time.sleep(0.02)


def test_no_request_stops_the_gateway(gateway_lab):
    port = gateway_lab.gateway
    assert ask(port, b"[" * 60000 + b"\n") == ""                              # JSON nested past Python's limit
    assert ask(port, "{FFFF}Open " + "x" * (0xFFFF - 11)) == ""               # its answer is too long to frame
    assert ask(port, "GetValveStates\r").startswith("A0,B0")                 # still serving
