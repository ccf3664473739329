"""The lab as scripts and the REPL drive it (`labctl run`, `labctl repl`): a client whose commands
are logged (logger "labctl.script"), whose requests hold back Ctrl-C while they are out (`guard`),
and which, with `dry_run`, checks every command against the lab's descriptions and prints it
instead of sending it, answering valve queries from a model of the valve states."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .client import DEFAULT_TIMEOUT, LabClient
from .errors import DriverError, LabError, UnknownDevice, UnknownMessage
from .extraction import READS, UnknownValve, _acting, _short, log, message_text
from .messages import (Call, CloseValve, DeviceDescription, DeviceRequest, GetStatus, GetValveState, GetValveStates,
                       LockValve, OpenValve, Request, RestartDevice, StopLab, UnlockValve)


class ScriptLab(LabClient):
    """The lab as scripts and the REPL drive it: commands sent outside the helpers are logged too;
    `guard` is entered around every request (the runner defers Ctrl-C in it). With `dry_run`,
    every command is checked against the lab's descriptions and printed instead of sent."""

    def __init__(self, port: int, *, dry_run: bool = False, address: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, echo: Callable[[str], None] = print) -> None:
        super().__init__(port, address=address, timeout=timeout)
        self.dry_run = dry_run
        self.echo = echo
        self.guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.rehearsed: list[Request] = []
        self._states: dict[str, dict[str, str]] = {}
        self._locked: dict[str, set[str]] = {}

    def request(self, message: Request, timeout: float | None = None) -> Any:
        with self.guard():
            if self.dry_run and not isinstance(message, READS):
                return self._rehearse(message)
            if not _is_command(message) or _acting.get():
                return super().request(message, timeout)
            try:
                reply = super().request(message, timeout)
            except LabError as exc:
                log.warning("send %s %s failed: %s", message.device, message_text(message), exc)
                raise
            log.info("send %s %s: %s", message.device, message_text(message), _short.repr(reply))
            return reply

    # -- dry run ----------------------------------------------------------------------------

    def _rehearse(self, message: Request) -> Any:
        if isinstance(message, StopLab):
            return self._would_send(message, "lab", "stopped")
        if isinstance(message, RestartDevice):
            if message.device not in self.device_names():
                raise UnknownDevice(f"no device {message.device!r}; devices: {', '.join(self.device_names())}",
                                    message.device, "UnknownDevice")
            return self._would_send(message, message.device, "restarting")
        if not isinstance(message, DeviceRequest):
            raise LabError(f"a dry run cannot rehearse {type(message).__name__}; nothing was sent")
        device = message.device
        description = self.describe(device)  # UnknownDevice when the name is wrong
        self._check_accepts(description, message)
        if "valve" in message.payload():
            valve = message.valve
            if valve not in description.valves:
                raise UnknownValve(f"{device} has no valve {valve!r}; valves: {', '.join(description.valves)}")
            states, locked = self._model(device)
            if isinstance(message, GetValveState):
                return states[valve]
            if isinstance(message, (OpenValve, CloseValve)) and valve in locked:
                verb = "open" if isinstance(message, OpenValve) else "close"
                raise DriverError(f"valve {valve} is locked; unlock it before it can {verb} (dry run)",
                                  device, "ValveLocked")
        if isinstance(message, GetValveStates):
            return dict(self._model(device)[0])
        return self._would_send(message, device, self._modelled_reply(message))

    def _check_accepts(self, description: DeviceDescription, message: DeviceRequest) -> None:
        name = type(message).__name__
        if isinstance(message, Call):
            methods = [m.name for m in description.methods]
            if message.method not in methods:
                raise UnknownMessage(f"{description.name} has no method {message.method!r}; methods: "
                                     f"{', '.join(methods)}; nothing was sent", description.name, "UnknownMessage")
        elif name not in description.accepts():
            raise UnknownMessage(f"{description.name} ({description.driver}) does not accept {name}; it accepts: "
                                 f"{', '.join(description.accepts())}; nothing was sent", description.name,
                                 "UnknownMessage")

    def _model(self, device: str) -> tuple[dict[str, str], set[str]]:
        """A valve controller's modelled states and locks, read from the lab the first time."""
        if device not in self._states:
            status = super().request(GetStatus(device=device))
            if isinstance(status, dict) and isinstance(status.get("states"), dict):
                self._states[device] = dict(status["states"])
                self._locked[device] = set(status.get("locked", ()))
            else:
                self._states[device] = dict(super().request(GetValveStates(device=device)))
                self._locked[device] = set()
        return self._states[device], self._locked[device]

    def _modelled_reply(self, message: DeviceRequest) -> Any:
        if isinstance(message, (OpenValve, CloseValve)):
            state = "open" if isinstance(message, OpenValve) else "closed"
            self._model(message.device)[0][message.valve] = state
            return state
        if isinstance(message, LockValve):
            self._model(message.device)[1].add(message.valve)
            return True
        if isinstance(message, UnlockValve):
            self._model(message.device)[1].discard(message.valve)
            return False
        values = list(message.payload().values())
        return values[0] if len(values) == 1 and not isinstance(message, Call) else None

    def _would_send(self, message: Request, target: str, reply: Any) -> Any:
        self.rehearsed.append(message)
        self.echo(f"would send {target} {message_text(message)}")
        return reply


def _is_command(message: Request) -> bool:
    """Whether a request may change something (worth a line in the script's log)."""
    return isinstance(message, (DeviceRequest, RestartDevice, StopLab)) and \
        not isinstance(message, (*READS, GetValveState, GetValveStates))
