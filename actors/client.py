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
from datetime import timedelta
from collections.abc import Iterator
from typing import Any

import attrs

from . import labkey, processes
from .errors import (BadArgument, DeviceError, DeviceUnavailable, DriverError, LabError, LabNotReady, LabNotRunning,
                     LabTimeout, UnknownDevice, UnknownMessage)
from .handles import DeviceHandle, make_handle
from .laneclient import Lanes, Notices, NotTaken, Stream
from .messages import (DescribeDevice, DeviceDescription, DeviceRequest, Events, Failure, GetEvents, GetLabStatus,
                       LabStatus, Reply, Request, RestartDevice, StopLab)

DEFAULT_PORT = 1900
DEFAULT_TIMEOUT = 10.0
_CREATE_LOCK = threading.Lock()

_FAILURES = {"unknown_device": UnknownDevice, "unknown_message": UnknownMessage, "bad_argument": BadArgument,
             "driver_error": DriverError}


def default_port() -> int:
    """$LABCTL_PORT, else 1900."""
    value = os.environ.get("LABCTL_PORT", "")
    try:
        return int(value) if value else DEFAULT_PORT
    except ValueError:
        raise LabError(f"LABCTL_PORT must be a port number, got {value!r}") from None


def default_address(port: int) -> str:
    """Where the lab on `port` listens: $LABCTL_ADDRESS, else the bind address `labctl up` recorded
    on this machine, else loopback."""
    if os.environ.get("LABCTL_ADDRESS"):
        return os.environ["LABCTL_ADDRESS"]
    from . import runstate

    try:
        record = runstate.read(port)
    except LabError:
        record = None
    bind = record.bind if record is not None else ""
    # A lab bound to every interface answers on loopback too.
    return bind if bind and bind != "0.0.0.0" else "127.0.0.1"


def connect(port: int | None = None, *, address: str | None = None, timeout: float = DEFAULT_TIMEOUT,
            key_file: str | os.PathLike | None = None, lane: str | None = None, attach: bool = True,
            via_supervisor: bool = True) -> LabClient:
    """Connect to the lab on `port` (default $LABCTL_PORT, else 1900) with its key (`key_file`, else
    $LABCTL_KEY_FILE, else the one `labctl up` keeps in the run folder); LabNotRunning if none
    answers, NotAuthorised without the key.

    `lane` says how device requests travel: "auto" (the default, or $LABCTL_LANE): straight to the
    device's process, by Unix socket on the same machine (frames through shared memory) and TCP
    from another; "unix" or "tcp" force one; "off" sends everything through the supervisor.

    With `attach=False` the lab's admin is first contacted when a request needs the supervisor: a
    device request whose lane is published in the run folder then needs no actor runtime at all.
    With `via_supervisor=False` it never does: device requests go by the lanes published in the run
    folder only (a lab's own gateway, running inside an actor process, uses this)."""
    port = default_port() if port is None else port
    return LabClient(port, address=address or default_address(port), timeout=timeout, key_file=key_file,
                     lane=lane, attach=attach and via_supervisor, via_supervisor=via_supervisor)


