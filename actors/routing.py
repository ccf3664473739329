"""Requests to devices: delivered to the unit's process, or answered at once why not; what is in
flight is remembered, so that a request whose process ends is answered (never re-sent)."""

from __future__ import annotations

import logging
import os
from typing import Any

import attrs

from . import failures, runstate
from .messages import DescribeDevice, DeviceDescription, DeviceRequest, Failure, GetLanes, Reply, WhyEnded
from .protocol import Deliver
from .registry import Registry, UnitState
from .timers import LanesDue, WhyDue

WHY_WAIT_S = 3.0          # how long a client's WhyEnded waits for its process's end to be known
ENDS_KEPT = 1000          # ends remembered for such questions
PUBLISH_S = 0.05          # lanes that changed within this are published in one write


def lane_record(lane) -> dict:
    """A Lane as JSON."""
    return {"unit": lane.unit, "pid": lane.pid, "devices": list(lane.devices), "unix": lane.unix,
            "tcp": list(lane.tcp), "machine": lane.machine, "member": lane.member}


log = logging.getLogger("labctl.supervisor")


@attrs.define
class InFlight:
    """A request delivered to a device process and not yet answered."""

    unit: str
    reply_to: Any
    device: str
    message: str


class Router:
    """Routes device requests for the supervisor `actor` (whose `send` it uses)."""

    def __init__(self, actor, registry: Registry) -> None:
        self.actor = actor
        self.registry = registry
        self.inflight: dict[str, InFlight] = {}
        self.ends: dict[tuple[str, int], tuple[str, str]] = {}      # (unit, pid) -> (cause, state after)
        self.asking: dict[tuple[str, int], list] = {}               # (unit, pid) -> [(sender, WhyEnded)]
        self.publishing = False

    def route(self, request: DeviceRequest, sender) -> None:
        """Deliver a device request to its unit's process, or answer at once why not."""
        name, unit = request.device, self.registry.unit_for(request.device)
        if unit is None:
            self.actor.send(sender, failures.unknown_device(request, self.registry.unit_of))
        elif unit.state != "running" or unit.address is None:
            self.actor.send(sender, failures.unavailable(request.request_id, name, unit.state, unit.last_error,
                                                         type(request).__name__))
        elif name not in unit.descriptions:
            self.actor.send(sender, failures.composite(request.request_id, name, self.parts(unit, name)))
        else:
            self.inflight[request.request_id] = InFlight(unit.name, sender, name, type(request).__name__)
            self.actor.send(unit.address, Deliver(request, sender))

    def running_unit(self, request, sender) -> UnitState | None:
        """The running unit of the request's device; else None, the client told why (unknown, not running)."""
        unit = self.registry.unit_for(request.device)
        if unit is None:
            self.actor.send(sender, failures.unknown_device(request, self.registry.unit_of))
        elif unit.state != "running":
            self.actor.send(sender, failures.unavailable(request.request_id, request.device, unit.state,
                                                         unit.last_error, type(request).__name__))
        else:
            return unit
        return None

    def describe(self, request: DescribeDevice, sender) -> None:
        """Answer DescribeDevice from the descriptions units sent when ready."""
        name, unit = request.device, self.running_unit(request, sender)
        if unit is None:
            return
        if name in unit.descriptions:
            self.actor.send(sender, Reply(request.request_id, unit.descriptions[name]))
        else:  # a factory's own name: described by its parts alone, so that `lab.scope.camera` works
            device = self.registry.lab.device(name)
            description = DeviceDescription(name, device.factory, (), (), tuple(self.parts(unit, name)))
            self.actor.send(sender, Reply(request.request_id, description))

    def lanes_changed(self) -> None:
        """A unit's lane opened or closed: publish the lanes soon."""
        if not self.publishing:
            self.publishing = True
            self.actor.after(PUBLISH_S, LanesDue())

    def publish_lanes(self, timer: LanesDue) -> None:
        """Write every running device's lane to the lab's private run folder, where clients on this
        machine read it instead of asking (`labctl send` then needs no actor runtime). A stale entry
        costs a client nothing but asking: a lane's pid is checked when it connects."""
        self.publishing = False
        lanes = {name: lane_record(unit.lane) for unit in self.registry
                 if unit.state == "running" and unit.lane is not None for name in unit.lane.devices}
        try:
            runstate.write_json(os.path.join(self.actor.run_dir, runstate.LANES_FILE),
                                {"pid": os.getpid(), "lanes": lanes})
        except OSError as exc:
            log.warning("could not publish the lanes: %s", exc)

    def lanes(self, request: GetLanes, sender) -> None:
        """Answer where running devices serve their lanes: {device: Lane}, for one device or all."""
        if not request.device:
            self.actor.send(sender, Reply(request.request_id, {
                name: unit.lane for unit in self.registry if unit.state == "running" and unit.lane is not None
                for name in unit.lane.devices}))
            return
        name, unit = request.device, self.running_unit(request, sender)
        if unit is not None:  # no lane (it could not open one, or a factory's own name): the supervisor's path
            lane = unit.lane if unit.lane is not None and name in unit.lane.devices else None
            self.actor.send(sender, Reply(request.request_id, {name: lane} if lane is not None else {}))

    @staticmethod
    def parts(unit: UnitState, name: str) -> list[str]:
        return [n for n in unit.descriptions if n.startswith(name + ".")]

    def done(self, done) -> None:
        """A device process answered a request: no longer in flight, and counted."""
        flight = self.inflight.pop(done.request_id, None)
        unit = self.registry.get(done.unit)
        if flight is not None and unit is not None:
            self.registry.count(unit, flight.device, 1, int(done.failed))

    def not_started(self, request_ids, why: str) -> None:
        """Answer requests a device process queued but never started: they were not carried out."""
        for request_id in request_ids:
            flight = self.inflight.pop(request_id, None)
            if flight is not None:
                self.actor.send(flight.reply_to, failures.not_started(request_id, flight.device, flight.message, why))

    def fail_inflight(self, unit: UnitState, cause: str, pid: int | None) -> None:
        """Answer the requests that were in a unit's ended process; they are never re-sent to the next.
        Lane clients that saw their connection drop with a request in flight are told the same."""
        for request_id, flight in list(self.inflight.items()):
            if flight.unit == unit.name:
                del self.inflight[request_id]
                self.actor.send(flight.reply_to, failures.ended_in_flight(request_id, flight.device, flight.message,
                                                                          cause, unit.state))
        if pid is None:
            return
        self.ends[(unit.name, pid)] = (cause, str(unit.state))
        while len(self.ends) > ENDS_KEPT:
            del self.ends[next(iter(self.ends))]
        for sender, request in self.asking.pop((unit.name, pid), []):
            self.why_ended(request, sender)

    def why_ended(self, request: WhyEnded, sender) -> None:
        """Answer how a device's process ended (the failure a lane client raises for its request in
        flight); if its end is not known yet, once it is (or after WHY_WAIT_S)."""
        unit = self.registry.unit_for(request.device)
        if unit is None:
            self.actor.send(sender, failures.unknown_device(request, self.registry.unit_of))
            return
        key = (unit.name, request.pid)
        if key in self.ends:
            cause, state = self.ends[key]
            self.actor.send(sender, failures.ended_in_flight(request.request_id, request.device, request.message,
                                                             cause, state))
        elif unit.pid == request.pid and unit.address is not None:
            self.asking.setdefault(key, []).append((sender, request))
            self.actor.after(WHY_WAIT_S, WhyDue(unit.name, request.pid))
        else:
            self.actor.send(sender, failures.ended_in_flight(request.request_id, request.device, request.message,
                                                             "its process ended", unit.state))

    def why_due(self, timer: WhyDue) -> None:
        """The process is still there: it closed the connection itself (it never does so with a request
        in flight unless the client broke the protocol or stopped reading)."""
        for sender, request in self.asking.pop((timer.unit, timer.pid), []):
            self.actor.send(sender, Failure(
                request.request_id, "lab_error", "LaneClosed",
                f"{request.device}: its process (still running) closed the connection while {request.message} "
                "was in flight; the request was not re-sent and may or may not have taken effect", request.device))
