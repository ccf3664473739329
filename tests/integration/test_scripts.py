"""`labctl run SCRIPT.py` against real labs: helpers, logs, tracebacks, names checked before
anything is sent, dry runs, and Ctrl-C that never leaves a request half-done."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.integration

LINE_LAB = """
[devices.valves]
driver = "labtest_drivers:Recorder"
[devices.valves.conf]
journal = "{journal}"
move_time_s = {move_time_s}
[devices.valves.conf.valves]
A = {{ channel = 0, description = "bone to turbo" }}
B = {{ channel = 1, description = "turbo to ion pump" }}
C = {{ channel = 2, description = "getter inlet" }}

[devices.pipettes]
driver = "sim-valves"
[devices.pipettes.conf.valves]
C = {{ channel = 0, description = "air pipette" }}
P = {{ channel = 1, description = "pipette out" }}

[devices.furnace]
driver = "sim-furnace"
"""

STAMP = r"^\d\d:\d\d:\d\d\.\d{3} "


def start_line_lab(lab, move_time_s: float = 0.0) -> Path:
    """The lab these tests drive; returns the journal where its valves record every actuation."""
    journal = lab.dir / "journal.txt"
    lab.write(LINE_LAB.format(journal=journal, move_time_s=move_time_s))
    up = lab.up()
    assert up.returncode == 0, up.stderr
    return journal


def script(lab, name: str, body: str) -> Path:
    path = lab.dir / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def actuations(journal: Path) -> list[str]:
    """'A 1', 'B 0', ...: every valve the driver moved, in order."""
    return [" ".join(line.split()[1:3]) for line in journal.read_text().splitlines() if line.startswith("set ")]


def valve_states(lab) -> dict[str, str]:
    return json.loads(lab.labctl("send", "valves", "GetValveStates", "--json", check=True).stdout)["value"]


def valve_events(lab) -> list[dict]:
    lines = lab.labctl("events", "--json", check=True).stdout.splitlines()
    return [e for e in map(json.loads, lines) if e["kind"] == "valve"]


def test_a_script_drives_the_lab_logs_each_action_and_fails_at_its_own_line(lab):
    journal = start_line_lab(lab)
    ok = script(lab, "pump.py", """
        import sys
        print("args", argv, sys.argv[1:])
        open("bone to turbo")
        info("pumping the bone")
        assert is_open("A") and is_closed("valves:B")
        lab.valves.open("B")
        print("setpoint", lab.send("furnace", SetSetpoint(250)))
        wait_until(lambda: is_open("B"), timeout=30, poll=0.01)
        sleep(0.01)
        lock("pipettes:C")
        unlock("air pipette")
        close("B")
        print("done")
    """)
    run = lab.labctl("run", ok, "--", "--dose", "3")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["args ['--dose', '3'] ['--dose', '3']", "setpoint 250.0", "done"]
    log = run.stderr.splitlines()
    for action in (r"run pump.py --dose 3 on port \d+", r"open valves:A \(bone to turbo\): open",
                   "pumping the bone", r"send valves OpenValve\(valve='B'\): 'open'",
                   r"wait until condition at pump.py:8 \(at most 30 s\)", "sleep 0.01 s",
                   r"lock pipettes:C \(air pipette\): locked", r"unlock pipettes:C \(air pipette\): unlocked",
                   r"close valves:B \(turbo to ion pump\): closed", r"done in \d+\.\d s"):
        assert any(re.match(STAMP + action + "$", line) for line in log), (action, run.stderr)
    assert actuations(journal) == ["A 1", "B 1", "B 0"]
    assert valve_states(lab) == {"A": "open", "B": "closed", "C": "closed"}
    kept = (lab.log_dir / "scripts.log").read_text()
    assert "[run pump.py] open valves:A (bone to turbo): open" in kept and "[run pump.py] done in" in kept

    fails = script(lab, "fails.py", """
        def heat():
            lab.furnace.set_setpoint(99999)

        close("A")
        heat()
        open("A")
    """)
    run = lab.labctl("run", fails)
    assert run.returncode == 1
    trace = run.stderr[run.stderr.index("Traceback"):]
    assert f'File "{fails}", line 5, in <module>' in trace and f'File "{fails}", line 2, in heat' in trace
    assert "lab.furnace.set_setpoint(99999)" in trace and "DriverError: setpoint 99999 is out of range" in trace
    assert "labctl" not in trace.replace("labctl.actors.errors.DriverError", "")  # no frames of labctl itself
    assert actuations(journal)[-1] == "A 0"  # line 6 never ran

    bug = script(lab, "bug.py", "x = 1\nprint(x / 0)\n")
    run = lab.labctl("run", bug)
    assert run.returncode == 1 and f'File "{bug}", line 2, in <module>' in run.stderr
    assert run.stderr.rstrip().splitlines()[-2] == "ZeroDivisionError: division by zero"
    assert lab.labctl("run", script(lab, "quits.py", "raise SystemExit(3)\n")).returncode == 3
    broken = lab.labctl("run", script(lab, "broken.py", "open('A'\n"))
    assert broken.returncode == 1 and f'File "{lab.dir / "broken.py"}", line 1' in broken.stderr
    assert "SyntaxError" in broken.stderr and actuations(journal)[-1] == "A 0"


def test_unknown_names_are_refused_before_anything_is_sent_and_a_dry_run_sends_nothing(lab):
    journal = start_line_lab(lab)
    typos = script(lab, "typos.py", """
        open("A")
        sleep(0)
        lab.valves.close("Q")
        close("C")
        lab.furnce.set_setpoint(20)
        lab.furnace.set_setpont(20)
        close("bone to turbine")
        lab.send("valves", OpenValve("R"))
    """)
    for dry in ((), ("--dry-run",)):
        run = lab.labctl("run", typos, *dry)
        assert run.returncode == 1 and run.stdout == ""
        text = run.stderr
        assert "typos.py names what the lab does not have; nothing was sent" in text
        assert "line 3: lab.valves.close(\"Q\"): valves has no valve 'Q'; valves: A, B, C" in text
        assert "line 4: close(\"C\"): valve 'C' is ambiguous" in text
        assert "valves:C (getter inlet)" in text and "pipettes:C (air pipette)" in text
        assert "line 5: lab.furnce.set_setpoint: no device 'furnce'" in text
        assert "line 6: lab.furnace.set_setpont: furnace has no method or part 'set_setpont' " \
               "(did you mean 'set_setpoint'?)" in text
        assert "line 7: close(\"bone to turbine\"): no valve 'bone to turbine' (did you mean 'bone to turbo'?)" in text
        assert "line 8: lab.send(\"valves\", OpenValve(\"R\")): valves has no valve 'R'" in text
        assert "line 1" not in text and "line 2" not in text

    dry = script(lab, "dry.py", """
        open("A")
        print("A open?", is_open("A"), "B open?", is_open("B"))
        lab.valves.open("B")
        lab.furnace.set_setpoint(300)
        sleep(3600)
        print("waited for", wait_until(lambda: is_open("B"), timeout=3600))
        close(argv[0])
    """)
    run = lab.labctl("run", dry, "--dry-run", "--", "A")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["would send valves OpenValve(valve='A')", "A open? True B open? False",
                                       "would send valves OpenValve(valve='B')",
                                       "would send furnace SetSetpoint(value=300)", "waited for True",
                                       "would send valves CloseValve(valve='A')"]
    assert re.search(STAMP + r"\[dry run\] sleep 3600 s \(dry run: not sleeping\)$", run.stderr, re.M)
    assert re.search(STAMP + r"\[dry run\] 4 commands would have been sent; nothing was sent$", run.stderr, re.M)
    # a name computed at run time is checked when it is used; still nothing reaches the lab
    run = lab.labctl("run", dry, "--dry-run", "--", "Z")
    assert run.returncode == 1 and f'File "{dry}", line 7, in <module>' in run.stderr
    assert "UnknownValve: no valve 'Z'" in run.stderr

    example = lab.labctl("run", ROOT / "examples" / "pump_down.py", "--dry-run")
    assert example.returncode == 0, example.stderr
    assert example.stdout.splitlines() == ["would send valves CloseValve(valve='C')",
                                           "would send valves CloseValve(valve='B')",
                                           "would send valves OpenValve(valve='A')",
                                           "would send valves CloseValve(valve='A')",
                                           "would send valves OpenValve(valve='B')"]

    assert actuations(journal) == [] and valve_events(lab) == []
    assert valve_states(lab) == {"A": "closed", "B": "closed", "C": "closed"}
    assert lab.labctl("send", "furnace", "GetSetpoint").stdout.strip() == "20"
    assert not (lab.log_dir / "scripts.log").exists()  # neither refused scripts nor dry runs touch the lab's log


class Running:
    """`labctl run` in the background, its stderr read line by line as it comes."""

    def __init__(self, lab, *args: str) -> None:
        self.proc = subprocess.Popen([*lab.labctl_argv(), "run", *map(str, args)], cwd=lab.dir, env=lab.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stderr], daemon=True)
        self.reader.start()

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self.reader.join(timeout)  # it ends at end of file: every line is in the queue
        self.proc.stdout.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "".join(self.seen)


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll a condition that has no event to wait for (a driver's journal file); generous timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_ctrl_c_stops_a_script_cleanly_and_the_lab_keeps_running(lab):
    journal = start_line_lab(lab, move_time_s=1.0)  # each valve takes a second to move
    pids = lab.pids()

    # in the middle of a sleep: stops at once
    run = Running(lab, script(lab, "sleepy.py", """
        open("A")
        sleep(600)
        open("B")
    """))
    run.wait_for_line(STAMP + "sleep 600 s$")
    run.proc.send_signal(signal.SIGINT)
    code, log = run.finish()
    assert code == 130, log
    assert re.search(STAMP + r"interrupted after \d+\.\d s; nothing was sent after the interrupt", log, re.M)
    assert "Traceback" not in log

    # while a valve is moving: the reply is awaited, then the script stops before its next line
    run = Running(lab, script(lab, "busy.py", """
        open("getter inlet")
        open("B")
    """))
    wait_until(lambda: "C 1" in actuations(journal), what="valve C to start moving")
    run.proc.send_signal(signal.SIGINT)
    code, log = run.finish()
    assert code == 130, log
    assert "interrupt: waiting for the reply to the request already sent" in log
    assert re.search(STAMP + r"open valves:C \(getter inlet\): open$", log, re.M)

    assert actuations(journal) == ["A 1", "C 1"]  # neither script's open("B") was sent
    assert valve_states(lab) == {"A": "open", "B": "closed", "C": "open"}
    assert [(e["detail"]["valve"], e["detail"]["state"]) for e in valve_events(lab)] == [("A", "open"),
                                                                                         ("C", "open")]
    status = lab.status()
    assert all(d["state"] == "running" and d["restarts"] == 0 for d in status["devices"])
    assert lab.pids() == pids