class LabClient:
    """A connection to a running lab. Devices are attributes: `lab.valves.open("A")`."""

    def __init__(self, port: int, address: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 key_file: str | os.PathLike | None = None, lane: str | None = None, attach: bool = True,
                 via_supervisor: bool = True) -> None:
        self.port = port
        self.address = address = address or default_address(port)
        self.timeout = timeout
        if not processes.port_answers(port, address):
            raise LabNotRunning(f"no lab is running on port {port}")
        self._key = labkey.for_lab(port, key_file)
        self._via_supervisor = via_supervisor
        self._lanes = Lanes(self, self._key, lane or os.environ.get("LABCTL_LANE") or "auto",
                            published_only=not via_supervisor)
        self._attached = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._supervisor_address = None
        self._descriptions: dict[str, DeviceDescription] = {}
        self._handles: dict[str, DeviceHandle] = {}
        self._names: list[str] | None = None
        if attach:
            self._system  # noqa: B018 (attaching now says at once whether the lab answers with this key)

    @property
    def _system(self):
        """The attached actor system, attached on first use (the actor runtime is imported only then)."""
        if self._attached is None:
            from .actorsystem import attach

            with self._lock:
                if self._attached is None:
                    self._attached = attach(self.port, self.address, self.timeout, self._key)
        return self._attached

    # -- conversations ----------------------------------------------------------------------

    def _context(self):
        context = getattr(self._local, "context", None)
        if context is None:
            from thespian.actors import ExternalContext

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

    def _supervisor(self, context, timeout: float):
        """The supervisor's address, looked up by its global name (the admin answers) within `timeout`."""
        import thespian.system.systemBase as system_base

        from .actorsystem import SUPERVISOR_CLASS, SUPERVISOR_NAME

        with self._lock:
            if self._supervisor_address is None:
                # Thespian waits up to 50 s for an admin that does not answer (one SIGSTOPped, say):
                # bound the lookup by this request's time. A lock of the module's: the delay is
                # Thespian's global, shared by every client of this process.
                with _CREATE_LOCK:
                    saved = system_base.MAX_CHILD_ACTOR_CREATE_DELAY
                    system_base.MAX_CHILD_ACTOR_CREATE_DELAY = timedelta(seconds=max(0.05, timeout))
                    try:
                        self._supervisor_address = context.createActor(SUPERVISOR_CLASS,
                                                                       globalName=SUPERVISOR_NAME)
                    finally:
                        system_base.MAX_CHILD_ACTOR_CREATE_DELAY = saved
                if self._supervisor_address is None:
                    self._drop_context()  # one that timed out may stall the next ask
                    raise LabTimeout(f"the lab's admin on port {self.port} does not answer (within {timeout:g} s)")
            return self._supervisor_address

    def request(self, message: Request, timeout: float | None = None) -> Any:
        """Send a request to the lab and return its result; raises the error its failure names.

        A device request goes straight to the device's process by its lane when there is one;
        everything else (and a device request that cannot take a lane) goes through the supervisor."""
        timeout = self.timeout if timeout is None else timeout
        message = attrs.evolve(message, request_id=uuid.uuid4().hex)
        if isinstance(message, DeviceRequest):
            try:
                return self._result(self._lanes.request(message, timeout))
            except NotTaken:
                if not self._via_supervisor:
                    raise DeviceUnavailable(f"{message.device}: no lane to it is published (not running?); "
                                            f"{type(message).__name__} was not sent", message.device,
                                            "DeviceUnavailable") from None
                # nothing was sent: the supervisor carries it
        return self._ask(message, timeout)

    def _ask(self, message: Request, timeout: float) -> Any:
        """Send a request (its id stamped) through the supervisor and return its result."""
        from thespian.actors import ActorSystemException

        request_id = message.request_id
        deadline = time.monotonic() + timeout
        for attempt in range(2):
            context = self._context()
            try:
                supervisor = self._supervisor(context, max(0.001, deadline - time.monotonic()))
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

    def notices(self, device: str, timeout: float | None = None) -> Notices:
        """A device's changes as it reports them (valves moved or locked, setpoints, links): iterate
        for Notice messages, each waited for up to `timeout` s (None: as long as it takes)."""
        return Notices(self._lanes, device, timeout)

    def stream(self, device: str, n: int | None = None, timeout: float | None = None) -> Stream:
        """A camera's frames as it produces them (`n` of them, or until closed): iterate for Images
        numbered by `frame`, each with `lost`, the frames missed just before it."""
        return Stream(self._lanes, device, n, self.timeout if timeout is None else timeout)

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
        self._lanes.close()
        if self._attached is None:
            return
        try:
            # Attached, not started: close our endpoint only; shutdown() would stop the whole lab.
            self._attached._systemBase.transport.close()
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
