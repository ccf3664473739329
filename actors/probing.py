"""Resolving floating devices: one Prober per floating device, on its host, finds which connected
candidate carries the uid the lab asks for, before the device's process starts."""

from __future__ import annotations

from typing import Any

from thespian.actors import ActorExitRequest

from .actorsystem import HOST_CAPABILITY
from .protocol import ProbeRequest, ProbeResult
from .prober import Prober
from .registry import Registry, UnitState


class Probing:
    """Probes for the supervisor `actor` (send, createActor, launch, start_impossible)."""

    def __init__(self, actor, registry: Registry) -> None:
        self.actor = actor
        self.registry = registry
        self.probers: list[tuple[Any, str]] = []   # (address, probe key); addresses are unhashable

    def start(self, unit: UnitState, floating: list) -> None:
        """Start one Prober per floating device of a unit, on the device's host."""
        unit.pending_probes = {}
        for device in floating:
            prober = self.actor.createActor(Prober, targetActorRequirements={HOST_CAPABILITY: device.host})
            key = f"{unit.name}/{device.name}/{unit.start_token}"
            unit.pending_probes[key] = None
            self.probers.append((prober, key))
            self.actor.send(prober, ProbeRequest(key, device.driver, device.fresh_conf()))

    def result(self, result: ProbeResult) -> None:
        """Collect probe results; launch the unit once every uid is found, else fail it (retried)."""
        unit_name, _, token = result.key.split("/")
        unit = self.registry.get(unit_name)
        if unit is None or result.key not in unit.pending_probes or int(token) != unit.start_token:
            return
        unit.pending_probes[result.key] = result
        if any(r is None for r in unit.pending_probes.values()):
            return
        candidates, missing = {}, []
        for key, res in unit.pending_probes.items():
            device = self.registry.lab.device(key.split("/")[1])
            if device.uid in res.found:
                candidates[device.name] = res.found[device.uid]
            else:
                found = ", ".join(sorted(res.found)) or "none"
                why = f" ({res.error.splitlines()[0]})" if res.error else ""
                missing.append(f"{device.name}: unit {device.uid} is not present; units found: {found}{why}")
        unit.pending_probes = {}
        if missing:
            self.actor.start_impossible(unit, "; ".join(missing))
            return
        unit.candidates, unit.probe_attempts = candidates, 0
        self.actor.launch(unit)

    def ended(self, address) -> bool:
        """Whether an ended process was a prober (one that ended unanswered counts as a failed probe)."""
        probe = next(((a, k) for a, k in self.probers if a == address), None)
        if probe is None:
            return False
        self.probers.remove(probe)
        unit = self.registry.get(probe[1].split("/")[0])
        if unit is not None and unit.pending_probes.get(probe[1], False) is None:
            self.result(ProbeResult(probe[1], {}, {}, "the prober process ended before it answered"))
        return True

    def stop(self) -> None:
        """End every prober (the lab stops)."""
        for prober, _ in self.probers:
            self.actor.send(prober, ActorExitRequest())
