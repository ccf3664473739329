"""The client that the CLI, the REPL and scripts use to drive a running lab.

    from labctl.actors.client import connect
    lab = connect(1900)
    lab.send("valves", OpenValve("A"))      # or: lab.valves.open("A")

Each thread talks through its own private Thespian context, every reply is matched by request id,
and a context that saw a timeout is thrown away (THESPIAN.md: a shared context crosses replies
between threads, and a reused one can stall for 33 s after talking to a dead actor).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
from thespian.actors import ActorSystemException, ExternalContext

from . import labkey, processes
from .actorsystem import SUPERVISOR_CLASS, SUPERVISOR_NAME, attach
from .errors import (BadArgument, DeviceError, DeviceUnavailable, DriverError, LabError, LabNotReady, LabNotRunning,
                     LabTimeout, UnknownDevice, UnknownMessage)
from .handles import DeviceHandle, make_handle
from .messages import (DescribeDevice, DeviceDescription, Events, Failure, GetEvents, GetLabStatus, LabStatus, Reply,
                       Request, RestartDevice, StopLab)

DEFAULT_PORT = 1900
DEFAULT_TIMEOUT = 10.0

_FAILURES = {"unknown_device": UnknownDevice, "unknown_message": UnknownMessage, "bad_argument": BadArgument,
             "driver_error": DriverError}


def default_port() -> int:
    """$LABCTL_PORT, else 1900."""
    value = os.environ.get("LABCTL_PORT", "")
    try:
        return int(value) if value else DEFAULT_PORT
    except ValueError:
        raise LabError(f"LABCTL_PORT must be a port number, got {value!r}") from None


def connect(port: int | None = None, *, address: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
            key_file: str | os.PathLike | None = None) -> LabClient:
    """Connect to the lab on `port` (default $LABCTL_PORT, else 1900) with its key (`key_file`, else
    $LABCTL_KEY_FILE, else the one `labctl up` keeps in the run folder); LabNotRunning if none
    answers, NotAuthorised without the key."""
    return LabClient(default_port() if port is None else port, address=address, timeout=timeout, key_file=key_file)


class LabClient:
    """A connection to a running lab. Devices are attributes: `lab.valves.open("A")`."""

    def __init__(self, port: int, address: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
                 key_file: str | os.PathLike | None = None) -> None:
        self.port = port
        self.address = address
        self.timeout = timeout
        if not processes.port_answers(port, address):
            raise LabNotRunning(f"no lab is running on port {port}")
        self._system = attach(port, address, timeout, labkey.for_lab(port, key_file))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._supervisor_address = None
        self._descriptions: dict[str, DeviceDescription] = {}
        self._handles: dict[str, DeviceHandle] = {}
        self._names: list[str] | None = None

    # -- conversations ----------------------------------------------------------------------

    def _context(self) -> ExternalContext:
        context = getattr(self._local, "context", None)
        if context is None:
            context = ExternalContext(self._system._systemBase.external_clone())
            self._local.context = context
        return context

    def _drop_context(self) -> None:
        context, self._local.context = getattr(self._local, "context", None), None
        if context is not None:
            try:
                context.exit_clone()
            except Exception:
                pass  # a context is dropped because it misbehaved; closing it may misbehave too

    def _supervisor(self, context: ExternalContext):
        with self._lock:
            if self._supervisor_address is None:
                self._supervisor_address = context.createActor(SUPERVISOR_CLASS, globalName=SUPERVISOR_NAME)
            return self._supervisor_address

    def request(self, message: Request, timeout: float | None = None) -> Any:
        """Send a request to the lab and return its result; raises the error its failure names."""
        timeout = self.timeout if timeout is None else timeout
        request_id = uuid.uuid4().hex
        message = attrs.evolve(message, request_id=request_id)
        deadline = time.monotonic() + timeout
        for attempt in range(2):
            context = self._context()
            try:
                supervisor = self._supervisor(context)
                reply = context.ask(supervisor, message, max(0.001, deadline - time.monotonic()))
                while reply is None or getattr(reply, "request_id", None) != request_id:
                    remaining = deadline - time.monotonic()
                    if reply is None and remaining > 0.05 and attempt == 0:
                        # ask() gave up early: the supervisor's address is dead (it was restarted).
                        # The request never left, so sending it again cannot repeat an actuation.
                        raise _Undelivered()
                    if remaining <= 0:
                        self._drop_context()
                        raise LabTimeout(f"no reply to {type(message).__name__}"
                                         f"{' for ' + message.device if message.device else ''} "
                                         f"within {timeout:g} s")
                    reply = context.listen(remaining)
                return self._result(reply)
            except (_Undelivered, ActorSystemException):
                self._drop_context()
                with self._lock:
                    self._supervisor_address = None
        raise LabTimeout(f"the lab on port {self.port} does not answer (its supervisor is gone)")

    @staticmethod
    def _result(reply: Any) -> Any:
        if isinstance(reply, Reply):
            return reply.value
        if isinstance(reply, Failure):
            if reply.kind == "not_ready":
                raise LabNotReady(reply.message)
            if reply.kind in ("restarting", "failed", "stopped", "starting"):
                raise DeviceUnavailable(reply.message, reply.device, reply.error_type, reply.traceback, reply.kind)
            cls = _FAILURES.get(reply.kind, DeviceError)
            raise cls(reply.message, reply.device, reply.error_type, reply.traceback)
        return reply

    # -- the lab ----------------------------------------------------------------------------

    def send(self, device: str, message: Request, timeout: float | None = None) -> Any:
        """Send `message` (e.g. OpenValve("A")) to `device` and return the reply's value."""
        if isinstance(message, type):
            raise TypeError(f"send an instance, e.g. {message.__name__}(...), not the class")
        if not isinstance(message, Request):
            raise TypeError(f"expected a labctl message such as OpenValve('A'), got {message!r}")
        return self.request(attrs.evolve(message, device=device), timeout)

    def status(self, timeout: float | None = None) -> LabStatus:
        """Every device's state, pid, restarts, uptime and last error."""
        status = self.request(GetLabStatus(), timeout)
        self._names = [d.name for d in status.devices]
        return status

    def device_names(self) -> list[str]:
        """Names of every device and sub-device of the lab."""
        if self._names is None:
            self.status()
        return list(self._names or [])

    def describe(self, device: str, timeout: float | None = None) -> DeviceDescription:
        """What a device is and what it accepts."""
        if device not in self._descriptions:
            self._descriptions[device] = self.request(DescribeDevice(device=device), timeout)
        return self._descriptions[device]

    def events(self, since: int = 0, wait_s: float = 0.0) -> Events:
        """Lifecycle events after sequence number `since`, waiting up to `wait_s` for one to come."""
        return self.request(GetEvents(since, wait_s), timeout=wait_s + self.timeout)

    def follow(self, since: int | None = None, wait_s: float = 5.0, outage_s: float = 30.0) -> Iterator:
        """Yield events as they happen, forever (from now, or after `since`), through a restart of the
        lab's supervisor or admin (event numbers carry on); LabNotRunning once the lab has not
        answered for `outage_s`."""
        if since is None:
            since = self.events().last_seq
        silent_since = None
        while True:
            try:
                # A short grace beyond the wait: a supervisor that died holding this request is noticed
                # within seconds, and the request goes to its replacement.
                batch = self.request(GetEvents(since, wait_s), timeout=wait_s + 2.0)
            except (LabNotReady, LabTimeout, DeviceError) as exc:
                # The supervisor is being replaced (dead, hung, or new and not yet handed the lab).
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > outage_s:
                    raise LabNotRunning(f"the lab on port {self.port} has not answered for {outage_s:g} s: "
                                        f"{exc}") from None
                time.sleep(0.2)  # a new supervisor is usually there within a fraction of a second
                continue
            silent_since = None
            for event in batch.events:
                yield event
            since = max(since, batch.last_seq) if batch.events else since

    def restart(self, device: str, timeout: float | None = None) -> str:
        """Restart a device's process by hand, clearing a failed state."""
        self._descriptions.pop(device, None)
        return self.request(RestartDevice(device=device), timeout)

    def stop(self, timeout: float | None = None) -> str:
        """Stop every device (the admin keeps running; `labctl down` does the whole shutdown)."""
        return self.request(StopLab(), timeout)

    def device(self, name: str) -> DeviceHandle:
        """A handle whose methods are the device's: `lab.device("furnace").set_setpoint(500)`."""
        if name not in self._handles:
            self._handles[name] = make_handle(self, self.describe(name))
        return self._handles[name]

    def __getattr__(self, name: str) -> DeviceHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.device(name)
        except UnknownDevice:
            raise AttributeError(f"the lab has no device {name!r}; devices: "
                                 f"{', '.join(self.device_names())}") from None
        except DeviceUnavailable as exc:  # attribute access must raise AttributeError (hasattr, completion)
            raise AttributeError(exc.text) from None

    def __dir__(self) -> list[str]:
        try:
            names = [n for n in self.device_names() if "." not in n]
        except LabError:
            names = []
        return sorted(set(super().__dir__()) | set(names))

    def close(self) -> None:
        """Release this client's sockets."""
        self._drop_context()
        try:
            # Attached, not started: close our endpoint only; shutdown() would stop the whole lab.
            self._system._systemBase.transport.close()
        except Exception:
            pass

    def __enter__(self) -> LabClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<labctl lab on port {self.port}>"


class _Undelivered(Exception):
    """The request could not be handed to the supervisor."""
