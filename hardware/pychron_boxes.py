"""Drivers for an existing Pychron valve box (pyValve) and furnace (furPi), over TCP as pyExperiment
speaks to them (labctl's PYCHRON.md): one connection per command, the command plus CR in one
write, the reply read until the box closes the connection.

Configuration (the `conf` of a lab file): `host`; `port` (1061 for valves, 4567 for the furnace);
`valves`, the box's valve names in its order, as a list or as a table in any form labctl's valve
drivers take (`{A = {channel = 0, description = "bone to turbo"}}`; channels are not used, the
box knows valves by name); `timeout` in seconds for each try; `retries`, how many more tries after
the first; `framed`, to send `{XXXX}`-framed requests, which only a labctl gateway understands;
`min_setpoint` and `max_setpoint` (furnace), the setpoints accepted.

A command that cannot get through (refused, reset, no reply in `timeout` seconds) is sent again,
up to `retries` more times 25 ms apart, as Pychron's own client does; Open and Close are
idempotent on the box, so a repeat is harmless. When every try fails the driver raises LinkError,
which labctl shows as a degraded device and reconnects from. A reply the box did give is never
retried: a refusal becomes Rejected with the box's own words.

One call may take up to (retries + 1) x (timeout + 0.025) s: 2.5 s with the defaults (3 tries of
0.8 s, as many tries as Pychron's own client makes), within labctl's default call limit
(heartbeat_s x heartbeat_misses, 3 s), past which the device would count as hung rather than
degraded. Raise heartbeat_misses with retries or timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from . import pychronwire as wire
from .errors import GarbledReply, HardwareError, LinkError, OutOfRange, Rejected
from .interfaces import TemperatureController, ValveController, number, valve_state, whole_number

VALVE_PORT, FURNACE_PORT = 1061, 4567
RETRY_DELAY_S = 0.025
MAX_REPLY_BYTES = 1 << 16  # far above any reply of the protocol; a box sending more is broken
# What the box answers GetValveState with for a closed valve. Anything that is neither this nor
# truthy (an ERROR, `No Response`, nothing) is not taken for "closed".
CLOSED_WORDS = frozenset({"false", "f", "no", "n", "0", "closed", "close"})


class PychronLink:
    """How a driver talks to one Pychron box: `ask(command)` over a fresh TCP connection, with retries."""

    def __init__(self, host: str, port: int, *, timeout: float = 0.8, retries: int = 2,
                 framed: bool = False) -> None:
        if not isinstance(host, str) or not host.strip():
            raise OutOfRange(f"host must be a host name or address, got {host!r}")
        self.host = host
        self.port = whole_number(port, "port", low=1, high=65535)
        self.timeout = number(timeout, "timeout")
        if self.timeout <= 0:
            raise OutOfRange(f"timeout must be positive, got {timeout!r}")
        self.attempts = whole_number(retries, "retries", low=0) + 1
        if not isinstance(framed, bool):
            raise HardwareError(f"framed must be true or false, got {framed!r}")
        self.framed = framed

    @property
    def where(self) -> str:
        """host:port, for messages."""
        return f"{self.host}:{self.port}"

    def ask(self, command: str) -> str:
        """The box's reply to `command`, stripped; LinkError when no try gets through."""
        failure: OSError | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(RETRY_DELAY_S)
            try:
                return self._exchange(command)
            except OSError as exc:  # refused, reset, unreachable, timed out: the only failures retried
                failure = exc
        raise LinkError(f"pychron box at {self.where}: no answer to {command!r} after {self.attempts} "
                        f"tries: {_reason(failure, self.timeout)}") from failure

    def _exchange(self, command: str) -> str:
        request = (wire.frame(command) if self.framed else command) + "\r"
        deadline = time.monotonic() + self.timeout
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            sock.settimeout(_remaining(deadline))
            sock.sendall(request.encode("utf-8"))  # one write, as Pychron's server expects
            received = bytearray()
            while True:
                sock.settimeout(_remaining(deadline))
                chunk = sock.recv(4096)
                if not chunk:  # the box closes the connection once it has answered
                    break
                received += chunk
                if len(received) > MAX_REPLY_BYTES:
                    raise GarbledReply(f"pychron box at {self.where}: reply to {command!r} is longer than "
                                       f"{MAX_REPLY_BYTES} bytes")
        return self._decode(bytes(received), command)

    def _decode(self, data: bytes, command: str) -> str:
        if self.framed and data:
            try:
                data = wire.unframe(data)
            except wire.ProtocolError as exc:
                raise GarbledReply(f"pychron box at {self.where}: badly framed reply {data[:80]!r} to "
                                   f"{command!r}: {exc}") from None
        try:
            return data.decode("utf-8").strip(wire.ASCII_WHITESPACE)
        except UnicodeDecodeError:
            raise GarbledReply(f"pychron box at {self.where}: reply {data[:80]!r} to {command!r} is not UTF-8") from None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _reason(exc: OSError | None, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no reply within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _check_names(names: Iterable[str]) -> None:
    for name in names:
        # A name goes on the wire as an argument: a space, a comma or a control character would
        # split it or end the request; a trailing 0/1 is fine (`V10` is V1 open in GetValveStates).
        if not name or any(ch in name for ch in " ,") or not name.isprintable():
            raise HardwareError(f"valve name {name!r} cannot be sent to a Pychron box: "
                                "no spaces, commas or control characters")


class PychronValves(ValveController):
    """Valves of an existing Pychron valve box (pyValve) at `host`:`port`, by the box's names."""

    def __init__(self, host: str, valves: Mapping[str, Any] | Iterable[str], port: int = VALVE_PORT,
                 timeout: float = 0.8, retries: int = 2, framed: bool = False) -> None:
        super().__init__(valves)
        _check_names(self._channels)
        self._link = PychronLink(host, port, timeout=timeout, retries=retries, framed=framed)

    def _do_set(self, valve: str, open_: bool) -> None:
        command = f"{'Open' if open_ else 'Close'} {valve}"
        reply = self._link.ask(command)
        # `OK` (moved, or already there) and `ok` (nothing done but acceptable: locked on the box)
        # are both success for Pychron's own clients.
        if not wire.truthy(reply):
            raise Rejected(f"pychron box at {self._link.where} refused {command!r}: {_shown(reply)}")

    def _do_get(self, valve: str) -> bool:
        command = f"GetValveState {valve}"
        reply = self._link.ask(command)
        if wire.truthy(reply):
            return True
        if reply.lower() in CLOSED_WORDS:
            return False
        raise Rejected(f"pychron box at {self._link.where} answered {command!r} with {_shown(reply)}")

    def get_states(self) -> dict[str, str]:
        """Every valve's state, by name, from one GetValveStates whose crc16 is checked."""
        reply = self._link.ask("GetValveStates")
        try:
            body = wire.check_crc(reply)
        except wire.CrcMismatch as exc:
            raise wire.CrcMismatch(f"pychron box at {self._link.where}: GetValveStates reply {reply!r} "
                                   f"fails its crc16 ({exc}); not trusted") from None
        try:
            reported = dict(wire.parse_state_word(body))
        except GarbledReply as exc:
            raise GarbledReply(f"pychron box at {self._link.where}: GetValveStates: {exc}") from None
        missing = [name for name in self._channels if name not in reported]
        if missing:
            raise GarbledReply(f"pychron box at {self._link.where} does not report {', '.join(missing)} in "
                               f"GetValveStates ({body!r})")
        return {name: valve_state(reported[name]) for name in self._channels}

    def reconnect(self) -> None:
        """Ask the box for one valve's state: LinkError while it still cannot be reached."""
        # Connections are per command, so there is nothing to reopen; only whether the box answers.
        self._link.ask(f"GetValveState {next(iter(self._channels))}")

    def status(self) -> dict[str, Any]:
        return {**super().status(), "host": self._link.host, "port": self._link.port}


class PychronFurnace(TemperatureController):
    """A furnace served by a furPi-compatible Pychron box at `host`:`port` (temperature, setpoint, output)."""

    def __init__(self, host: str, port: int = FURNACE_PORT, timeout: float = 0.8, retries: int = 2,
                 framed: bool = False, min_setpoint: float = 0.0, max_setpoint: float = 1200.0) -> None:
        super().__init__(min_setpoint, max_setpoint)
        self._link = PychronLink(host, port, timeout=timeout, retries=retries, framed=framed)

    def _do_get_setpoint(self) -> float:
        return self._number("GetSetpoint")

    def _do_set_setpoint(self, value: float) -> None:
        command = f"SetSetpoint {value}"
        reply = self._link.ask(command)
        if not wire.truthy(reply):
            raise Rejected(f"pychron furnace at {self._link.where} refused {command!r}: {_shown(reply)}")

    def _do_read_temperature(self) -> float:
        return self._number("GetTemperature")

    def _do_get_output(self) -> float:
        return self._number("GetPercentOutput")

    def reconnect(self) -> None:
        """Ask the box for its temperature: LinkError while it still cannot be reached."""
        self._link.ask("GetTemperature")

    def status(self) -> dict[str, Any]:
        return {**super().status(), "host": self._link.host, "port": self._link.port}

    def _number(self, command: str) -> float:
        reply = self._link.ask(command)
        try:
            return float(reply)
        except ValueError:
            pass
        # An ERROR or `No Response` is the box declining; anything else is not the protocol.
        kind = Rejected if reply.startswith("ERROR") or reply in ("No Response", "") else GarbledReply
        raise kind(f"pychron furnace at {self._link.where} answered {command!r} with {_shown(reply)}, "
                   "not a number")


def _shown(reply: str) -> str:
    # Pychron's server closes without a word on a command it does not know: say so.
    return repr(reply) if reply else "nothing (the box closed the connection without a reply)"


__all__ = ["PychronValves", "PychronFurnace", "PychronLink", "VALVE_PORT", "FURNACE_PORT"]
