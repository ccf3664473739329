"""Drivers for tests: they count calls, fail on purpose, hang, or record their shutdown in files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import logging

import numpy as np

from labctl.hardware import Device, FloatingDevice, HardwareError, LinkError, remote, time_limit

log = logging.getLogger(__name__)  # made when the lab file is checked, before any fork
from labctl.hardware.simulated import SimValves


def note_overlap(journal: Path) -> None:
    """Append 'OVERLAP' to the journal if a process that opened this device before still runs."""
    from labctl.actors.processes import is_alive

    if journal.exists():
        earlier = [int(line.split()[1]) for line in journal.read_text().splitlines() if line.startswith("open ")]
        if any(pid != os.getpid() and is_alive(pid) for pid in earlier):
            with journal.open("a") as f:
                f.write(f"OVERLAP {os.getpid()}\n")


class Recorder(SimValves):
    """Valves that append every actuation and their shutdown to a journal file, and note it if an
    earlier process of theirs still runs when they open (two processes on one device)."""

    def __init__(self, journal: str, valves=("A", "B", "C"), hang: bool = False, **kwargs) -> None:
        super().__init__(valves, **kwargs)
        self.journal = Path(journal)
        note_overlap(self.journal)
        self._write(f"open {os.getpid()}")
        if hang:  # a constructor stuck in a blocking call
            time.sleep(3600)

    def _write(self, line: str) -> None:
        with self.journal.open("a") as f:
            f.write(line + "\n")

    def _do_set(self, valve: str, open_: bool) -> None:
        self._write(f"set {valve} {int(open_)} {os.getpid()}")
        super()._do_set(valve, open_)

    def _do_shutdown(self) -> None:
        self._write(f"shutdown {os.getpid()}")


class Unsendable(Device):
    """A method whose result cannot travel (a generator)."""

    @remote
    def numbers(self):
        return (n for n in range(3))

    @remote
    def ping(self) -> str:
        return "pong"


class Counter(Device):
    """`bump` counts its calls in a file and always raises."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    @remote
    def bump(self) -> int:
        with self.path.open("a") as f:
            f.write("x")
        log.warning("bumping %s, from the driver's own module logger", self.path.name)
        raise HardwareError("bump always fails")

    @remote
    def ping(self) -> str:
        return "pong"


class Broken(Device):
    """A driver whose constructor always raises."""

    def __init__(self, why: str = "no hardware here") -> None:
        with open(os.environ.get("LABCTL_TEST_BROKEN_LOG", os.devnull), "a") as f:
            f.write(f"{time.monotonic()}\n")
        raise RuntimeError(why)


