"""Supervisor: the one actor that owns a lab's registry and supervises its device hosts.

It creates one DeviceHost per unit (a device, or a shared group) on the unit's host, routes every
client request to it and remembers what is in flight, restarts units under OTP's rules (restart
type, strategy within a supervision group, intensity, back-off), kills hosts that stop answering
heartbeats, resolves floating devices with Probers, and keeps the lifecycle events.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from datetime import timedelta
from typing import Any

import attrs
from thespian.actors import Actor, ActorExitRequest, ChildActorExited, PoisonMessage, WakeupMessage

from labctl.config.schema import Lab, Unit

from . import policy, processes, runstate
from .actorsystem import EXIT_CODES, HOST_CAPABILITY, local_child_pid
from .devicehost import DeviceHost
from .messages import (Construct, Deliver, DescribeDevice, DeviceDescription, DeviceInfo, DeviceNotice,
                       DeviceRequest, Done, Event, Events, Failure, GetEvents, GetLabStatus, Hung, InitLab, LabStatus,
                       NotStarted, Ping, Pong, ProbeRequest, ProbeResult, Reap, Reaped, Reply, Request, RestartDevice,
                       StartUnit, StopLab, UnitFailed, UnitReady, UnitStarted)
from .processes import exit_cause
from .prober import Prober
from .reaper import Reaper

log = logging.getLogger("labctl.supervisor")

EVENTS_KEPT = 2000
PROBE_FIRST_S = 0.5
REAP_TIMEOUT_S = 5.0      # a Reaper itself waits up to 2 s for its process to go
REAP_MARGIN_S = 1.0
INIT_GRACE_S = 1.0
EXIT_RECHECK_S = 0.005


@attrs.define
class UnitState:
    """What the supervisor knows of one unit (one DeviceHost process)."""

    spec: Unit
    intensity: policy.Intensity
    state: str = "starting"
    address: Any = None
    pid: int | None = None
    incarnation: int = 0
    restarts: int = 0
    consecutive: int = 0          # quick restarts in a row, for back-off
    running_since: float | None = None
    last_error: str | None = None
    descriptions: dict = attrs.Factory(dict)
    ping_seq: int = 0
    pong_seq: int = 0
    misses: int = 0
    exit_plan: str | None = None  # why we asked it to end: "restart", "stop" or "fail"
    kill_reason: str | None = None
    failure: str | None = None    # its drivers could not be constructed: why
    start_token: int = 0          # a launch wakeup is valid only with the current token
    candidates: dict | None = None
    pending_probes: dict = attrs.Factory(dict)
    probe_attempts: int = 0
    waiting: bool = False         # failed only because its unit or host is not there (yet)
    reaping: bool = False         # a process of a previous supervisor may still run it: wait
    constructing_since: float | None = None   # when Construct was sent; None once ready
    degraded: set = attrs.Factory(set)

    @property
    def name(self) -> str:
        return self.spec.name


@attrs.define
class InFlight:
    """A request delivered to a device host and not yet answered."""

    unit: str
    reply_to: Any
    device: str
    message: str


class Supervisor(Actor):
    """Supervises every device host of one lab and answers the lab's clients."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lab: Lab | None = None
        self.keeper_pid = 0
        self.run_dir = ""
        self.units: dict[str, UnitState] = {}
        self.unit_of: dict[str, str] = {}         # device name (sub-devices too) -> unit name
        self.group_of: dict[str, list[str]] = {}  # unit name -> units of its supervision group
        self.inflight: dict[str, InFlight] = {}
        self.probers: list[tuple[Any, str]] = []   # (address, probe key); addresses are unhashable
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self.seq = 0
        self.waiters: dict[int, tuple[Any, str, int]] = {}
        self.waiter_token = 0
        self.stopping = False
        self.stop_waiters: list[tuple[Any, str]] = []
        self.remote_file = ""
        self.remote_pids: dict[str, tuple[str, int]] = {}   # unit -> (host, pid) of remote processes
        self.reaps: list[tuple[str, int, str]] = []          # (host, pid, unit) waiting for a Reaper

    # -- dispatch ---------------------------------------------------------------------------

    def receiveMessage(self, message, sender):
        try:
            self.dispatch(message, sender)
        except Exception as exc:  # never escape: Thespian would hand us the same message again
            log.exception("supervisor: error handling %s", type(message).__name__)
            if isinstance(message, Request):
                self.send(sender, Failure(message.request_id, "lab_error", type(exc).__name__,
                                          f"the supervisor could not handle {type(message).__name__}: {exc}",
                                          message.device))

    def dispatch(self, message, sender) -> None:
        """Route one message to its handler."""
        if isinstance(message, DeviceRequest):
            if self.ready_for(message, sender):
                self.route(message, sender)
        elif isinstance(message, Done):
            self.inflight.pop(message.request_id, None)
        elif isinstance(message, Pong):
            unit = self.units.get(message.unit)
            if unit is not None and unit.incarnation == message.incarnation:
                unit.pong_seq = max(unit.pong_seq, message.seq)
        elif isinstance(message, WakeupMessage):
            self.wakeup(message.payload)
        elif isinstance(message, ChildActorExited):
            self.child_exited(message.childAddress)
        elif isinstance(message, UnitStarted):
            self.unit_started(message)
        elif isinstance(message, Hung):
            self.hung(message)
        elif isinstance(message, NotStarted):
            self.not_started(message.request_ids, message.why)
        elif isinstance(message, Reaped):
            self.reaped(message)
        elif isinstance(message, UnitReady):
            self.unit_ready(message)
        elif isinstance(message, UnitFailed):
            self.unit_failed(message)
        elif isinstance(message, DeviceNotice):
            self.device_notice(message)
        elif isinstance(message, ProbeResult):
            self.probe_result(message)
        elif isinstance(message, InitLab):
            self.init_lab(message, sender)
        elif isinstance(message, Request):
            if self.ready_for(message, sender):
                self.admin_request(message, sender)
        elif isinstance(message, ActorExitRequest):
            log.info("supervisor exiting; Thespian stops every device host")
        elif isinstance(message, PoisonMessage):
            log.warning("a message could not be handled by its receiver: %r", message.poisonMessage)

    def ready_for(self, request: Request, sender) -> bool:
        """True once the lab is known; otherwise answer the request 'not ready'."""
        if self.lab is None:
            self.send(sender, Failure(request.request_id, "not_ready", "LabNotReady",
                                      "the lab on this port is still starting; try again in a moment",
                                      request.device))
            return False
        return True

    def admin_request(self, request: Request, sender) -> None:
        """Answer a request addressed to the lab rather than to a device."""
        if isinstance(request, GetLabStatus):
            self.send(sender, self.status(request.request_id))
        elif isinstance(request, GetEvents):
            self.get_events(request, sender)
        elif isinstance(request, DescribeDevice):
            self.describe(request, sender)
        elif isinstance(request, RestartDevice):
            self.restart_by_hand(request, sender)
        elif isinstance(request, StopLab):
            self.stop_lab(request, sender)
        else:
            self.send(sender, Failure(request.request_id, "unknown_message", "UnknownMessage",
                                      f"the supervisor does not handle {type(request).__name__}", request.device))

    # -- start-up ---------------------------------------------------------------------------

    def init_lab(self, message: InitLab, sender) -> None:
        """Take the lab from the keeper and start every unit (a repeat only updates the keeper)."""
        if self.lab is None:
            self.lab, self.keeper_pid = message.lab, message.keeper_pid
            self.run_dir = str(runstate.lab_dir(self.lab.port))
            self.remote_file = os.path.join(self.run_dir, "remote-pids.json")
            for unit in self.lab.units():
                sup = unit.supervision
                self.units[unit.name] = UnitState(unit, policy.Intensity(sup.max_restarts, sup.within_s))
                for device in unit.devices:
                    self.unit_of[device.name] = unit.name
            for _, members in self.lab.supervision_groups():
                for member in members:
                    self.group_of[member] = members
            log.info("lab %s: starting %d devices in %d processes", self.lab.name, len(self.lab.devices),
                     len(self.units))
            if message.incarnation:
                self.event("lab", "recovered", supervisor=message.incarnation, pid=os.getpid())
                self.reap_previous()
            for unit in self.units.values():
                self.emit(unit, "starting")
                self.launch(unit)
        else:
            self.keeper_pid = message.keeper_pid
        self.send(sender, Reply(message.request_id, {"pid": os.getpid(), "admin_pid": os.getppid()}))

    def launch(self, unit: UnitState) -> None:
        """Create the unit's host process (probing its floating devices first)."""
        if self.stopping or unit.reaping:
            return
        floating = [d for d in unit.spec.devices if d.uid is not None]
        if floating and unit.candidates is None:
            self.probe(unit, floating)
            return
        candidates, unit.candidates = unit.candidates or {}, None  # each (re)start probes afresh
        try:
            address = self.createActor(DeviceHost, targetActorRequirements={HOST_CAPABILITY: unit.spec.host})
        except Exception as exc:
            self.start_impossible(unit, f"cannot create a process on host {unit.spec.host!r}: {exc}")
            return
        unit.incarnation += 1
        unit.address, unit.pid = address, local_child_pid(self, address)
        unit.ping_seq = unit.pong_seq = unit.misses = 0
        unit.exit_plan = unit.kill_reason = unit.failure = None
        sup = unit.spec.supervision
        self.send(address, StartUnit(unit.name, unit.incarnation, unit.spec.devices, candidates, sup, self.run_dir,
                                     self.lab.max_argument_bytes))
        # The host's own alarm ends a constructor that takes too long; this is the backstop.
        self.after(sup.init_timeout_s + INIT_GRACE_S, ("init_timeout", unit.name, unit.incarnation))

    def probe(self, unit: UnitState, floating: list) -> None:
        """Start one Prober per floating device of a unit, on the device's host."""
        unit.pending_probes = {}
        for device in floating:
            prober = self.createActor(Prober, targetActorRequirements={HOST_CAPABILITY: device.host})
            key = f"{unit.name}/{device.name}/{unit.start_token}"
            unit.pending_probes[key] = None
            self.probers.append((prober, key))
            self.send(prober, ProbeRequest(key, device.driver, device.fresh_conf()))

    def probe_result(self, result: ProbeResult) -> None:
        """Collect probe results; launch the unit once every uid is found, else fail and retry."""
        unit_name, device_name, token = result.key.split("/")
        unit = self.units.get(unit_name)
        if unit is None or result.key not in unit.pending_probes or int(token) != unit.start_token:
            return
        unit.pending_probes[result.key] = result
        if any(r is None for r in unit.pending_probes.values()):
            return
        candidates, missing = {}, []
        for key, res in unit.pending_probes.items():
            device = self.lab.device(key.split("/")[1])
            if device.uid in res.found:
                candidates[device.name] = res.found[device.uid]
            else:
                found = ", ".join(sorted(res.found)) or "none"
                why = f" ({res.error.splitlines()[0]})" if res.error else ""
                missing.append(f"{device.name}: unit {device.uid} is not present; units found: {found}{why}")
        unit.pending_probes = {}
        if missing:
            self.start_impossible(unit, "; ".join(missing))
            return
        unit.candidates, unit.probe_attempts = candidates, 0
        self.launch(unit)

    def start_impossible(self, unit: UnitState, reason: str) -> None:
        """A unit that cannot start yet (unit not plugged in, host absent): failed, retried with back-off."""
        delay = policy.backoff_delay(unit.probe_attempts, PROBE_FIRST_S, unit.spec.supervision.probe_backoff_max_s)
        unit.probe_attempts += 1
        unit.waiting = True
        if unit.state == "failed" and unit.last_error == reason:
            log.debug("%s: still %s; next try in %.1f s", unit.name, reason, delay, extra={"device": unit.name})
        else:  # say it once, not at every retry
            unit.state, unit.last_error = "failed", reason
            self.emit(unit, "failed", reason=reason, retry_in_s=round(delay, 3))
        unit.start_token += 1
        self.after(delay, ("launch", unit.name, unit.start_token))

    def unit_started(self, message: UnitStarted) -> None:
        """A unit's process reported its pid: remember it (on file, if remote), then let it construct."""
        unit = self.units.get(message.unit)
        if unit is None or unit.incarnation != message.incarnation or unit.address is None:
            return
        unit.pid = message.pid
        if self.remote(unit):
            self.remote_pids[unit.name] = (unit.spec.host, message.pid)
            self.save_remote_pids()
        unit.constructing_since = time.monotonic()
        self.send(unit.address, Construct(unit.incarnation))

    def hung(self, message: Hung) -> None:
        """A device host reports a driver call past its time limit: kill it, it cannot recover."""
        unit = self.units.get(message.unit)
        self.not_started(message.not_started, f"{message.unit} hung on {message.method}")
        if unit is not None and unit.incarnation == message.incarnation and unit.address is not None:
            limit = (f"its time limit of {message.limit_s:g} s" if message.method in self.declared_limits(unit)
                     else f"{message.limit_s:g} s (no time limit declared: heartbeat_s x heartbeat_misses)")
            self.kill(unit, f"hung: {message.method} ran past {limit}")

    def not_started(self, request_ids, why: str) -> None:
        """Tell the clients of requests a device host never started that they were not carried out."""
        for request_id in request_ids:
            flight = self.inflight.pop(request_id, None)
            if flight is not None:
                self.send(flight.reply_to, Failure(
                    request_id, "restarting", "DeviceUnavailable",
                    f"{flight.device}: {flight.message} was not started ({why}); it was not carried out",
                    flight.device))

    @staticmethod
    def declared_limits(unit: UnitState) -> set[str]:
        return {method for d in unit.descriptions.values() for method in d.time_limits}

    def save_remote_pids(self) -> None:
        """Keep the pids of remote device processes on file, for a supervisor that replaces this one."""
        runstate.write_json(self.remote_file, {name: list(where) for name, where in self.remote_pids.items()})

    def reap_previous(self) -> None:
        """Kill the remote device processes a dead predecessor left (their hosts outlive it) before
        their units start again: two processes must never drive one device."""
        for name, (host, pid) in runstate.read_json(self.remote_file).items():
            unit = self.units.get(name)
            if unit is None:
                continue
            unit.reaping = True
            self.reaps.append((host, pid, name))
            reaper = self.createActor(Reaper, targetActorRequirements={HOST_CAPABILITY: host})
            self.send(reaper, Reap(pid, host))
            # If no reaper confirms (its host is unreachable), the old process ends by itself once
            # its watchdog hears no heartbeat; launch only after that.
            self.after(unit.spec.supervision.watchdog_s + REAP_MARGIN_S, ("reap_deadline", name, pid))

    def reaped(self, message: Reaped) -> None:
        """A reaper is done: launch the unit that waited for it, if its old process is gone."""
        for host, pid, name in list(self.reaps):
            if (host, pid) == (message.host, message.pid) and message.gone:
                self.reaps.remove((host, pid, name))
                self.reap_finished(name)

    def reap_finished(self, name: str) -> None:
        unit = self.units[name]
        if unit.reaping:
            unit.reaping = False
            self.launch(unit)

    def unit_ready(self, message: UnitReady) -> None:
        """A unit's drivers are up: running, heartbeats start."""
        unit = self.units.get(message.unit)
        if unit is None or unit.incarnation != message.incarnation or unit.address is None:
            return
        unit.state, unit.pid, unit.running_since = "running", message.pid, time.monotonic()
        unit.constructing_since = None
        if unit.waiting:  # it was waiting for its unit or host, not crashing: that error is over
            unit.last_error, unit.waiting = None, False
        unit.descriptions = {d.name: d for d in message.devices}
        unit.degraded.clear()
        for description in message.devices:
            self.unit_of[description.name] = unit.name
            for sub in description.sub_devices:
                self.unit_of[sub] = unit.name
        self.emit(unit, "running", pid=message.pid)
        if self.stopping:
            self.end(unit, "stop")
            return
        self.after(unit.spec.supervision.heartbeat_s, ("beat", unit.name, unit.incarnation))

    def unit_failed(self, message: UnitFailed) -> None:
        """Keep why a unit's drivers could not be constructed (its process exits next)."""
        unit = self.units.get(message.unit)
        if unit is None or unit.incarnation != message.incarnation:
            return
        unit.failure = f"{message.error_type}: {message.message}"
        log.error("%s could not be constructed: %s\n%s", unit.name, unit.failure, message.traceback,
                  extra={"device": unit.name})

    # -- requests ---------------------------------------------------------------------------

    def route(self, request: DeviceRequest, sender) -> None:
        """Deliver a device request to its unit's process, or answer at once why not."""
        name = request.device
        unit = self.units.get(self.unit_of.get(name, ""))
        if unit is None:
            self.send(sender, self.unknown_device(request))
            return
        if unit.state != "running" or unit.address is None:
            self.send(sender, self.unavailable(request.request_id, unit, name, type(request).__name__))
            return
        if name not in unit.descriptions:
            self.send(sender, self.composite(request.request_id, unit, name))
            return
        self.inflight[request.request_id] = InFlight(unit.name, sender, name, type(request).__name__)
        self.send(unit.address, Deliver(request, sender))

    def unavailable(self, request_id: str, unit: UnitState, device: str, what: str) -> Failure:
        """The failure for a request to a unit that is not running."""
        if unit.state == "failed":
            text = f"{device} has failed: {unit.last_error}; {what} was not sent"
        elif unit.state == "stopped":
            text = f"{device} is stopped; {what} was not sent"
        else:
            text = f"{device} is {unit.state}; {what} was not sent, try again when it is running"
        return Failure(request_id, unit.state, "DeviceUnavailable", text, device)

    def composite(self, request_id: str, unit: UnitState, name: str) -> Failure:
        """The failure for a request addressed to a factory's own name."""
        parts = ", ".join(n for n in unit.descriptions if n.startswith(name + ".")) or "none"
        return Failure(request_id, "unknown_device", "UnknownDevice",
                       f"{name} is a composite device; address its parts: {parts}", name)

    def unknown_device(self, request: Request) -> Failure:
        """The failure for a request to a name no device has: it lists the names there are."""
        return Failure(request.request_id, "unknown_device", "UnknownDevice",
                       f"no device {request.device!r}; devices: {', '.join(self.unit_of)}", request.device)

    def remote(self, unit: UnitState) -> bool:
        """Whether a unit runs on another host than this supervisor's."""
        return unit.spec.host != self.lab.host

    def status(self, request_id: str) -> LabStatus:
        """The registry as LabStatus, one line per device and sub-device."""
        now = time.monotonic()
        infos = []
        for unit in self.units.values():
            uptime = now - unit.running_since if unit.running_since is not None and unit.state == "running" else None
            for device in unit.spec.devices:
                names = [device.name] + sorted(n for n, u in self.unit_of.items()
                                               if u == unit.name and n.startswith(device.name + "."))
                for name in names:
                    description = unit.descriptions.get(name)
                    driver = (device.driver or device.factory) if name == device.name else \
                        (description.driver if description else "")
                    infos.append(DeviceInfo(name, driver, unit.spec.host, unit.pid, unit.state, unit.restarts,
                                            uptime, unit.last_error, name.split(".")[0] in unit.degraded
                                            or name in unit.degraded, unit.name))
        return LabStatus(request_id, self.lab.name, self.lab.port, tuple(infos), os.getpid(), os.getppid(),
                         self.keeper_pid)

    def describe(self, request: DescribeDevice, sender) -> None:
        """Answer DescribeDevice from the descriptions units sent when ready."""
        name = request.device
        unit = self.units.get(self.unit_of.get(name, ""))
        if unit is None:
            self.send(sender, self.unknown_device(request))
        elif name in unit.descriptions and unit.state == "running":
            self.send(sender, Reply(request.request_id, unit.descriptions[name]))
        elif unit.state == "running":
            # A factory's own name: described by its parts alone, so that `lab.scope.camera` works.
            device = self.lab.device(name)
            parts = tuple(n for n in unit.descriptions if n.startswith(name + "."))
            self.send(sender, Reply(request.request_id, DeviceDescription(name, device.factory, (), (), parts)))
        else:
            self.send(sender, self.unavailable(request.request_id, unit, name, "DescribeDevice"))

    def get_events(self, request: GetEvents, sender) -> None:
        """Answer GetEvents now, or hold it until an event comes or `wait_s` passes."""
        newer = tuple(e for e in self.events if e.seq > request.since)
        if newer or request.wait_s <= 0:
            self.send(sender, Events(request.request_id, newer, self.seq))
            return
        self.waiter_token += 1
        self.waiters[self.waiter_token] = (sender, request.request_id, request.since)
        self.after(request.wait_s, ("events", self.waiter_token))

    def restart_by_hand(self, request: RestartDevice, sender) -> None:
        """`labctl restart`: clear the unit's history and restart it now."""
        unit = self.units.get(self.unit_of.get(request.device, ""))
        if unit is None:
            self.send(sender, self.unknown_device(request))
            return
        if self.stopping:
            if self.stop_waiters or any(u.address is not None for u in self.units.values()):
                self.send(sender, Failure(request.request_id, "stopping", "LabStopping",
                                          f"the lab is stopping; {request.device} was not restarted", request.device))
                return
            self.stopping = False  # the stop is over: the owner brings devices back one by one
        unit.intensity.reset()
        unit.consecutive = unit.probe_attempts = 0
        self.emit(unit, "restarting", by="hand", attempt=0, delay_s=0)
        unit.state = "restarting"
        if unit.address is not None:
            self.end(unit, "restart")
        else:
            unit.start_token += 1
            unit.candidates = None
            self.launch(unit)
        self.send(sender, Reply(request.request_id, f"{unit.name} restarting"))

    def stop_lab(self, request: StopLab, sender) -> None:
        """Stop every unit; StopLab is answered once all have exited."""
        self.stopping = True
        self.stop_waiters.append((sender, request.request_id))
        for prober, _ in self.probers:
            self.send(prober, ActorExitRequest())
        for unit in self.units.values():
            unit.start_token += 1  # cancels pending launches
            if unit.address is not None:
                self.end(unit, "stop")
            else:
                self.settle(unit, "stopped")
        self.check_stopped()

    def check_stopped(self) -> None:
        """Answer pending StopLab requests once no unit has a process."""
        if self.stopping and all(u.address is None for u in self.units.values()):
            for sender, request_id in self.stop_waiters:
                self.send(sender, Reply(request_id, "stopped"))
            self.stop_waiters.clear()

    # -- supervision ------------------------------------------------------------------------

    def end(self, unit: UnitState, plan: str) -> None:
        """Ask a unit's process to exit (for a restart, a stop, or because its group failed)."""
        unit.exit_plan = plan
        self.send(unit.address, ActorExitRequest())
        self.after(unit.spec.supervision.stop_timeout_s, ("kill", unit.name, unit.incarnation))

    def kill(self, unit: UnitState, reason: str) -> None:
        """End a unit's process that does not answer: SIGKILL by pid."""
        unit.kill_reason = unit.kill_reason or reason
        log.error("%s: %s; killing pid %s", unit.name, reason, unit.pid, extra={"device": unit.name})
        if unit.pid and not self.remote(unit) and processes.parent_of(unit.pid) == os.getpid():
            try:
                os.kill(unit.pid, signal.SIGKILL)
                return  # ChildActorExited follows in a few milliseconds
            except ProcessLookupError:
                pass
        elif unit.pid and self.remote(unit):
            # A remote process: a Reaper on its host kills it. If that host is gone too, no exit
            # will ever be reported, so the unit is handled as ended after REAP_TIMEOUT_S.
            reaper = self.createActor(Reaper, targetActorRequirements={HOST_CAPABILITY: unit.spec.host})
            self.send(reaper, Reap(unit.pid, unit.spec.host))
            self.after(REAP_TIMEOUT_S, ("reaped", unit.name, unit.incarnation))
            return
        self.child_exited(unit.address)

    def child_exited(self, address) -> None:
        """A process ended: a unit's (decide what follows) or a prober's."""
        probe = next(((a, k) for a, k in self.probers if a == address), None)
        if probe is not None:
            self.probers.remove(probe)
            key = probe[1]
            unit = self.units.get(key.split("/")[0])
            if unit is not None and unit.pending_probes.get(key, False) is None:
                self.probe_result(ProbeResult(key, {}, {}, "the prober process ended before it answered"))
            return
        unit = next((u for u in self.units.values() if u.address is not None and u.address == address), None)
        if unit is None:
            return  # already handled: Thespian may report one exit twice
        if unit.pid and not self.remote(unit) and processes.is_alive(unit.pid):
            # After SIGTERM, Thespian reports the exit while the process still runs (and holds its
            # port): act once it is gone, so that no replacement ever overlaps it.
            self.after(EXIT_RECHECK_S, ("exited", unit.name, unit.incarnation))
            return
        exitcode = EXIT_CODES.pop(unit.pid, None) if unit.pid else None
        if self.remote_pids.pop(unit.name, None):
            self.save_remote_pids()
        ran = time.monotonic() - unit.running_since if unit.running_since is not None else 0.0
        init_timeout = unit.spec.supervision.init_timeout_s
        constructing = time.monotonic() - unit.constructing_since if unit.constructing_since is not None else 0.0
        if exitcode == -signal.SIGALRM or (exitcode is None and not unit.failure and constructing >= init_timeout):
            # the host's construction alarm (a remote host's exit code is not seen here: judge by time)
            unit.kill_reason = unit.kill_reason or f"construction took longer than {init_timeout:g} s"
        unit.constructing_since = None
        plan, cause = unit.exit_plan, unit.failure or unit.kill_reason or exit_cause(exitcode)
        unit.address, unit.running_since = None, None
        if plan == "stop" or self.stopping:
            unit.pid = None
            self.settle(unit, "stopped")
            self.fail_inflight(unit, cause)
            self.check_stopped()
            return
        if plan == "fail":
            unit.state, unit.pid = "failed", None
            self.fail_inflight(unit, cause)
            return
        if plan == "restart":
            unit.pid = None
            self.fail_inflight(unit, cause)
            self.schedule_launch(unit, 0.0)
            return
        if unit.pid is None and unit.state != "running" and not unit.failure and not unit.kill_reason \
                and self.remote(unit):
            # No process ever reported itself: nothing on that host accepted it.
            self.start_impossible(unit, f"host {unit.spec.host!r} is not connected; start it there with: "
                                        f"labctl node {unit.spec.host} --leader {self.lab.bind}:{self.lab.port}")
            return
        normal = exitcode == 0 and not unit.failure and not unit.kill_reason
        unit.last_error = None if normal else cause
        self.emit(unit, "exited" if normal else "crashed", cause=cause, pid=unit.pid)
        unit.pid = None
        if ran >= unit.spec.supervision.stable_s:
            unit.consecutive = 0
        self.after_exit(unit, normal)
        self.fail_inflight(unit, cause)

    def after_exit(self, unit: UnitState, normal: bool) -> None:
        """Apply the restart policy to a unit that ended on its own."""
        sup = unit.spec.supervision
        if not policy.should_restart(sup.restart, normal):
            self.settle(unit, "stopped" if normal else "failed",
                        reason=f"{sup.restart} device: not restarted after it {unit.last_error or 'exited'}")
            return
        targets = policy.restart_set(unit.name, sup.strategy, self.group_of.get(unit.name, [unit.name]))
        if not unit.intensity.allow(time.monotonic()):
            reason = (f"{unit.last_error} (gave up: more than {sup.max_restarts} restart"
                      f"{'s' if sup.max_restarts != 1 else ''} within {sup.within_s:g} s)")
            for name in targets:
                other = self.units[name]
                other.last_error = reason if other is unit else f"its group failed: {unit.name}: {reason}"
                if other.address is not None:
                    self.end(other, "fail")
                other.start_token += 1
                self.settle(other, "failed", reason=other.last_error)
            return
        delay = policy.backoff_delay(unit.consecutive, sup.backoff_s, sup.backoff_max_s)
        for name in targets:
            other = self.units[name]
            if other is not unit and other.state in ("failed", "stopped"):
                continue  # a device given up on, or stopped, stays so until restarted by hand
            other.restarts += 1
            other.consecutive += 1
            other.state = "restarting"
            self.emit(other, "restarting", attempt=other.consecutive, delay_s=round(delay, 3),
                      because=unit.name if other is not unit else "crashed")
            if other.address is not None:
                self.end(other, "restart")
            elif other is unit:
                self.schedule_launch(unit, delay)

    def schedule_launch(self, unit: UnitState, delay: float) -> None:
        """Launch a unit after `delay` seconds (at once when 0)."""
        unit.start_token += 1
        unit.state = "restarting"
        if delay <= 0:
            self.launch(unit)
        else:
            self.after(delay, ("launch", unit.name, unit.start_token))

    def settle(self, unit: UnitState, state: str, reason: str | None = None) -> None:
        """Put a unit in a resting state (failed or stopped) and say so."""
        if unit.state == state:
            return
        unit.state = state
        self.emit(unit, state, **({"reason": reason} if reason else {}))

    def fail_inflight(self, unit: UnitState, cause: str) -> None:
        """Answer requests that were in the ended process: they are never re-sent to the next one."""
        for request_id, flight in list(self.inflight.items()):
            if flight.unit != unit.name:
                continue
            del self.inflight[request_id]
            kind = unit.state if unit.state in ("restarting", "failed", "stopped") else "restarting"
            self.send(flight.reply_to, Failure(
                request_id, kind, "DeviceUnavailable",
                f"{flight.device} ended ({cause}) while handling {flight.message}; the request was not re-sent "
                "and may or may not have taken effect", flight.device))

    def beat(self, unit: UnitState) -> None:
        """One heartbeat: count an unanswered ping as a miss, kill after too many, ping again."""
        sup = unit.spec.supervision
        unit.misses = 0 if unit.pong_seq >= unit.ping_seq else unit.misses + 1
        if unit.misses >= sup.heartbeat_misses:
            self.kill(unit, f"hung: missed {unit.misses} heartbeats {sup.heartbeat_s:g} s apart")
            return
        unit.ping_seq += 1
        self.send(unit.address, Ping(unit.ping_seq))
        self.after(sup.heartbeat_s, ("beat", unit.name, unit.incarnation))

    def device_notice(self, notice: DeviceNotice) -> None:
        """Record a device's own change, or its link going down or coming back."""
        unit = self.units.get(notice.unit)
        if unit is None:
            return
        if notice.kind == "degraded":
            unit.degraded.add(notice.device)
            unit.last_error = f"link lost: {notice.detail.get('error', '')}"
        elif notice.kind == "recovered":
            unit.degraded.discard(notice.device)
        self.event(notice.device, notice.kind, **notice.detail)

    # -- time -------------------------------------------------------------------------------

    def after(self, seconds: float, payload) -> None:
        """Wake this actor after `seconds` with `payload`."""
        self.wakeupAfter(timedelta(seconds=max(0.0, seconds)), payload=payload)

    def wakeup(self, payload) -> None:
        """Timers: launches, heartbeats, time limits, init and stop timeouts, event waiters."""
        kind = payload[0]
        if kind == "events":
            waiter = self.waiters.pop(payload[1], None)
            if waiter is not None:
                self.send(waiter[0], Events(waiter[1], (), self.seq))
            return
        unit = self.units.get(payload[1])
        if unit is None:
            return
        if kind == "reap_deadline":
            for entry in [r for r in self.reaps if r[1:] == (payload[2], unit.name)]:
                self.reaps.remove(entry)
                log.warning("%s: no reaper confirmed the end of old process %d; its watchdog has ended it by now",
                            unit.name, payload[2], extra={"device": unit.name})
                self.reap_finished(unit.name)
            return
        if kind == "launch" and payload[2] == unit.start_token and unit.address is None and not self.stopping:
            self.launch(unit)
        elif kind == "beat" and payload[2] == unit.incarnation and unit.address is not None \
                and unit.state == "running" and unit.exit_plan is None:
            self.beat(unit)
        elif kind == "init_timeout" and payload[2] == unit.incarnation and unit.address is not None \
                and unit.state != "running":
            self.kill(unit, f"construction took longer than {unit.spec.supervision.init_timeout_s:g} s")
        elif kind in ("reaped", "exited") and payload[2] == unit.incarnation and unit.address is not None:
            self.child_exited(unit.address)
        elif kind == "kill" and payload[2] == unit.incarnation and unit.address is not None:
            self.kill(unit, f"did not stop within {unit.spec.supervision.stop_timeout_s:g} s")

    # -- events -----------------------------------------------------------------------------

    def emit(self, unit: UnitState, kind: str, **detail) -> None:
        """A lifecycle event for each configured device of a unit."""
        for device in unit.spec.devices:
            self.event(device.name, kind, **detail)

    def event(self, device: str, kind: str, **detail) -> None:
        """Record one event, log it, and answer every waiting GetEvents."""
        self.seq += 1
        event = Event(self.seq, time.time(), device, kind, detail)
        self.events.append(event)
        level = logging.WARNING if kind in ("crashed", "failed", "degraded") else logging.INFO
        log.log(level, "%s", event.text(), extra={"device": device})
        for token, (sender, request_id, since) in list(self.waiters.items()):
            del self.waiters[token]
            self.send(sender, Events(request_id, tuple(e for e in self.events if e.seq > since), self.seq))
