"""Extraction-line helpers for scripts and the REPL: valves found by name or description, waits,
and every action logged (logger "labctl.script"; `labctl run` stamps each line with the time).

    from labctl.actors.extraction import ExtractionLine
    from labctl.actors.scriptlab import ScriptLab
    line = ExtractionLine(ScriptLab(1900))        # or ExtractionLine(connect(1900))
    line.open("A"); line.sleep(5); line.close("bone to turbo")

A valve is named by its bare name when that name is unique across the lab's valve controllers, by
`device:valve` (a colon, because sub-device names already contain dots), or by its description
(case-insensitive) when no valve has that name. With a `ScriptLab(port, dry_run=True)` (scriptlab.py)
every command is checked and printed instead of sent.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import logging
import reprlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .client import LabClient
from .errors import DeviceUnavailable, LabError, UnknownDevice
from .messages import (DEVICE_MESSAGES, CloseValve, DescribeDevice, DeviceDescription, DeviceRequest, GetEvents,
                       GetLabStatus, GetPosition, GetSetpoint, GetStatus, GetValveState, LockValve, OpenValve,
                       ReadTemperature, Request, UnlockValve)

log = logging.getLogger("labctl.script")

VALVE_CONTROLLER = "ValveController"
HELPERS = ("open", "close", "is_open", "is_closed", "lock", "unlock", "sleep", "info", "wait_until")
VALVE_HELPERS = ("open", "close", "is_open", "is_closed", "lock", "unlock")
SLEEP_SLICE_S = 0.25   # sleep() looks for Ctrl-C at least this often

# Requests that change nothing anywhere; a dry run sends these to the lab (valve queries excepted:
# those answer from the dry run's model, so that they reflect what the script has commanded).
READS = (GetLabStatus, DescribeDevice, GetEvents, GetSetpoint, ReadTemperature, GetPosition, GetStatus)

_short = reprlib.Repr()
_short.maxother = _short.maxstring = 80

# Set while an ExtractionLine helper sends, so that ScriptLab does not log the same action twice.
_acting: contextvars.ContextVar[bool] = contextvars.ContextVar("labctl_extraction_acting", default=False)


class UnknownValve(LabError, LookupError):
    """No valve by that name or description; the text lists the valves."""


class AmbiguousValve(LabError, LookupError):
    """A name or description that fits valves on more than one controller; the text lists them."""


class WaitTimeout(LabError, TimeoutError):
    """wait_until's condition stayed false for the whole timeout."""


@attrs.frozen
class Valve:
    """One valve of one valve controller."""

    device: str
    name: str
    description: str = ""

    def __str__(self) -> str:
        return f"{self.device}:{self.name}"

    def label(self) -> str:
        """`valves:A (bone to turbo)`, for logs and errors."""
        return f"{self}{f' ({self.description})' if self.description else ''}"


