"""Every message labctl sends: small frozen attrs classes, importable by this path on every host.

A request names its device and carries a request id (the client stamps both); every request gets
exactly one reply: `Reply` with the result, or `Failure` saying what went wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:  # only Image's annotation names numpy: the CLI and clients start without importing it
    import numpy as np

frozen = attrs.frozen


# -- requests a client sends to a device ------------------------------------------------------

@frozen
class Request:
    """Base of every request; `device` and `request_id` are filled in by the client."""

    device: str = attrs.field(default="", kw_only=True)
    request_id: str = attrs.field(default="", kw_only=True)

    def payload(self) -> dict[str, Any]:
        """The message's own fields (without device and request id), by name."""
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self))
                if f.name not in ("device", "request_id")}


@frozen
class DeviceRequest(Request):
    """A request that maps onto one method of the device's driver."""

    method: ClassVar[str] = ""

    def call(self) -> tuple[str, tuple, dict]:
        """(driver method, positional args, keyword args) this request asks for."""
        return self.method, tuple(self.payload().values()), {}


@frozen
class OpenValve(DeviceRequest):
    """Open a valve of a valve controller."""
    method: ClassVar[str] = "open"
    valve: str


@frozen
class CloseValve(DeviceRequest):
    """Close a valve of a valve controller."""
    method: ClassVar[str] = "close"
    valve: str


@frozen
class GetValveState(DeviceRequest):
    """Ask whether a valve is 'open' or 'closed'."""
    method: ClassVar[str] = "get_state"
    valve: str


@frozen
class GetValveStates(DeviceRequest):
    """Ask every valve's state."""
    method: ClassVar[str] = "get_states"


@frozen
class LockValve(DeviceRequest):
    """Soft-lock a valve so that it refuses to move."""
    method: ClassVar[str] = "lock"
    valve: str


@frozen
class UnlockValve(DeviceRequest):
    """Release a valve's soft lock."""
    method: ClassVar[str] = "unlock"
    valve: str


@frozen
class SetSetpoint(DeviceRequest):
    """Set a temperature controller's setpoint."""
    method: ClassVar[str] = "set_setpoint"
    value: float


@frozen
class GetSetpoint(DeviceRequest):
    """Ask a temperature controller's setpoint."""
    method: ClassVar[str] = "get_setpoint"


@frozen
class ReadTemperature(DeviceRequest):
    """Read a temperature controller's process temperature."""
    method: ClassVar[str] = "read_temperature"


@frozen
class Acquire(DeviceRequest):
    """Acquire one image from a camera; the reply's value is an `Image`."""
    method: ClassVar[str] = "acquire"


@frozen
class SetExposure(DeviceRequest):
    """Set a camera's exposure time, in seconds."""
    method: ClassVar[str] = "set_exposure"
    seconds: float


@frozen
class SetPosition(DeviceRequest):
    """Turn a filter wheel to a position."""
    method: ClassVar[str] = "set_position"
    position: int


@frozen
class GetPosition(DeviceRequest):
    """Ask a filter wheel's or a stage's position."""
    method: ClassVar[str] = "get_position"


@frozen
class MoveTo(DeviceRequest):
    """Move one stage axis to an absolute position."""
    method: ClassVar[str] = "move_to"
    axis: str
    position: float


@frozen
class MoveBy(DeviceRequest):
    """Move one stage axis by a relative amount."""
    method: ClassVar[str] = "move_by"
    axis: str
    delta: float


@frozen
class SetPower(DeviceRequest):
    """Set a light source's power, 0..1."""
    method: ClassVar[str] = "set_power"
    power: float


@frozen
class TurnOn(DeviceRequest):
    """Switch a light source on."""
    method: ClassVar[str] = "turn_on"


@frozen
class TurnOff(DeviceRequest):
    """Switch a light source off."""
    method: ClassVar[str] = "turn_off"


@frozen
class GetStatus(DeviceRequest):
    """Ask a device's own status summary."""
    method: ClassVar[str] = "status"


