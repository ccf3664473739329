"""The Pychron valve and furnace drivers against a stand-in Pychron box on loopback.

The stand-in is this test's own, written from PYCHRON.md and sharing no code with the drivers (not
even the crc16): one request per TCP connection, read up to CR/LF or EOF, the reply as bare text,
then the connection closed.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import types
from importlib.metadata import entry_points

import pytest

from labctl.hardware.errors import (ChecksumError, GarbledReply, HardwareError, LinkError, OutOfRange, Rejected,
                                    ValveLocked)
from labctl.hardware.pychron_boxes import PychronFurnace, PychronValves
from labctl.hardware.pychronwire import CrcMismatch

QUICK_S = 0.2     # the drivers' timeout where a test expects silence: short, so that it is found fast
PATIENT_S = 5.0   # where a reply is expected: generous, only to catch a hang


def modbus_crc(text: str) -> str:
    """The stand-in's own crc16: Modbus CRC-16, low byte first (PYCHRON.md)."""
    crc = 0xFFFF
    for byte in text.encode():
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc).hex()


class StandInBox:
    """A Pychron valve box and furPi in one: valves by name, a furnace, and faults to inject."""

    def __init__(self, valves=("A", "B", "C"), framed=False):
        self.valves = {name: False for name in valves}
        self.locked: set[str] = set()
        self.refuse: set[str] = set()       # valves whose actuation fails (ERROR 015)
        self.corrupt_crc = False
        self.drop = 0                       # connections to reset at once, without reading
        self.hang = False                   # read requests, never answer
        self.framed = framed
        self.setpoint, self.temperature, self.output = 20.0, 21.5, 0.0
        self.requests: list[bytes] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.release = threading.Event()    # ends hanging connections at teardown

        box = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                box.serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()  # joins the connection threads
        self.thread.join(PATIENT_S)

    def serve(self, conn):
        with self.lock:
            self.connections += 1
            dropping = self.drop > 0
            self.drop -= dropping
        if dropping:
            # A reset, not a close: the client must see a broken connection, not an empty answer.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        conn.settimeout(PATIENT_S)
        data = b""
        while not data.endswith((b"\r", b"\n")):
            chunk = conn.recv(1024)
            if not chunk:
                break
            data += chunk
        with self.lock:
            self.requests.append(data)
        if self.hang:
            self.release.wait(PATIENT_S * 4)
            return
        text = data.decode().strip()
        framed = self.framed and text.startswith("{")
        if framed:
            assert int(text[1:5], 16) == len(text), f"bad frame {text!r}"
            text = text[6:]
        reply = self.answer(text)
        if reply is not None:
            if framed:
                reply = "{%04X}%s" % (len(reply.encode()) + 6, reply)
            conn.sendall(reply.encode())
        # Returning closes the connection: that is how the client knows the reply is complete.

    def answer(self, text):
        command, _, arg = text.partition(" ")
        if command in ("Open", "Close"):
            if arg not in self.valves:
                return f"ERROR 004 : invalid arguments: {command} {arg}"
            if arg in self.locked:
                return "ok"
            if arg in self.refuse:
                return f"ERROR 015 : Valve {arg} failed to actuate {command.lower()}"
            self.valves[arg] = command == "Open"
            return "OK"
        if command == "GetValveState":
            if arg not in self.valves:
                return f"ERROR 005 : {arg} is not a registered valve name"
            return "OK" if self.valves[arg] else "False"
        if command == "GetValveStates":
            body = ",".join(f"{name}{int(is_open)}" for name, is_open in self.valves.items())
            crc = modbus_crc(body)
            if self.corrupt_crc:
                crc = crc[:-1] + ("0" if crc[-1] != "0" else "1")
            return body + crc
        if command == "GetTemperature":
            return str(self.temperature)
        if command == "GetSetpoint":
            return str(self.setpoint)
        if command == "GetPercentOutput":
            return str(self.output)
        if command == "SetSetpoint":
            self.setpoint = float(arg)
            return "OK"
        return None  # Pychron's server closes without a word on a command it does not know

    def commands(self):
        with self.lock:
            return [request.decode() for request in self.requests]


@pytest.fixture
def box():
    stand_in = StandInBox()
    yield stand_in
    stand_in.close()


