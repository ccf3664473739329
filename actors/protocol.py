"""The runtime's own protocol: what the supervisor, device processes, probers and reapers tell each
other. Frozen attrs classes, importable by this path on every host; clients never see them."""

from __future__ import annotations

from typing import Any

import attrs

from .messages import DeviceDescription, Request

frozen = attrs.frozen


@frozen
class StartUnit:
    """Supervisor -> DeviceHost: what you will run; answer UnitStarted, then wait for Construct."""
    unit: str
    incarnation: int
    devices: tuple            # config.Device entries
    candidates: dict          # device name -> candidate index, for floating devices
    supervision: Any          # the unit's config.Supervision: heartbeats, time limits
    run_dir: str
    max_argument_bytes: int = 1 << 20   # [lab] max_argument_bytes: larger call arguments are refused
    supervisor_pid: int = 0             # a process whose parent this is needs no watchdog on its silence
    log_dir: str = ""                   # where a process on the supervisor's machine writes its logs
    lab_port: int = 0                   # names the lab's frame rings in shared memory
    locks: dict = attrs.field(factory=dict)   # device -> {valve: locked}, kept from earlier runs


@frozen
class UnitStarted:
    """DeviceHost -> supervisor: my pid, before I open any hardware (so a hang can be killed)."""
    unit: str
    incarnation: int
    pid: int
    started: int = 0    # its start time on its own host: with the pid, names this very process there


@frozen
class Construct:
    """Supervisor -> DeviceHost: your pid is known; construct your drivers now."""
    incarnation: int


@frozen
class Hung:
    """DeviceHost -> supervisor: a driver call has run past its time limit; kill this process.
    The requests queued behind it never started; the supervisor tells their clients so."""
    unit: str
    incarnation: int
    method: str
    limit_s: float
    request_id: str = ""
    not_started: tuple = ()


@frozen
class NotStarted:
    """DeviceHost -> supervisor: these requests will never run here (it is hung); tell their clients."""
    unit: str
    incarnation: int
    request_ids: tuple
    why: str


@frozen
class UnitReady:
    """DeviceHost -> supervisor: drivers constructed, here is what they are."""
    unit: str
    incarnation: int
    pid: int
    devices: tuple[DeviceDescription, ...]
    lane: Any = None                    # messages.Lane: where clients reach this process directly



@frozen
class UnitFailed:
    """DeviceHost -> supervisor: a driver could not be constructed."""
    unit: str
    incarnation: int
    pid: int
    error_type: str
    message: str
    traceback: str


@frozen
class Deliver:
    """Supervisor -> DeviceHost: a client's request, with where to send the reply."""
    request: Request
    reply_to: Any


@frozen
class Done:
    """DeviceHost -> supervisor: a delivered request has been answered."""
    unit: str
    request_id: str
    failed: bool = False


@frozen
class LaneDone:
    """DeviceHost -> supervisor, about once a second while clients use its lane: requests it answered
    there since the last report, per device (answered, failed), and the latest failures."""
    unit: str
    incarnation: int
    counts: dict                        # device -> (answered, failed)
    failures: tuple = ()                # (device, error type, text), the last few


@frozen
class Ping:
    """Supervisor -> DeviceHost heartbeat."""
    seq: int


@frozen
class Pong:
    """DeviceHost -> supervisor heartbeat answer."""
    unit: str
    incarnation: int
    seq: int


@frozen
class DeviceNotice:
    """DeviceHost -> supervisor: a device reported a change, or its link went down or came back."""
    unit: str
    device: str
    kind: str
    detail: dict = attrs.field(factory=dict)


@frozen
class Reap:
    """Supervisor -> HostAgent: kill this device process on your host (the one that started at
    `started`), answer Reaped once it is gone."""
    pid: int
    host: str = ""
    started: int = 0


@frozen
class Reaped:
    """HostAgent -> supervisor: the process is gone (or `gone` is False: it would not die)."""
    pid: int
    host: str
    gone: bool


@frozen
class HostPing:
    """Supervisor -> HostAgent: a host heartbeat; also how long the agent may hear none."""
    host: str
    seq: int
    watchdog_s: float


@frozen
class HostPong:
    """HostAgent -> supervisor: heartbeat answer from a member host."""
    host: str
    seq: int


@frozen
class ProbeRequest:
    """Supervisor -> Prober: open each candidate of a floating driver and read its id."""
    key: str
    driver: str
    conf: dict


@frozen
class ProbeResult:
    """Prober -> supervisor: uid -> candidate index, and candidates that could not be opened."""
    key: str
    found: dict
    errors: dict
    error: str = ""