@frozen
class Call(DeviceRequest):
    """Call any public driver method that has no message of its own."""
    method: str  # type: ignore[misc]  # a field here, where other requests fix it per class
    args: tuple = attrs.field(default=(), converter=tuple)
    kwargs: dict = attrs.field(factory=dict)

    def call(self) -> tuple[str, tuple, dict]:
        return self.method, tuple(self.args), dict(self.kwargs)


DEVICE_MESSAGES: dict[str, type[DeviceRequest]] = {
    cls.__name__: cls for cls in (
        OpenValve, CloseValve, GetValveState, GetValveStates, LockValve, UnlockValve, SetSetpoint,
        GetSetpoint, ReadTemperature, Acquire, SetExposure, SetPosition, GetPosition, MoveTo, MoveBy,
        SetPower, TurnOn, TurnOff, GetStatus, Call)
}
MESSAGE_FOR_METHOD: dict[str, type[DeviceRequest]] = {
    cls.method: cls for cls in DEVICE_MESSAGES.values() if cls is not Call}


# -- requests a client sends to the supervisor ------------------------------------------------

@frozen
class GetLabStatus(Request):
    """Ask the lab's registry: every device's state, pid, restarts."""


@frozen
class DescribeDevice(Request):
    """Ask what a device is and what it accepts (its methods and messages)."""


@frozen
class GetEvents(Request):
    """Ask the lifecycle events after sequence number `since`, waiting up to `wait_s` for one."""
    since: int = 0
    wait_s: float = 0.0


@frozen
class RestartDevice(Request):
    """Restart one device (its whole process) by hand, clearing a failed state."""


@frozen
class StopLab(Request):
    """Stop every device in order; the reply comes once they are all gone."""


@frozen
class InitLab(Request):
    """The keeper hands the supervisor its lab; the reply carries the supervisor's pid."""
    lab: Any = None
    keeper_pid: int = 0
    incarnation: int = 0


# -- replies ----------------------------------------------------------------------------------

@frozen
class Reply:
    """A request's result."""
    request_id: str
    value: Any = None


@frozen
class Failure:
    """A request that could not be done: `kind` says why in one word, `message` in a sentence."""
    request_id: str
    kind: str            # unknown_device, unknown_message, bad_argument, driver_error, restarting,
                         # failed, stopped, starting, not_ready, timeout, lab_error
    error_type: str
    message: str
    device: str = ""
    traceback: str = ""


@attrs.frozen(eq=False)
class Image:
    """An acquired image; numpy arrays always travel wrapped (Thespian mishandles a bare array)."""
    data: np.ndarray
    frame: int = 0
    timestamp: float = 0.0
    lost: int = 0         # in a stream: frames the camera produced just before this one that it missed

    def summary(self) -> dict[str, Any]:
        """Shape, dtype and a few statistics, for printing."""
        data = self.data
        return {"shape": list(data.shape), "dtype": data.dtype.name, "frame": self.frame,
                "timestamp": self.timestamp, "min": data.min().item() if data.size else None,
                "max": data.max().item() if data.size else None,
                "mean": float(data.mean()) if data.size else None}


# -- what the supervisor reports --------------------------------------------------------------

@frozen
class DeviceInfo:
    """One device's line in the lab's registry."""
    name: str
    driver: str
    host: str
    pid: int | None
    state: str           # starting, running, restarting, failed, stopped, lost (its host unreachable)
    restarts: int
    uptime_s: float | None
    last_error: str | None
    degraded: bool = False
    unit: str = ""
    requests: tuple[int, int] = (0, 0)    # requests it answered (by lane or through the supervisor), failed ones

    def as_json(self) -> dict[str, Any]:
        """The fields `labctl status --json` promises, plus `degraded`, `requests` and `failed_requests`."""
        return {"name": self.name, "driver": self.driver, "host": self.host, "pid": self.pid,
                "state": self.state, "restarts": self.restarts,
                "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 3),
                "last_error": self.last_error, "degraded": self.degraded,
                "requests": self.requests[0], "failed_requests": self.requests[1]}


