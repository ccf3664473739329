"""Requests to devices: delivered to the unit's process, or answered at once why not; what is in
flight is remembered, so that a request whose process ends is answered (never re-sent)."""

from __future__ import annotations

from typing import Any

import attrs

from . import failures
from .messages import DescribeDevice, DeviceDescription, DeviceRequest, Reply
from .protocol import Deliver
from .registry import Registry, UnitState


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

    def describe(self, request: DescribeDevice, sender) -> None:
        """Answer DescribeDevice from the descriptions units sent when ready."""
        name, unit = request.device, self.registry.unit_for(request.device)
        if unit is None:
            self.actor.send(sender, failures.unknown_device(request, self.registry.unit_of))
        elif unit.state != "running":
            self.actor.send(sender, failures.unavailable(request.request_id, name, unit.state, unit.last_error,
                                                         "DescribeDevice"))
        elif name in unit.descriptions:
            self.actor.send(sender, Reply(request.request_id, unit.descriptions[name]))
        else:  # a factory's own name: described by its parts alone, so that `lab.scope.camera` works
            device = self.registry.lab.device(name)
            description = DeviceDescription(name, device.factory, (), (), tuple(self.parts(unit, name)))
            self.actor.send(sender, Reply(request.request_id, description))

    @staticmethod
    def parts(unit: UnitState, name: str) -> list[str]:
        return [n for n in unit.descriptions if n.startswith(name + ".")]

    def done(self, request_id: str) -> None:
        """A device process answered a request."""
        self.inflight.pop(request_id, None)

    def not_started(self, request_ids, why: str) -> None:
        """Answer requests a device process queued but never started: they were not carried out."""
        for request_id in request_ids:
            flight = self.inflight.pop(request_id, None)
            if flight is not None:
                self.actor.send(flight.reply_to, failures.not_started(request_id, flight.device, flight.message, why))

    def fail_inflight(self, unit: UnitState, cause: str) -> None:
        """Answer the requests that were in a unit's ended process; they are never re-sent to the next."""
        for request_id, flight in list(self.inflight.items()):
            if flight.unit == unit.name:
                del self.inflight[request_id]
                self.actor.send(flight.reply_to, failures.ended_in_flight(request_id, flight.device, flight.message,
                                                                          cause, unit.state))
