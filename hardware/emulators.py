"""Instrument emulators: each serves its protocol on a pseudo-terminal, so that a driver opens a
real tty with pyserial, exactly as it opens the instrument. Faults, unplugging and replugging can
be staged from a test or from `labctl emulate`.
"""

from __future__ import annotations

import collections
import fcntl
import inspect
import logging
import os
import select
import shutil
import struct
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

from . import bisynch
from .arduino import default_pin
from .errors import ChecksumError, OutOfRange, ProtocolError
from .interfaces import number
from .interfaces import whole_number
from .simulated import SimFurnace

log = logging.getLogger(__name__)

FAULTS = ("no_reply", "garbage", "bad_checksum", "nak", "slow")

# How long the serving thread sleeps at most between looks at its stop flag; stop() also wakes it.
POLL_S = 0.1
# In packet mode (TIOCPKT) the master reads data behind a zero byte, and driver-side events alone.
PACKET_DATA = b"\x00"
# How long a caller waits for the serving thread to carry out unplug() or replug().
CALL_TIMEOUT_S = 5.0


class Emulator:
    """An instrument served on a pseudo-terminal by a daemon thread, reached through a stable symlink.

    `port` is the symlink (`link`, or one in a fresh temporary folder): like a udev name under
    /dev/serial/by-id it survives an unplug and replug while the pty behind it changes. Faults
    injected with `inject` apply to the next commands received, one command each, in the order
    injected: "no_reply" (the command is lost), "garbage" (the reply is noise), "bad_checksum",
    "nak" (the instrument refuses the command), "slow" (the reply comes `slow_s` seconds late).
    """

    kind = ""

    def __init__(self, link: str | os.PathLike | None = None, slow_s: float = 1.0) -> None:
        self._slow_s = number(slow_s, "slow_s")
        if self._slow_s < 0:
            raise OutOfRange(f"slow_s must not be negative, got {slow_s!r}")
        self._link = Path(link) if link is not None else None
        self._temp_dir: str | None = None
        # _state guards what other threads may read or change: faults, counters, pending replies and
        # the instrument's model. Only the serving thread touches the pty.
        self._state = threading.Condition()
        self._faults: collections.deque[list] = collections.deque()
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self._received = 0
        self._calls: SimpleQueue[tuple[Callable[[], Any], Future]] = SimpleQueue()
        self._master: int | None = None
        self._slave: int | None = None
        self._tty = ""  # the path of the current pty's slave side
        self._buffer = bytearray()
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Open the pty, make the symlink and start serving; returns self."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError(f"{self.kind} emulator: start() may be called once")
        try:
            if self._link is None:
                self._temp_dir = tempfile.mkdtemp(prefix="labctl-emulator-")
                self._link = Path(self._temp_dir) / self.kind
            elif self._link.exists() and not self._link.is_symlink():
                raise ValueError(f"{self._link} exists and is not a symlink; the emulator will not replace it")
            self._wake_r, self._wake_w = os.pipe()
            self._plug()
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(target=self._serve, name=f"{self.kind}-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, remove the symlink and close the pty. Safe to call more than once."""
        self._stopping.set()
        if self._thread is not None:
            self._wake()
            self._thread.join()
        self._release()

    @property
    def running(self) -> bool:
        """Whether the serving thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> str:
        """The path a driver opens: a symlink to the current pty."""
        if self._link is None or self._thread is None:
            raise RuntimeError(f"{self.kind} emulator is not started; call start() first")
        return str(self._link)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- staging trouble -----------------------------------------------------------------------------

    def unplug(self) -> None:
        """Pull the cable: close the pty and remove the symlink, so that the driver's port vanishes."""
        self._in_thread(self._unplug)

    def replug(self) -> None:
        """Plug in again (unplugging first if needed): a new pty behind the same symlink."""
        self._in_thread(lambda: (self._unplug(), self._plug()))

    @property
    def plugged(self) -> bool:
        """Whether a pty is being served."""
        return self._master is not None

    def inject(self, fault: str, count: int | None = 1) -> None:
        """Apply `fault` to the next `count` commands (None: every command until clear())."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        if count is not None:
            whole_number(count, "count", low=1)
        with self._state:
            self._faults.append([fault, count])

    def clear(self) -> None:
        """Forget every injected fault."""
        with self._state:
            self._faults.clear()

    @property
    def received(self) -> int:
        """How many commands addressed to this instrument have arrived."""
        with self._state:
            return self._received

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every reply already scheduled (a slow one, say) has been written; False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: not self._pending, timeout)

    # -- what a protocol provides ----------------------------------------------------------------------

    def _take_request(self, buffer: bytearray) -> bytes | None:
        """Remove and return the first complete request in `buffer`, or None."""
        raise NotImplementedError

    def _accepts(self, request: bytes) -> bool:
        """Whether a request is a command for this instrument (not noise, not for another unit)."""
        return True

    def _respond(self, request: bytes, fault: str | None) -> bytes | None:
        """Carry out a command, with `fault` ("garbage", "bad_checksum", "nak" or None); the reply or None."""
        raise NotImplementedError

    # -- serving (only the serving thread runs these, once started) ---------------------------------

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._run_calls()
            watched = [self._wake_r] if self._master is None else [self._wake_r, self._master]
            ready = select.select(watched, [], [], self._wait_s())[0]
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            if self._master is not None and self._master in ready:
                self._receive()
            self._send_due()

    def _wait_s(self) -> float:
        with self._state:
            if not self._pending:
                return POLL_S
            return min(POLL_S, max(0.0, self._pending[0][0] - time.monotonic()))

    def _receive(self) -> None:
        try:
            chunk = os.read(self._master, 4097)
        except OSError:  # nothing after all (EAGAIN), or nobody on the other side for a moment
            return
        # Whatever came, the driver's port is open by now: make sure its next open changes a flag.
        self._unsettle_termios()
        if chunk[:1] != PACKET_DATA:
            return  # a status packet: the driver flushed its input (pyserial does so once open)
        self._buffer += chunk[1:]
        while (request := self._take_request(self._buffer)) is not None:
            try:
                self._handle(request)
            except Exception:  # a bug in one answer must not silence the instrument for good
                log.exception("%s emulator failed to answer %r", self.kind, request)

    def _handle(self, request: bytes) -> None:
        if not self._accepts(request):
            return
        with self._state:
            self._received += 1
            fault = self._take_fault()
            if fault == "no_reply":
                return
            reply = self._respond(request, None if fault == "slow" else fault)
            if reply is None:
                return
            # One line, one answer at a time: a late reply holds back the ones after it.
            due = time.monotonic() + (self._slow_s if fault == "slow" else 0.0)
            if self._pending:
                due = max(due, self._pending[-1][0])
            self._pending.append((due, reply))

    def _take_fault(self) -> str | None:
        if not self._faults:
            return None
        entry = self._faults[0]
        if entry[1] is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self._faults.popleft()
        return entry[0]

    def _send_due(self) -> None:
        with self._state:
            now, due = time.monotonic(), b""
            while self._pending and self._pending[0][0] <= now:
                due += self._pending.popleft()[1]
            # Replies due together go out in one write, as they would follow each other on a line.
            if due and self._master is not None:
                try:
                    os.write(self._master, due)
                except BlockingIOError:
                    pass  # nobody reads and the line is full: the reply is lost, as on a real line
            self._state.notify_all()

    def _run_calls(self) -> None:
        while True:
            try:
                action, future = self._calls.get_nowait()
            except Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(action())
                except BaseException as exc:
                    future.set_exception(exc)

    def _in_thread(self, action: Callable[[], Any]) -> Any:
        if not self.running:
            raise RuntimeError(f"{self.kind} emulator is not running")
        future: Future = Future()
        self._calls.put((action, future))
        self._wake()
        return future.result(CALL_TIMEOUT_S)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass  # the pipe is full, so the thread is awake anyway

    # -- the pty and its symlink -----------------------------------------------------------------------

    def _plug(self) -> None:
        # The emulator keeps the slave open too: a master whose slave side has no opener reads EIO.
        self._master, self._slave = os.openpty()
        self._tty = os.ttyname(self._slave)
        # Raw, so that no line discipline rewrites bytes (CR to LF, echo) before pyserial sets its own.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        fcntl.ioctl(self._master, termios.TIOCPKT, struct.pack("i", 1))
        self._unsettle_termios()
        staging = self._link.with_name(f".{self._link.name}.{os.getpid()}.new")
        staging.unlink(missing_ok=True)
        os.symlink(self._tty, staging)
        os.replace(staging, self._link)  # atomic: a reader sees the old target or the new one

    def _unsettle_termios(self) -> None:
        """Set IGNBRK, a flag pyserial clears, so that the next driver to open the pty changes a flag."""
        # A pty keeps CS8 and no parity whatever is asked, and some C libraries (Debian's, Fedora's)
        # fail tcsetattr with EINVAL when a request that was not met changed nothing either: a 7E1
        # driver could open the pty once, but not again at the same baud rate. So this runs after
        # everything a driver sends or flushes (pyserial flushes as the last step of opening); no
        # break ever crosses a pty, so the flag itself changes nothing. A 7E1 driver that opens,
        # closes and opens again before the emulator has seen anything from it can still meet EINVAL.
        attributes = termios.tcgetattr(self._slave)
        if not attributes[0] & termios.IGNBRK:
            attributes[0] |= termios.IGNBRK
            termios.tcsetattr(self._slave, termios.TCSANOW, attributes)

    def _unplug(self) -> None:
        # The name goes first, so that a driver reconnecting meanwhile finds nothing rather than a dead pty;
        # but only while it is ours: an emulator started since on the same link (a restarted device) keeps it.
        if self._master is not None and self._link.is_symlink() and os.readlink(self._link) == self._tty:
            self._link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self._buffer.clear()
        with self._state:
            self._pending.clear()
            self._state.notify_all()

    def _release(self) -> None:
        self._unplug()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


class EurothermEmulator(Emulator):
    """A Eurotherm controller speaking EI-Bisynch, with a first-order thermal model.

    The temperature (PV) approaches the setpoint (SL) with time constant `tau_s`, starting from
    `ambient`; the output (OP, 0..100 %) follows. Requests for another group or unit go unanswered;
    a write with a wrong BCC, to a read-only parameter or outside [min_setpoint, max_setpoint] is
    answered NAK. A "bad_checksum" fault corrupts a read's reply, and makes a write arrive
    corrupted (so it is answered NAK).
    """

    kind = "eurotherm"

    def __init__(self, gid: int = 0, uid: int = 1, setpoint: float = 20.0, ambient: float = 20.0,
                 tau_s: float = 30.0, min_setpoint: float = 0.0, max_setpoint: float = 1200.0,
                 link: str | os.PathLike | None = None, slow_s: float = 1.0) -> None:
        super().__init__(link=link, slow_s=slow_s)
        bisynch.address(gid, uid)
        self._address = (gid, uid)
        self._furnace = SimFurnace(setpoint=setpoint, ambient=ambient, tau_s=tau_s,
                                   min_setpoint=min_setpoint, max_setpoint=max_setpoint)
        self._readers = {"PV": self._furnace.read_temperature, "SL": self._furnace.get_setpoint,
                         "OP": self._furnace.get_output}

    @property
    def setpoint(self) -> float:
        """The setpoint the instrument holds."""
        with self._state:
            return self._furnace.get_setpoint()

    def _take_request(self, buffer: bytearray) -> bytes | None:
        return bisynch.take_request(buffer)

    def _accepts(self, request: bytes) -> bool:
        try:
            return bisynch.request_address(request) == self._address
        except ProtocolError:
            return False

    def _respond(self, request: bytes, fault: str | None) -> bytes | None:
        try:
            gid, uid, mnemonic, value = bisynch.parse_request(request)
        except ChecksumError:
            return bisynch.NAK
        except ProtocolError:
            return None  # not a request at all: line noise
        if fault == "nak" or (fault == "bad_checksum" and value is not None):
            return bisynch.NAK
        reply = self._read(mnemonic) if value is None else self._write(mnemonic, value)
        if fault == "garbage":
            return b"?" + reply[1:]
        if fault == "bad_checksum":
            return reply[:-1] + bytes([reply[-1] ^ 0x01])
        return reply

    def _read(self, mnemonic: str) -> bytes:
        reader = self._readers.get(mnemonic)
        if reader is None:
            return bisynch.EOT  # what a controller answers for a parameter it does not have
        return bisynch.data_frame(mnemonic, bisynch.encode_value(reader()))

    def _write(self, mnemonic: str, value: str) -> bytes:
        if mnemonic != "SL":
            return bisynch.NAK
        try:
            self._furnace.set_setpoint(float(value))
        except (ValueError, OutOfRange):
            return bisynch.NAK
        return bisynch.ACK


class ArduinoEmulator(Emulator):
    """An Arduino valve box: `w <pin> <1|0>` answered OK, `r <pin>` answered 0 or 1, else ERR.

    Writing an output pin moves its valve: the open indicator (pin - `open_offset`) follows the pin
    and the closed indicator (pin - `closed_offset`) its opposite, unless the pin is in `stuck` (a
    valve that does not move). The valves on `valve_pins` (default: `default_pin` of every channel
    that fits in `n_pins`) start closed. "garbage" and "bad_checksum" faults answer noise; "nak"
    answers ERR.
    """

    kind = "arduino-valves"
    NOISE = b"\xfc\x1f\x80\r\n"

    def __init__(self, n_pins: int = 54, valve_pins: Iterable[int] | None = None, stuck: Iterable[int] = (),
                 open_offset: int = 1, closed_offset: int = 2, link: str | os.PathLike | None = None,
                 slow_s: float = 1.0) -> None:
        super().__init__(link=link, slow_s=slow_s)
        n_pins = whole_number(n_pins, "n_pins", low=1)
        self._offsets = (whole_number(open_offset, "open_offset", low=1),
                         whole_number(closed_offset, "closed_offset", low=1))
        if valve_pins is None:
            valve_pins = [pin for pin in map(default_pin, range(n_pins)) if pin < n_pins]
        self._stuck = {whole_number(pin, "stuck pin", high=n_pins - 1) for pin in stuck}
        self._levels = [0] * n_pins
        for pin in valve_pins:
            self._set_indicators(whole_number(pin, "valve pin", high=n_pins - 1), 0)

    def level(self, pin: int) -> int:
        """A pin's level, 0 or 1."""
        with self._state:
            return self._levels[pin]

    def _take_request(self, buffer: bytearray) -> bytes | None:
        end = buffer.find(b"\n")
        if end < 0:
            return None
        line = bytes(buffer[:end]).strip()
        del buffer[:end + 1]
        return line

    def _accepts(self, request: bytes) -> bool:
        return bool(request)

    def _respond(self, request: bytes, fault: str | None) -> bytes | None:
        if fault == "nak":
            return b"ERR\r\n"
        reply = self._execute(request.decode("ascii", "replace").split())
        return self.NOISE if fault in ("garbage", "bad_checksum") else reply

    def _execute(self, words: list[str]) -> bytes:
        pins = range(len(self._levels))
        if len(words) == 3 and words[0] == "w" and words[1].isdigit() and int(words[1]) in pins \
                and words[2] in ("0", "1"):
            pin, level = int(words[1]), int(words[2])
            self._levels[pin] = level
            if pin not in self._stuck:
                self._set_indicators(pin, level)
            return b"OK\r\n"
        if len(words) == 2 and words[0] == "r" and words[1].isdigit() and int(words[1]) in pins:
            return b"%d\r\n" % self._levels[int(words[1])]
        return b"ERR\r\n"

    def _set_indicators(self, pin: int, level: int) -> None:
        for offset, indicated in zip(self._offsets, (level, 1 - level)):
            if 0 <= pin - offset < len(self._levels):
                self._levels[pin - offset] = indicated


EMULATORS: dict[str, type[Emulator]] = {"arduino-valves": ArduinoEmulator, "eurotherm": EurothermEmulator}


def emulator_options(kind: str) -> list[str]:
    """The options (keyword arguments) an emulator kind takes."""
    return list(inspect.signature(_emulator_class(kind)).parameters)


def make_emulator(kind: str, **options: Any) -> Emulator:
    """An emulator of `kind` (see EMULATORS) built with `options`; ValueError naming what is known."""
    known = emulator_options(kind)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for the {kind} emulator; "
                         f"known: {', '.join(known)}")
    return EMULATORS[kind](**options)


def _emulator_class(kind: str) -> type[Emulator]:
    if kind not in EMULATORS:
        raise ValueError(f"unknown emulator {kind!r}; known: {', '.join(EMULATORS)}")
    return EMULATORS[kind]


__all__ = ["Emulator", "EurothermEmulator", "ArduinoEmulator", "EMULATORS", "FAULTS", "emulator_options",
           "make_emulator"]
