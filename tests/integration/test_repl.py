"""`labctl repl` driven through a pseudo-terminal, as a person would: keys in, screen out."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time

import pytest

from labctl.actors.errors import DeviceUnavailable
from labctl.bin.repl import LabCompleter

pytestmark = pytest.mark.integration

REPL_LAB = """
[devices.valves]
driver = "sim-valves"
[devices.valves.conf.valves]
A = { channel = 0, description = "bone to turbo" }
B = { channel = 1, description = "turbo to ion pump" }

[devices.furnace]
driver = "sim-furnace"

[devices.camera]
driver = "sim-camera"
conf = { shape = [16, 16], simulate_exposure = false }
"""

# Terminal control sequences (colours, cursor moves, bracketed paste, titles) and carriage returns:
# what is left is the text a person reads.
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]|[\r\x07\x08]")


class Terminal:
    """A program on a pseudo-terminal: type keys, wait for text to appear on the screen."""

    def __init__(self, argv: list[str], cwd, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.raw = b""
        self.seen = 0  # what expect() has already matched: later expects look after it

    @property
    def screen(self) -> str:
        # "go to the start of the line and clear it" starts a new line here, as it does on a screen
        return CONTROL.sub("", self.raw.decode(errors="replace").replace("\r\x1b[K", "\n"))

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, pattern: str, timeout: float = 30.0) -> None:
        """Wait until `pattern` shows after what was matched before (generous timeout: hangs only)."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern, re.M).search(self.screen, self.seen)
            if match:
                self.seen = match.end()
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not on the screen:\n{self.screen[self.seen:]}\nRAW {self.raw[-300:]!r}")
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    self.raw += os.read(self.master, 65536)
                except OSError:  # the program ended and closed the terminal
                    raise AssertionError(f"{pattern!r} never came:\n{self.screen[self.seen:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(lab):
    """Start `labctl repl ARGS` on a pseudo-terminal, with its history in the test's folder."""
    started = []

    def start(*args: str, **env: str) -> Terminal:
        term = Terminal([*lab.labctl_argv(), "repl", *args], lab.dir,
                        {**lab.env, "TERM": "xterm", "LABCTL_HISTORY": str(lab.dir / "history"), **env})
        started.append(term)
        return term

    yield start
    for term in started:
        term.close()


def test_plain_repl_drives_the_lab_completes_names_and_prints_events_above_the_prompt(lab, terminal):
    lab.write(REPL_LAB)
    assert lab.up().returncode == 0
    began = time.monotonic()
    repl = terminal("--plain")
    repl.expect(rf"^labctl repl: lab test on port {lab.port}$")
    repl.expect(r"^devices: valves, furnace, camera$")
    repl.expect(r"^>>> $")
    started_s = time.monotonic() - began

    def enter(keys: str, *screen: str, prompt: bool = True) -> None:
        if prompt:  # keys typed before the prompt would be echoed twice, by the terminal and by readline
            repl.expect(r"^>>> $")
        repl.type(keys)
        for pattern in screen:
            repl.expect(pattern)

    enter('open("A")\n', prompt=False)
    repl.expect(r"^'open'$")  # the reply, then the lab's event (held back: never inside the reply)
    repl.expect(r"^\[\d\d:\d\d:\d\d\] valves: valve \(valve=A state=open\)$")
    enter('valves.get_state("A"), is_open("bone to turbo")\n', r"^\('open', True\)$")

    enter("furn\t\n", r"^<furnace: SimFurnace>$")                     # a device's name
    enter('send(valv\t, CloseV\t"A"))\n', r"^'closed'$")                # a device and a message class
    # Replies come straight from the valve's process, ahead of the event the supervisor relays: let
    # the event land before typing on, so that it is not drawn in the middle of the next answer.
    repl.expect(r"^\[\d\d:\d\d:\d\d\] valves: valve \(valve=A state=closed\)$")
    enter('valves.is_lo\t"A")\n', r"^False$")                          # a device's method
    enter('is_closed("B\t)\n', r"^True$")                              # a valve, inside quotes

    enter("1 + ", r"1 \+ $")                                           # half a line typed when a device crashes
    os.kill(lab.pids()["camera"], 9)
    repl.expect(r"\[\d\d:\d\d:\d\d\] camera: crashed \(cause=killed by SIGKILL pid=\d+\)\n>>> 1 \+ $")
    # (an event landing in the instant Enter is pressed may draw a spare prompt before the answer)
    enter("2\n", r"^(>>> )?3$", prompt=False)
    lab.wait_for(lambda s: all(d["state"] == "running" for d in s["devices"]), what="camera restarted")

    enter("x = (", r"x = \($")                  # Ctrl-C at the prompt drops the line, as in Python
    repl.proc.send_signal(signal.SIGINT)
    repl.expect(r"^KeyboardInterrupt\n>>> $")
    enter("x = 5\n", prompt=False)

    enter("\x04")                                                     # Ctrl-D
    assert repl.proc.wait(timeout=30) == 0
    history = (lab.dir / "history").read_text()
    assert 'open("A")' in history and "1 + 2" in history and "x = 5" in history
    assert lab.labctl("send", "valves", "GetValveState", "A").stdout.strip() == "closed"  # the lab runs on
    assert started_s < 10, f"the REPL took {started_s:.1f} s to start"


def test_ipython_repl_has_the_same_names_and_exits_cleanly(lab, terminal):
    lab.write(REPL_LAB)
    assert lab.up().returncode == 0
    repl = terminal(PROMPT_TOOLKIT_NO_CPR="1", IPYTHONDIR=str(lab.dir / "ipython"))
    repl.expect(rf"^labctl repl: lab test on port {lab.port}$")
    repl.expect(r"In \[1\]: ")
    repl.type('open("B")\r')                  # the valve helper, not IPython's own open()
    repl.expect(r"Out\[1\]: 'open'\n")
    # above the prompt (prompt_toolkit moves the cursor up over the prompt it redraws after it)
    repl.expect(r"\[\d\d:\d\d:\d\d\] valves: valve \(valve=B state=open\)$")
    repl.expect(r"In \[2\]: ")
    repl.type("furnace.get_setp\t")
    repl.expect(r"furnace\.get_setpoint")
    repl.type("()\r")
    repl.expect(r"Out\[2\]: 20\.0")
    repl.expect(r"In \[3\]: ")
    repl.type("exit()\r")
    assert repl.proc.wait(timeout=30) == 0
    assert lab.labctl("send", "valves", "GetValveState", "B").stdout.strip() == "open"


def test_completion_survives_a_device_that_is_not_running():
    class Lab:
        """Like the client: a failed device cannot be described, and getattr says so."""

        def __dir__(self):
            return ["valves", "broken", "status"]

        def __getattr__(self, name):
            if name == "broken":
                raise DeviceUnavailable("broken has failed", name, state="failed")
            return object()

    completer = LabCompleter({"lab": Lab()}, [])
    assert completer.attr_matches("lab.") == ["lab.broken", "lab.status", "lab.valves"]
    assert completer.attr_matches("lab.va") == ["lab.valves"]
