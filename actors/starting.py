"""Starting units: creating a unit's process on its host (after its floating devices are probed),
the handshake that follows (pid, construction, ready or failed), and pacing: at most MAX_STARTING
processes construct at once, so a lab of hundreds of devices does not starve every process of CPU
(heartbeats missed, restarts storming) and its start-up time grows linearly."""

from __future__ import annotations

import logging
import os
import time
from collections import deque

import attrs

from . import policy, processes
from .actorsystem import HOST_CAPABILITY, local_child_pid
from .devicehost import DeviceHost
from .protocol import Construct, StartUnit, UnitFailed, UnitReady, UnitStarted
from .registry import Phase, UnitState
from .timers import InitTimeout, Launch

log = logging.getLogger("labctl.supervisor")

PROBE_FIRST_S = 0.5
INIT_GRACE_S = 1.0
MAX_STARTING = max(8, 4 * (os.cpu_count() or 1))


class Starts:
    """Unit starts for the supervisor `actor` (its registry, events, liveness, probing, end())."""

    def __init__(self, actor) -> None:
        self.actor = actor
        self.starting: set[str] = set()          # units whose process is constructing
        self.queued: deque[tuple[UnitState, int]] = deque()  # (unit, its start token) waiting for a slot

    def launch(self, unit: UnitState) -> None:
        """Create the unit's process (probing its floating devices first)."""
        if self.actor.stopping or not self.actor.hosts.may_launch(unit):
            return
        floating = [d for d in unit.spec.devices if d.uid is not None]
        if floating and unit.candidates is None:
            self.actor.probing.start(unit, floating)
            return
        if len(self.starting) >= MAX_STARTING and unit.name not in self.starting:
            if (unit, unit.start_token) not in self.queued:
                self.queued.append((unit, unit.start_token))
            return
        candidates, unit.candidates = unit.candidates or {}, None  # each (re)start probes afresh
        unit.launch_pending = False
        self.starting.add(unit.name)
        try:
            address = self.actor.createActor(DeviceHost, targetActorRequirements={HOST_CAPABILITY: unit.spec.host})
        except Exception as exc:
            self.ended(unit)
            self.impossible(unit, f"cannot create a process on host {unit.spec.host!r}: {exc}")
            return
        unit.new_process(address, local_child_pid(self.actor, address))
        sup, lab = unit.supervision, self.actor.lab
        locks = {device.name: self.actor.locks.of(device.name) for device in unit.spec.devices}
        self.actor.send(address, StartUnit(unit.name, unit.incarnation, unit.spec.devices, candidates, sup,
                                           self.actor.run_dir, lab.max_argument_bytes, os.getpid(), lab.log_dir,
                                           lab.port, locks))
        self.actor.after(sup.init_timeout_s + INIT_GRACE_S, InitTimeout(unit.name, unit.incarnation))

    def ended(self, unit: UnitState) -> None:
        """A unit's construction is over (ready, failed, or its process ended): start the next queued."""
        self.starting.discard(unit.name)
        while self.queued and len(self.starting) < MAX_STARTING:
            waiting, token = self.queued.popleft()
            # one given up on, stopped or restarted since it queued has a new token: not this start
            if waiting.address is None and token == waiting.start_token:
                self.launch(waiting)

    def impossible(self, unit: UnitState, reason: str) -> None:
        """A unit that cannot start yet (unit not plugged in, host absent): failed, retried with back-off."""
        delay = policy.backoff_delay(unit.probe_attempts, PROBE_FIRST_S, unit.supervision.probe_backoff_max_s)
        unit.probe_attempts += 1
        unit.waiting = True
        if unit.state != Phase.FAILED or unit.last_error != reason:  # say it once, not at every retry
            unit.state, unit.last_error = Phase.FAILED, reason
            self.actor.events.emit(unit, "failed", reason=reason, retry_in_s=round(delay, 3))
            self.actor.events.keep_record(unit)
        unit.start_token += 1
        self.actor.after(delay, Launch(unit.name, unit.start_token))

    def unit_started(self, message: UnitStarted) -> None:
        """A unit's process reported its pid: remember it (on file, if remote), then let it construct."""
        unit = self.actor.registry.get(message.unit)
        if unit is None or unit.incarnation != message.incarnation or unit.address is None:
            return
        unit.pid = message.pid
        remote = self.actor.registry.remote(unit)
        unit.pid_started = message.started if remote else processes.start_time(message.pid)
        self.actor.liveness.remember(unit, message.pid, message.started)
        unit.constructing_since = time.monotonic()
        self.actor.send(unit.address, Construct(unit.incarnation))

    def unit_ready(self, message: UnitReady) -> None:
        """A unit's drivers are up: running, heartbeats start."""
        unit = self.actor.registry.get(message.unit)
        if unit is None or unit.incarnation != message.incarnation or unit.address is None:
            return
        unit.state, unit.pid, unit.running_since = Phase.RUNNING, message.pid, time.monotonic()
        unit.constructing_since = None
        if unit.waiting:  # it was waiting for its unit or host, not crashing: that error is over
            unit.last_error, unit.waiting = None, False
        self.actor.registry.learn_names(unit, message.devices)
        # Requests to devices on member hosts go through the supervisor, which knows when their host is
        # lost: a request in flight there fails at that moment, not at the client's timeout. Their lane
        # still carries streams and notices.
        remote = self.actor.registry.remote(unit)
        unit.lane = attrs.evolve(message.lane, member=True) if remote and message.lane is not None else message.lane
        self.actor.router.lanes_changed()
        unit.degraded.clear()
        self.ended(unit)
        self.actor.events.emit(unit, "running", pid=message.pid)
        if self.actor.stopping:
            self.actor.end(unit, "stop")
        else:
            self.actor.liveness.start(unit)

    def unit_failed(self, message: UnitFailed) -> None:
        """Keep why a unit's drivers could not be constructed (its process exits next)."""
        unit = self.actor.registry.get(message.unit)
        if unit is not None and unit.incarnation == message.incarnation:
            unit.cause = f"{message.error_type}: {message.message}"
            log.error("%s could not be constructed: %s\n%s", unit.name, unit.cause, message.traceback,
                      extra={"device": unit.name})

    def launch_due(self, timer: Launch) -> None:
        unit = self.actor.registry.get(timer.unit)
        if unit is not None and timer.token == unit.start_token and unit.address is None and not self.actor.stopping:
            self.launch(unit)