@pytest.fixture
def valves(box):
    driver = PychronValves("127.0.0.1", valves=["A", "B", "C"], port=box.port, timeout=PATIENT_S)
    yield driver
    driver.shutdown()


@pytest.fixture
def furnace(box):
    driver = PychronFurnace("127.0.0.1", port=box.port, timeout=PATIENT_S)
    yield driver
    driver.shutdown()


def free_port() -> int:
    """A loopback port that nothing listens on (taken and let go at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- valves

def test_open_close_and_state(valves, box):
    assert valves.get_state("A") == "closed"
    assert valves.open("A") == "open"
    assert box.valves == {"A": True, "B": False, "C": False}
    assert valves.get_state("A") == "open"
    assert valves.close("A") == "closed"
    assert box.valves["A"] is False
    assert valves.get_state("A") == "closed"


def test_each_command_is_one_connection_with_a_cr(valves, box):
    valves.open("B")
    valves.get_state("B")
    assert box.requests == [b"Open B\r", b"GetValveState B\r"]
    assert box.connections == 2


def test_get_states_uses_one_crc_checked_word(valves, box):
    box.valves["B"] = True
    assert valves.get_states() == {"A": "closed", "B": "open", "C": "closed"}
    assert box.commands() == ["GetValveStates\r"]


def test_a_state_word_with_a_wrong_crc_is_refused(valves, box):
    box.valves["C"] = True
    box.corrupt_crc = True
    with pytest.raises(CrcMismatch, match="GetValveStates reply 'A0,B0,C1") as caught:
        valves.get_states()
    assert isinstance(caught.value, ChecksumError)
    assert box.connections == 1  # an answer that fails its crc is not retried


def test_a_valve_the_box_does_not_report_is_not_guessed(box):
    with PychronValvesFor(box, ["A", "Z"]) as driver:
        with pytest.raises(GarbledReply, match="does not report Z"):
            driver.get_states()


def test_a_refusal_becomes_an_error_naming_the_reply(valves, box):
    box.refuse.add("C")
    with pytest.raises(Rejected) as caught:
        valves.open("C")
    assert "ERROR 015 : Valve C failed to actuate open" in str(caught.value)
    assert "'Open C'" in str(caught.value)
    assert box.valves["C"] is False
    assert box.connections == 1  # a refusal is an answer: never re-sent


def test_a_valve_unknown_to_the_box_is_refused_with_its_words(box):
    with PychronValvesFor(box, ["A", "Z"]) as driver:
        with pytest.raises(Rejected, match="ERROR 004 : invalid arguments: Open Z"):
            driver.open("Z")
        with pytest.raises(Rejected, match="ERROR 005 : Z is not a registered valve name"):
            driver.get_state("Z")  # not taken for "closed"


def test_a_valve_locked_on_the_box_answers_ok_which_is_accepted(valves, box):
    box.locked.add("A")
    assert valves.open("A") == "open"  # `ok`: nothing done, but acceptable, as Pychron's clients take it
    assert box.valves["A"] is False


def test_a_valve_locked_in_labctl_never_reaches_the_box(valves, box):
    valves.lock("A")
    with pytest.raises(ValveLocked):
        valves.open("A")
    assert box.connections == 0


def test_no_reply_at_all_is_not_success(box):
    # A box that does not know the command closes without a word.
    with PychronValvesFor(box, ["A"]) as driver:
        box.answer = lambda text: None
        with pytest.raises(Rejected, match="without a reply"):
            driver.open("A")
        with pytest.raises(Rejected, match="without a reply"):
            driver.get_state("A")
    assert box.connections == 2  # an empty answer is an answer, not a dropped connection


def test_a_dropped_connection_is_retried(valves, box):
    box.drop = 1
    assert valves.open("A") == "open"
    assert box.connections == 2
    assert box.commands() == ["Open A\r"]  # the dropped one never read its request
    assert box.valves["A"] is True


def test_retries_stop_after_retries_plus_one_tries_with_a_link_error(box):
    box.drop = 100
    with PychronValvesFor(box, ["A"], retries=2) as driver:
        with pytest.raises(LinkError, match=f"127.0.0.1:{box.port}: no answer to 'Open A' after 3 tries"):
            driver.open("A")
    assert box.connections == 3
    assert box.valves["A"] is False


def test_a_box_that_is_down_is_a_link_error():
    port = free_port()
    driver = PychronValves("127.0.0.1", valves=["A"], port=port, timeout=PATIENT_S)
    with pytest.raises(LinkError, match=f"127.0.0.1:{port}.*after 3 tries.*ConnectionRefusedError"):
        driver.open("A")
    with pytest.raises(LinkError):
        driver.get_states()
    with pytest.raises(LinkError):
        driver.reconnect()  # still down: the device stays degraded


def test_a_box_that_never_answers_is_a_link_error_after_its_timeouts(box):
    box.hang = True
    with PychronValvesFor(box, ["A"], timeout=QUICK_S, retries=1) as driver:
        with pytest.raises(LinkError, match=r"after 2 tries: no reply within 0.2 s"):
            driver.get_state("A")
    assert box.commands() == ["GetValveState A\r"] * 2


@pytest.mark.timeout(60)
def test_a_box_that_accepts_no_connection_is_a_link_error_after_its_timeouts():
    # A listener whose accept queue is full: the kernel drops new connections' SYNs, so connect()
    # waits as it does for a host that is off the network.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            driver = PychronValves("127.0.0.1", valves=["A"], port=port, timeout=QUICK_S, retries=1)
            with pytest.raises(LinkError, match="after 2 tries"):   # connect or reply timed out: both mean no box
                driver.open("A")
        finally:
            for filler in fillers:
                filler.close()


class FakeSocket:
    """A connected socket that records what is written and answers `reply` then EOF."""

    def __init__(self, reply: bytes, writes: list):
        self.chunks, self.writes = [reply, b""], writes

    def settimeout(self, seconds):
        assert seconds is not None and 0 < seconds <= PATIENT_S

    def sendall(self, data):
        self.writes.append(bytes(data))

    send = sendall

    def recv(self, size):
        return self.chunks.pop(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


def test_the_request_goes_in_one_write(monkeypatch):
    import labctl.hardware.pychron_boxes as module
    writes, connections = [], []

    def connect(address, timeout=None):
        connections.append((address, timeout))
        return FakeSocket(b"OK", writes)

    monkeypatch.setattr(module, "socket", types.SimpleNamespace(create_connection=connect))  # this module only
    driver = PychronValves("box.example", valves=["A"], timeout=PATIENT_S)
    assert driver.open("A") == "open"
    assert writes == [b"Open A\r"]
    assert connections == [(("box.example", 1061), PATIENT_S)]


def test_retries_wait_25_ms_between_tries(monkeypatch):
    import labctl.hardware.pychron_boxes as module
    sleeps = []

    def refuse(address, timeout=None):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(module, "socket", types.SimpleNamespace(create_connection=refuse))
    monkeypatch.setattr(module.time, "sleep", sleeps.append)
    driver = PychronValves("box.example", valves=["A"], retries=3)
    with pytest.raises(LinkError, match="box.example:1061: no answer to 'Open A' after 4 tries"):
        driver.open("A")
    assert sleeps == [0.025] * 3


def test_reconnect_succeeds_once_the_box_answers_again(valves, box):
    box.drop = 4
    with pytest.raises(LinkError):
        valves.open("A")
    valves.reconnect()
    assert box.commands() == ["GetValveState A\r"]
    assert valves.open("A") == "open"


def test_framed_requests_and_replies(box):
    box.framed = True
    with PychronValvesFor(box, ["A", "B"], framed=True) as driver:
        assert driver.open("B") == "open"
        assert driver.get_state("B") == "open"
        assert driver.get_states() == {"A": "closed", "B": "open"}
    assert box.requests[0] == b"{000C}Open B\r"


def test_a_badly_framed_reply_is_garbled(box):
    with PychronValvesFor(box, ["A"], framed=True) as driver:
        box.answer = lambda text: "{0009}OK"  # one byte too many declared
        with pytest.raises(GarbledReply, match="badly framed reply"):
            driver.open("A")


def test_an_endless_reply_is_cut_off(box):
    box.answer = lambda text: "1" * 200_000
    with PychronValvesFor(box, ["A"]) as driver:
        with pytest.raises(GarbledReply, match="longer than"):
            driver.get_state("A")


def test_valves_table_with_descriptions(box):
    with PychronValvesFor(box, {"A": {"channel": 0, "description": "bone to turbo"},
                                "B": {"channel": 1, "description": "getter"}}) as driver:
        assert driver.valve_names() == ["A", "B"]
        assert driver.describe_valves() == {"A": "bone to turbo", "B": "getter"}
        assert driver.status() == {"states": {"A": "closed", "B": "closed"}, "locked": [],
                                   "host": "127.0.0.1", "port": box.port}


@pytest.mark.parametrize("conf, error", [
    ({"valves": ["A B"]}, HardwareError), ({"valves": ["A,B"]}, HardwareError), ({"valves": ["A\r"]}, HardwareError),
    ({"valves": []}, HardwareError), ({"port": 0}, OutOfRange), ({"port": 70000}, OutOfRange),
    ({"timeout": 0}, OutOfRange), ({"timeout": "1"}, OutOfRange), ({"retries": -1}, OutOfRange),
    ({"framed": "yes"}, HardwareError), ({"host": ""}, OutOfRange),
])
def test_bad_configurations_are_refused(conf, error):
    with pytest.raises(error):
        PychronValves(**{"host": "127.0.0.1", "valves": ["A"], **conf})


# ---------------------------------------------------------------- furnace

def test_furnace_commands(furnace, box):
    assert furnace.read_temperature() == 21.5
    assert furnace.get_setpoint() == 20.0
    assert furnace.set_setpoint(500) == 500
    assert box.setpoint == 500.0
    assert furnace.get_setpoint() == 500.0
    box.output = 42.5
    assert furnace.get_output() == 42.5
    assert box.commands() == ["GetTemperature\r", "GetSetpoint\r", "SetSetpoint 500.0\r", "GetSetpoint\r",
                              "GetPercentOutput\r"]


def test_furnace_setpoint_outside_its_limits_never_reaches_the_box(box):
    driver = PychronFurnace("127.0.0.1", port=box.port, timeout=PATIENT_S, max_setpoint=1000)
    with pytest.raises(OutOfRange):
        driver.set_setpoint(1500)
    assert box.connections == 0


def test_furnace_refusals_and_non_numbers(furnace, box):
    box.answer = lambda text: "ERROR 008 : device furnace not connected"
    with pytest.raises(Rejected, match="refused 'SetSetpoint 300.0': 'ERROR 008 : device furnace not connected'"):
        furnace.set_setpoint(300)
    with pytest.raises(Rejected, match="'GetTemperature' with 'ERROR 008 : device furnace not connected'"):
        furnace.read_temperature()
    box.answer = lambda text: "No Response"
    with pytest.raises(Rejected, match="No Response"):
        furnace.get_output()
    box.answer = lambda text: "hot"
    with pytest.raises(GarbledReply, match="'hot', not a number"):
        furnace.get_setpoint()


def test_furnace_retries_and_link_error(box):
    box.drop = 1
    driver = PychronFurnace("127.0.0.1", port=box.port, timeout=PATIENT_S, retries=1)
    assert driver.read_temperature() == 21.5
    box.drop = 2
    with pytest.raises(LinkError, match="after 2 tries"):
        driver.read_temperature()
    driver.reconnect()


def test_default_ports_are_pyvalves_and_furpis():
    assert PychronValves("127.0.0.1", valves=["A"])._link.port == 1061
    assert PychronFurnace("127.0.0.1")._link.port == 4567


# ---------------------------------------------------------------- registration

def test_drivers_are_registered_by_short_name():
    registered = {ep.name: ep for ep in entry_points(group="labctl.drivers")}
    assert registered["pychron-valves"].load() is PychronValves
    assert registered["pychron-furnace"].load() is PychronFurnace


class PychronValvesFor(PychronValves):
    """A valve driver on the stand-in's port, usable in `with` (shut down at the end)."""

    def __init__(self, box, valves, **conf):
        super().__init__("127.0.0.1", valves=valves, port=box.port, **{"timeout": PATIENT_S, **conf})

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