class Sleeper(Device):
    """Methods that take their time: one blocks (hangs), one has a declared time limit. With a
    `journal`, a nap notes when it begins (a test waits for that, not for a guessed time)."""

    def __init__(self, journal: str | None = None) -> None:
        self.journal = Path(journal) if journal else None

    @remote
    def nap(self, seconds: float) -> float:
        if self.journal is not None:
            with self.journal.open("a") as f:
                f.write(f"nap {seconds}\n")
        time.sleep(seconds)
        return seconds

    @remote
    @time_limit(5.0)
    def long_exposure(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @remote
    def ping(self) -> str:
        return "pong"


class Exiter(Device):
    """Ends its own process with a chosen exit code (0 is a normal end)."""

    @remote
    def exit(self, code: int) -> None:
        os._exit(code)

    @remote
    def ping(self) -> str:
        return "pong"


class Flaky(SimValves):
    """Valves whose constructor fails while the file `fail_flag` exists (a flapping device)."""

    def __init__(self, fail_flag: str, valves=("A",)) -> None:
        if Path(fail_flag).exists():
            raise RuntimeError(f"flapping: {fail_flag} exists")
        super().__init__(valves)


class ConfEcho(Device):
    """Keeps the keyword arguments it was built with, then spoils the ones it was handed."""

    def __init__(self, **conf) -> None:
        import copy

        self._conf = copy.deepcopy(conf)
        for value in conf.values():  # a careless driver: a restart must still get the original conf
            if isinstance(value, (dict, list)):
                value.clear()

    @remote
    def conf(self) -> dict:
        return self._conf


class FloatingEcho(ConfEcho, FloatingDevice):
    """A floating driver with two units, ids 'unit0' and 'unit1', that keeps its kwargs."""

    @classmethod
    def count_candidates(cls, **conf) -> int:
        return 2

    @classmethod
    def open_candidate(cls, candidate: int, /, **conf) -> "FloatingEcho":
        unit = cls(**conf)
        unit._candidate = candidate
        return unit

    def get_id(self) -> str:
        return f"unit{self._candidate}"

    @remote
    def candidate(self) -> int:
        return self._candidate


class SlowShutdown(SimValves):
    """Valves whose shutdown takes `seconds`, journaled at its start and its end."""

    def __init__(self, journal: str, seconds: float) -> None:
        super().__init__(("A",))
        self.journal, self.seconds = Path(journal), seconds

    def _do_shutdown(self) -> None:
        with self.journal.open("a") as f:
            f.write("shutdown start\n")
        time.sleep(self.seconds)
        with self.journal.open("a") as f:
            f.write("shutdown end\n")


class Limited(Device):
    """Time limits worked out per call: one from the hardware (which may have gone), one from the
    arguments (which may be nonsense); the link is down while the file `unplugged` exists."""

    def __init__(self, unplugged: str) -> None:
        self.unplugged = Path(unplugged)

    def exposure(self) -> float:
        if self.unplugged.exists():
            raise LinkError("camera gone")
        return 0.5

    @remote
    @time_limit(lambda device: device.exposure() + 5)
    def shoot(self) -> str:
        return "shot"

    @remote
    @time_limit(lambda device, seconds: seconds)
    def wait(self, seconds: float) -> float:
        time.sleep(max(0.0, seconds))
        return seconds

    @remote
    def objects(self):
        return np.array([lambda: 0, 1], dtype=object)

    def reconnect(self) -> None:
        self.exposure()


class Spawner(Device):
    """Starts child processes in its constructor, journaled as `child PID KIND`: one in its own group
    (`sleep`), one in a new session, one forked by multiprocessing. None may outlive its device."""

    def __init__(self, journal: str) -> None:
        import multiprocessing
        import subprocess

        self.journal = Path(journal)
        self.popen = [subprocess.Popen(["sleep", "600"]), subprocess.Popen(["sleep", "600"], start_new_session=True)]
        self.forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))
        self.forked.start()
        with self.journal.open("a") as f:
            f.write(f"open {os.getpid()}\nchild {self.popen[0].pid} group\nchild {self.popen[1].pid} session\n"
                    f"child {self.forked.pid} fork\n")

    @remote
    def hang(self) -> None:
        time.sleep(600)

    @remote
    def ping(self) -> str:
        return "pong"


class Segfaulter(Device):
    """Dereferences address 0 in C code (ctypes), in its constructor or when `crash` is called."""

    def __init__(self, journal: str | None = None, in_constructor: bool = False) -> None:
        import ctypes

        if journal:
            with open(journal, "a") as f:
                f.write(f"open {os.getpid()} {time.monotonic()}\n")
        if in_constructor:
            ctypes.string_at(0)

    @remote
    def crash(self) -> None:
        import ctypes

        ctypes.string_at(0)

    @remote
    def ping(self) -> str:
        return "pong"


class Hog(Device):
    """Grows: `grow(mb)` keeps `mb` MiB more (touched, so resident); `grow_child(mb)` starts a child
    process that holds `mb` MiB, journaled as `child PID`, and returns its pid."""

    def __init__(self, journal: str = os.devnull) -> None:
        self.journal = journal
        self.hoard: list = []
        self.children: list = []

    @remote
    def grow(self, mb: int) -> int:
        self.hoard.append(np.ones(mb * 2**20, dtype=np.uint8))
        return sum(a.nbytes for a in self.hoard) // 2**20

    @remote
    def grow_child(self, mb: int) -> int:
        import subprocess
        import sys

        child = subprocess.Popen([sys.executable, "-c", f"import sys, time; x = b'1' * ({mb} * 2**20); "
                                  "sys.stdout.write('held\\n'); sys.stdout.flush(); time.sleep(600)"],
                                 stdout=subprocess.PIPE, text=True)
        with open(self.journal, "a") as f:
            f.write(f"child {child.pid}\n")
        child.stdout.readline()  # its memory is held now
        self.children.append(child)
        return child.pid

    @remote
    def rss_mb(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss // 2**20

    @remote
    def ping(self) -> str:
        return "pong"


class Chatty(SimValves):
    """Valves whose `talk` logs many lines from the driver (a busy device's log)."""

    @remote
    def talk(self, lines: int = 1000) -> int:
        for n in range(lines):
            log.info("chatty line %d of %d", n, lines)
        return lines
