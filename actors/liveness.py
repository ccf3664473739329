"""Liveness of device processes: heartbeats, killing a process that stopped answering, and keeping
on file the remote processes (on member hosts) a successor supervisor must see gone first."""

from __future__ import annotations

import logging
import os
import signal
import time

from . import families, processes, runstate
from .protocol import Hung, Ping, Pong
from .registry import Registry, UnitState
from .timers import Beat, ExitRecheck, InitTimeout, StopTimeout

log = logging.getLogger("labctl.supervisor")


class Liveness:
    """Heartbeats and kills for the supervisor `actor` (send, after, process_ended, hosts)."""

    def __init__(self, actor, registry: Registry, run_dir: str) -> None:
        self.actor = actor
        self.registry = registry
        self.run_dir = run_dir
        self.remote_file = os.path.join(run_dir, "remote-pids.json")
        self.remote_pids: dict[str, tuple] = {}   # unit -> (host, pid, start time) of remote processes

    # -- heartbeats -------------------------------------------------------------------------

    def start(self, unit: UnitState) -> None:
        """A unit runs: its heartbeats begin."""
        unit.beat_at = time.monotonic()
        self.actor.after(unit.supervision.heartbeat_s, Beat(unit.name, unit.incarnation))

    def pong(self, message: Pong) -> None:
        unit = self.registry.get(message.unit)
        if unit is not None and unit.incarnation == message.incarnation:
            unit.pong_seq = max(unit.pong_seq, message.seq)

    def beat(self, unit: UnitState) -> None:
        """One heartbeat: count an unanswered ping as a miss, kill after too many, ping again."""
        sup, now = unit.supervision, time.monotonic()
        if now - unit.beat_at > 2 * sup.heartbeat_s:
            # This beat comes late: the supervisor itself was stalled (busy, stopped), so a missing
            # Pong says nothing about the device. Judge it on the beats from now on.
            log.warning("%s: heartbeat %.1f s late; the supervisor was stalled, not the device", unit.name,
                        now - unit.beat_at - sup.heartbeat_s, extra={"device": unit.name})
            unit.misses, unit.pong_seq = 0, unit.ping_seq
        unit.beat_at = now
        unit.misses = 0 if unit.pong_seq >= unit.ping_seq else unit.misses + 1
        if unit.misses >= sup.heartbeat_misses:
            if self.registry.remote(unit) and self.actor.hosts.suspect(unit.spec.host):
                self.actor.hosts.lose_for(unit)   # its host does not answer either: not a hang
            else:
                self.kill(unit, f"hung: missed {unit.misses} heartbeats {sup.heartbeat_s:g} s apart")
            return
        unit.ping_seq += 1
        self.actor.send(unit.address, Ping(unit.ping_seq))
        self.actor.after(sup.heartbeat_s, Beat(unit.name, unit.incarnation))

    def beat_due(self, timer: Beat) -> None:
        unit = self.registry.current(timer)
        if unit is not None and unit.state == "running" and unit.exit_plan is None:
            self.beat(unit)

    # -- killing ----------------------------------------------------------------------------

    def hung(self, message: Hung) -> None:
        """A device process reports a driver call past its time limit: kill it, it cannot recover.
        The requests it queued behind that call never started: the router answers them."""
        self.actor.router.not_started(message.not_started, f"{message.unit} hung on {message.method}")
        unit = self.registry.current(message)
        if unit is not None:
            declared = {method for d in unit.descriptions.values() for method in d.time_limits}
            limit = (f"its time limit of {message.limit_s:g} s" if message.method in declared
                     else f"{message.limit_s:g} s (no time limit declared: heartbeat_s x heartbeat_misses)")
            self.kill(unit, f"hung: {message.method} ran past {limit}")

    def init_timeout(self, timer: InitTimeout) -> None:
        """Construction must be over by now (the process's own alarm is the first line)."""
        unit = self.registry.current(timer)
        if unit is not None and unit.state != "running":
            self.kill(unit, f"construction took longer than {unit.supervision.init_timeout_s:g} s")

    def stop_timeout(self, timer: StopTimeout) -> None:
        """A process asked to exit that has not: killed."""
        unit = self.registry.current(timer)
        if unit is not None:
            self.kill(unit, f"did not stop within {unit.supervision.stop_timeout_s:g} s")

    def exit_due(self, timer: ExitRecheck) -> None:
        """Look again at a process reported ended (still running)."""
        unit = self.registry.current(timer)
        if unit is not None:
            self.actor.process_ended(unit.address)


    def kill(self, unit: UnitState, reason: str) -> None:
        """End a unit's process that does not answer: SIGKILL by pid, on its own host."""
        unit.cause = unit.cause or reason
        log.error("%s: %s; killing pid %s", unit.name, reason, unit.pid, extra={"device": unit.name})
        if unit.pid and not self.registry.remote(unit) and processes.parent_of(unit.pid) == os.getpid():
            families.kill_group(unit.pid, self.run_dir)  # first, while its process tree can still be walked
            try:
                os.kill(unit.pid, signal.SIGKILL)
                return  # ChildActorExited follows in a few milliseconds
            except ProcessLookupError:
                pass
        # On a member host: ended here now; its host's agent kills the process there, and no new
        # process starts before the agent confirms it gone (see hosts).
        self.actor.process_ended(unit.address)

    # -- remote processes a predecessor left --------------------------------------------------

    def remember(self, unit: UnitState, pid: int, started: int) -> None:
        """Keep a remote process's pid on file, for a supervisor that replaces this one."""
        if self.registry.remote(unit):
            self.remote_pids[unit.name] = (unit.spec.host, pid, started)
            self.save()

    def forget(self, unit: UnitState) -> None:
        if self.remote_pids.pop(unit.name, None):
            self.save()

    def save(self) -> None:
        runstate.write_json(self.remote_file, {name: list(where) for name, where in self.remote_pids.items()})

    def reap_previous(self) -> None:
        """The remote device processes a dead predecessor left (their hosts outlive it) must be gone
        before their units start again: two processes must never drive one device."""
        for name, where in runstate.read_json(self.remote_file).items():
            unit = self.registry.get(name)
            if unit is not None and len(where) in (2, 3):
                pid, started = where[1], (where[2] if len(where) == 3 else 0)   # 0: an older file, no start time
                unit.stale = (pid, started)
                self.remote_pids[name] = (where[0], pid, started)
