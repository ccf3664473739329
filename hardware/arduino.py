"""Valve boxes driven by an Arduino over a serial line, as noble-gas labs build them.

The Arduino answers ASCII lines ending in CR LF: `w <pin> <1|0>` sets an output pin and is
answered `OK`; `r <pin>` is answered with the pin's level, `0` or `1`. Each valve has an output
pin and, optionally, two indicator inputs (limit switches) that read 1 when it is open or closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import GarbledReply, HardwareError, NoReply, ProtocolError, Rejected, ValveNotConfirmed
from .interfaces import ValveController, number, valve_state, whole_number
from .serial_link import SerialDevice, SerialLink

T = TypeVar("T")

ANSWER_OK, LEVELS = "OK", {"0": 0, "1": 1}


def default_pin(channel: int) -> int:
    """The output pin of a valve channel when no `pins` table is given: 3 * channel + 4."""
    # Three pins per valve, the output above its open and closed indicators (channel 0: output 4,
    # indicators 3 and 2), starting at 2 because pins 0 and 1 carry the serial link on Uno and Mega.
    return 3 * channel + 4


class ArduinoValves(SerialDevice, ValveController):
    """Valves switched by an Arduino at `port`: a device path or a pyserial URL.

    `pins` maps a channel to its output pin (keys may be strings, as TOML writes them); by default
    `default_pin(channel)`. A valve's open indicator is at pin - `open_offset`, its closed indicator
    at pin - `closed_offset`. With `confirm`, every move is checked on the indicators
    `confirm_delay_s` after it, and a valve's state is read from them. A command not answered as
    it should be is retried up to `retries` times (so tried retries + 1 times in all), each time
    waiting up to `timeout` seconds for the reply.
    """

    def __init__(self, port: str, valves: Mapping[str, Any] | Iterable[str],
                 pins: Mapping[Any, int] | None = None, baudrate: int = 115200, timeout: float = 0.5,
                 retries: int = 3, confirm: bool = False, confirm_delay_s: float = 0.05,
                 open_offset: int = 1, closed_offset: int = 2) -> None:
        super().__init__(valves)
        self._attempts = whole_number(retries, "retries", low=0) + 1
        if not isinstance(confirm, bool):
            raise HardwareError(f"confirm must be true or false, got {confirm!r}")
        self._confirm = confirm
        self._confirm_delay = number(confirm_delay_s, "confirm_delay_s")
        if self._confirm_delay < 0:
            raise HardwareError(f"confirm_delay_s must not be negative, got {confirm_delay_s!r}")
        self._offsets = {True: whole_number(open_offset, "open_offset", low=1),
                         False: whole_number(closed_offset, "closed_offset", low=1)}
        if open_offset == closed_offset:
            raise HardwareError(f"open_offset and closed_offset must differ, both are {open_offset}")
        self._pins = self._pin_table(pins)
        self._link = SerialLink(port, baudrate=baudrate, timeout=timeout)

    def _do_set(self, valve: str, open_: bool) -> None:
        self._command(f"w {self._output(valve)} {int(open_)}", _accept_ok)
        if self._confirm:
            # The valve takes a moment to reach its end stop; only then do the indicators settle.
            time.sleep(self._confirm_delay)
            levels = self._indicators(valve)
            if _indicated(levels) is not open_:
                raise ValveNotConfirmed(f"valve {valve} did not confirm {valve_state(open_)}: "
                                        f"{self._describe(valve, levels)}")

    def _do_get(self, valve: str) -> bool:
        if self._confirm:
            levels = self._indicators(valve)
            state = _indicated(levels)
            if state is None:
                raise ValveNotConfirmed(f"valve {valve} is neither open nor closed: {self._describe(valve, levels)}")
            return state
        # The output pin holds what was last commanded, even across a restart of this driver.
        return bool(self._command(f"r {self._output(valve)}", _accept_level))

    def _output(self, valve: str) -> int:
        return self._pins[self._channels[valve]]

    def _indicator(self, valve: str, is_open: bool) -> int:
        return self._output(valve) - self._offsets[is_open]

    def _indicators(self, valve: str) -> dict[bool, int]:
        """Level of the open (True) and closed (False) indicator."""
        return {is_open: self._command(f"r {self._indicator(valve, is_open)}", _accept_level)
                for is_open in (True, False)}

    def _describe(self, valve: str, levels: dict[bool, int]) -> str:
        return ", ".join(f"{valve_state(is_open)} indicator (pin {self._indicator(valve, is_open)}) reads {level}"
                         for is_open, level in levels.items())

    def _command(self, command: str, accept: Callable[[str, str], T]) -> T:
        """Send a command and return `accept(answer, context)`, retrying up to `retries` times."""
        for _ in range(self._attempts):
            try:
                answer = self._exchange(command)
                return accept(answer, f"arduino at {self._link.port} answered {answer!r} to {command!r}")
            except ProtocolError as exc:  # a LinkError is not retried: the port is gone
                failure = exc
        raise type(failure)(f"{failure} (tried {self._attempts} times)")

    def _exchange(self, command: str) -> str:
        # Whatever is waiting now answers nothing we are about to ask, e.g. a reply that came late.
        self._link.discard_input()
        self._link.write(f"{command}\r\n".encode("ascii"))
        line = self._link.read_until(b"\r\n")
        if not line:
            raise NoReply(f"arduino at {self._link.port}: no reply to {command!r} within {self._link.timeout:g} s")
        text = line[:-2]
        if not line.endswith(b"\r\n") or any(not 0x20 <= byte < 0x7F for byte in text):
            raise GarbledReply(f"arduino at {self._link.port}: unreadable reply {line!r} to {command!r}")
        return text.decode("ascii")

    def _pin_table(self, pins: Mapping[Any, int] | None) -> dict[int, int]:
        """Channel -> output pin, checked so that no pin serves two purposes."""
        channels = sorted(set(self._channels.values()))
        if pins is None:
            table = {channel: default_pin(channel) for channel in channels}
        else:
            if not isinstance(pins, Mapping):
                raise HardwareError(f"pins must be a table of channel = pin, got {pins!r}")
            table = {}
            for key, pin in pins.items():
                text = str(key)
                if isinstance(key, bool) or not text.isdigit():
                    raise HardwareError(f"pins: {key!r} is not a channel number")
                table[int(text)] = whole_number(pin, f"pins.{key}")
            missing = [c for c in channels if c not in table]
            unused = [c for c in table if c not in channels]
            if missing or unused:
                raise HardwareError(f"pins must give a pin for exactly the valves' channels {channels}; "
                                    f"missing {missing}, not a valve's channel {unused}")
        uses: dict[int, str] = {}
        for channel, pin in table.items():
            roles = [(pin, "output")]
            if self._confirm:
                roles += [(pin - offset, f"{valve_state(is_open)} indicator")
                          for is_open, offset in self._offsets.items()]
            for used, role in roles:
                if used < 0:
                    raise HardwareError(f"channel {channel}: {role} pin would be {used}; "
                                        "give a higher output pin in pins")
                if used in uses:
                    raise HardwareError(f"pin {used} would be both {uses[used]} and channel {channel} {role}")
                uses[used] = f"channel {channel} {role}"
        return table


def _accept_ok(answer: str, context: str) -> None:
    if answer != ANSWER_OK:
        raise Rejected(f"{context}, not {ANSWER_OK}")


def _accept_level(answer: str, context: str) -> int:
    if answer in LEVELS:
        return LEVELS[answer]
    if answer.isalpha():  # a word such as ERR: the Arduino refused
        raise Rejected(f"{context}, not 0 or 1")
    raise GarbledReply(f"{context}, not 0 or 1")


def _indicated(levels: dict[bool, int]) -> bool | None:
    """True (open) or False (closed) when exactly one indicator is high, else None."""
    return bool(levels[True]) if levels[True] != levels[False] else None


__all__ = ["ArduinoValves", "default_pin"]