def find_valve(name: str, controllers: Mapping[str, Mapping[str, str]], unreachable: Iterable[str] = ()) -> Valve:
    """The valve `name` means: a unique bare name, `device:valve`, or a description (any case).

    `controllers` maps each valve controller to {valve: description}; `unreachable` names devices
    that could not be asked (mentioned when nothing fits, since the valve may be on one of them).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a valve is named by a non-empty string, got {name!r}")
    everything = [Valve(d, v, desc or "") for d, valves in controllers.items() for v, desc in valves.items()]
    device, colon, valve = name.partition(":")
    if colon:
        if device not in controllers:
            raise UnknownValve(f"no valve controller {device!r} (in {name!r}); valve controllers: "
                               f"{', '.join(controllers) or 'none'}{_unreachable(unreachable)}")
        candidates = [v for v in everything if v.device == device]
        found = [v for v in candidates if v.name == valve] or _by_description(valve, candidates)
    else:
        candidates = everything
        found = [v for v in everything if v.name == name] or _by_description(name, everything)
    if len(found) == 1:
        return found[0]
    if found:
        raise AmbiguousValve(f"valve {name!r} is ambiguous: it could be {', '.join(v.label() for v in found)}; "
                             f"name one as device:valve, e.g. {found[0]}")
    words = [v.name for v in candidates] + [v.description for v in candidates if v.description]
    close = difflib.get_close_matches(valve if colon else name, words, n=1, cutoff=0.6) or \
        [w for w in words if w.casefold() == (valve if colon else name).casefold()]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = ", ".join(v.label() for v in candidates) or "none"
    raise UnknownValve(f"no valve {name!r}{hint}; valves: {known}{_unreachable(unreachable)}")


def _by_description(text: str, valves: list[Valve]) -> list[Valve]:
    wanted = text.strip().casefold()
    return [v for v in valves if v.description and v.description.strip().casefold() == wanted]


def _unreachable(devices: Iterable[str]) -> str:
    devices = list(devices)
    return f" (could not ask {', '.join(devices)})" if devices else ""


def valve_table(descriptions: Iterable[DeviceDescription]) -> dict[str, dict[str, str]]:
    """Valve controller name -> {valve: description}, from device descriptions."""
    return {d.name: dict(d.valves) for d in descriptions if VALVE_CONTROLLER in d.interfaces}


def message_text(message: Request) -> str:
    """`OpenValve(valve='A')`: a message as people write it, without device and request id."""
    return f"{type(message).__name__}({', '.join(f'{k}={v!r}' for k, v in message.payload().items())})"


def condition_text(predicate: Callable) -> str:
    """A readable name for a wait condition: its function name, or where a lambda was written."""
    name = getattr(predicate, "__name__", "") or repr(predicate)
    code = getattr(predicate, "__code__", None)
    if name == "<lambda>" and code is not None:
        return f"condition at {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}"
    return name


class ExtractionLine:
    """Valve, timing and logging helpers over a connected lab (any LabClient)."""

    def __init__(self, lab: LabClient) -> None:
        self.lab = lab
        self._controllers: dict[str, dict[str, str]] | None = None
        self._unreachable: list[str] = []

    @property
    def dry_run(self) -> bool:
        """True when the lab only rehearses (sleeps return at once, waits look once)."""
        return getattr(self.lab, "dry_run", False) is True  # a ScriptLab's; a plain client has none

    # -- valves -----------------------------------------------------------------------------

    def controllers(self) -> dict[str, dict[str, str]]:
        """Valve controller name -> {valve: description}, asked of the lab once (again while a
        device could not be asked: a restarting valve controller may be back)."""
        if self._controllers is None or self._unreachable:
            descriptions, self._unreachable = [], []
            for device in self.lab.device_names():
                try:
                    descriptions.append(self.lab.describe(device))
                except UnknownDevice:
                    continue  # a composite device's parent: only its parts have descriptions
                except DeviceUnavailable as exc:
                    self._unreachable.append(f"{device}: {exc.state or 'unavailable'}")
            self._controllers = valve_table(descriptions)
        return self._controllers

    def valves(self) -> list[Valve]:
        """Every valve of the lab."""
        return [Valve(d, v, desc) for d, valves in self.controllers().items() for v, desc in valves.items()]

    def valve(self, name: str) -> Valve:
        """The valve `name` means (bare name, `device:valve`, or description); see find_valve."""
        return find_valve(name, self.controllers(), self._unreachable)

    def open(self, name: str) -> str:
        """Open a valve; returns its new state ('open')."""
        return self._act("open", name, OpenValve)

    def close(self, name: str) -> str:
        """Close a valve; returns its new state ('closed')."""
        return self._act("close", name, CloseValve)

    def lock(self, name: str) -> bool:
        """Soft-lock a valve so that it refuses to move."""
        return self._act("lock", name, LockValve)

    def unlock(self, name: str) -> bool:
        """Release a valve's soft lock."""
        return self._act("unlock", name, UnlockValve)

    def is_open(self, name: str) -> bool:
        """Whether a valve is open (asked of the lab now)."""
        valve = self.valve(name)
        return self.lab.send(valve.device, GetValveState(valve.name)) == "open"

    def is_closed(self, name: str) -> bool:
        """Whether a valve is closed (asked of the lab now)."""
        valve = self.valve(name)
        return self.lab.send(valve.device, GetValveState(valve.name)) == "closed"

    def _act(self, verb: str, name: str, message: type[DeviceRequest]) -> Any:
        valve = self.valve(name)
        # ScriptLab's guard holds back a Ctrl-C while a request is out; held here too, it takes
        # effect only once the action it let finish is in the log.
        guard = getattr(self.lab, "guard", contextlib.nullcontext)
        with guard():
            token = _acting.set(True)
            try:
                reply = self.lab.send(valve.device, message(valve.name))
            except LabError as exc:
                if verb in ("open", "close") and getattr(exc, "error_type", "") == "ValveLocked":
                    # Pychron's scripts: a software-locked valve that did not move is not a failure
                    log.info("%s %s: locked, not moved", verb, valve.label())
                    return "locked"
                log.warning("%s %s failed: %s", verb, valve.label(), exc)
                raise
            finally:
                _acting.reset(token)
            log.info("%s %s: %s", verb, valve.label(), {"lock": "locked", "unlock": "unlocked"}.get(verb, reply))
        return reply

    # -- time and words ---------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (logged; a dry run does not wait)."""
        seconds = _seconds(seconds, "sleep")
        log.info("sleep %g s%s", seconds, " (dry run: not sleeping)" if self.dry_run else "")
        if not self.dry_run:
            # In short slices: a Ctrl-C whose handler ran just before the sleep began would not end one
            # long sleep (nothing interrupts it then); between slices Python acts on it.
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, SLEEP_SLICE_S))

    def info(self, message: object) -> None:
        """Write `message` to the script's log, timestamped."""
        log.info("%s", message)

    def wait_until(self, predicate: Callable[[], Any], timeout: float, poll: float = 0.5) -> Any:
        """Call `predicate()` every `poll` s until it returns something true and return that;
        WaitTimeout after `timeout` s. A dry run calls it once and goes on whatever it says."""
        if not callable(predicate):
            raise TypeError(f"wait_until needs a function to call, e.g. lambda: is_open('A'); got {predicate!r}")
        timeout, poll = _seconds(timeout, "wait_until timeout"), _seconds(poll, "wait_until poll")
        what = condition_text(predicate)
        if self.dry_run:
            value = predicate()
            log.info("wait until %s (at most %g s): %r now (dry run: not waiting)", what, timeout, value)
            return value
        log.info("wait until %s (at most %g s)", what, timeout)
        began = time.monotonic()
        while True:
            value = predicate()
            waited = time.monotonic() - began
            if value:
                log.info("%s holds after %.1f s", what, waited)
                return value
            if waited >= timeout:
                raise WaitTimeout(f"{what} still false after {timeout:g} s")
            time.sleep(min(poll, timeout - waited))

    def helpers(self) -> dict[str, Callable]:
        """The helpers by the names scripts use: open, close, is_open, ..., wait_until."""
        return {name: getattr(self, name) for name in HELPERS}


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{what} takes a number of seconds >= 0, got {value!r}")
    return float(value)


def script_namespace(line: ExtractionLine) -> dict[str, Any]:
    """What a script sees: `lab`, every device message class, and the line's helpers."""
    return {"lab": line.lab, **DEVICE_MESSAGES, **line.helpers()}