@frozen
class HostInfo:
    """A member host's line in `labctl status`."""
    name: str
    address: str
    state: str           # waiting (has not joined yet), joined, lost
    since: float         # wall-clock time of its last change of state
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "state": self.state, "since": round(self.since, 3),
                "reason": self.reason}


@frozen
class LabStatus:
    """The whole registry, as `labctl status` shows it."""
    request_id: str
    lab: str
    port: int
    devices: tuple[DeviceInfo, ...]
    supervisor_pid: int = 0
    admin_pid: int = 0
    keeper_pid: int = 0
    hosts: tuple[HostInfo, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"lab": self.lab, "port": self.port, "devices": [d.as_json() for d in self.devices],
                "hosts": [h.as_json() for h in self.hosts]}


@frozen
class Event:
    """One lifecycle event: starting, running, crashed, restarting, failed, stopped, degraded,
    recovered, or a device's own change (valve, setpoint, ...)."""
    seq: int
    time: float
    device: str
    kind: str
    detail: dict = attrs.field(factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "device": self.device, "kind": self.kind,
                "detail": self.detail}

    def text(self) -> str:
        """The event as one line for people."""
        detail = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.device}: {self.kind}" + (f" ({detail})" if detail else "")


@frozen
class Events:
    """Reply to GetEvents: the events after `since`, and the latest sequence number."""
    request_id: str
    events: tuple[Event, ...]
    last_seq: int


@frozen
class MethodInfo:
    """One driver method a client may call: its signature and the message that carries it."""
    name: str
    params: tuple[tuple[str, str, bool, Any, str], ...]   # (name, kind, has default, default, annotation)
    doc: str
    message: str          # the typed message class name, or "Call"


@frozen
class DeviceDescription:
    """What a device is and what it accepts; clients build handles from it."""
    name: str
    driver: str
    interfaces: tuple[str, ...]
    methods: tuple[MethodInfo, ...]
    sub_devices: tuple[str, ...] = ()
    valves: dict = attrs.field(factory=dict)      # valve name -> description, for valve controllers
    time_limits: dict = attrs.field(factory=dict)

    def accepts(self) -> list[str]:
        """The message names this device accepts."""
        names = {m.message for m in self.methods}
        return sorted(names | {"Call"})


# -- lanes: clients talking to device processes directly --------------------------------------

@frozen
class Lane:
    """Where one device process serves its devices directly: a Unix socket (same machine) and TCP."""
    unit: str
    pid: int
    devices: tuple[str, ...]
    unix: str                         # the socket's path, '' if none
    tcp: tuple[str, int]              # (address, port)
    machine: str                      # the device's machine (boot): its Unix socket is usable only there
    member: bool = False              # on a member host: requests go through the supervisor (see Lanes.request)


@frozen
class GetLanes(Request):
    """Ask the supervisor where running devices serve their lanes (all, or `device`'s): {device: Lane}."""


@frozen
class WhyEnded(Request):
    """A client's lane to the device's process `pid` closed with `message` in flight: ask the supervisor
    why (it answers once it knows how that process ended) with the failure to raise."""
    pid: int = 0
    message: str = ""


@frozen
class Subscribe(Request):
    """On a lane: send me every frame this camera produces (StreamFrame), or every change this
    other device reports (Notice), from now on."""


@frozen
class FramesTaken:
    """On a lane: I have taken in `count` more frames of this camera's stream (room for that many more)."""
    device: str
    count: int = 1


@frozen
class StreamFrame:
    """A frame of a subscribed camera: an Image (TCP lane) or where it lies in shared memory (Unix lane).
    `frame` numbers the camera's frames; a gap means frames this subscriber did not get."""
    device: str
    frame: int
    image: Any


@frozen
class Notice:
    """On a lane: a change a subscribed device reported (a valve moved or was locked, a setpoint, a
    link lost, a refused actuation), as it happened."""
    device: str
    kind: str
    detail: dict
    time: float


@frozen
class StreamEnd:
    """A subscribed camera's stream stopped (its driver failed, or the device is stopping)."""
    device: str
    error_type: str
    message: str
