"""Liveness of device processes: heartbeats, killing a process that stopped answering, and reaping
remote processes (on their own host) that a predecessor supervisor left behind."""

from __future__ import annotations

import logging
import os
import signal
import time

from . import families, processes, runstate
from .actorsystem import HOST_CAPABILITY
from .protocol import Hung, Ping, Pong, Reap, Reaped
from .reaper import Reaper
from .registry import Registry, UnitState
from .timers import Beat, ExitRecheck, InitTimeout, ReapDeadline, ReapTimeout, StopTimeout

log = logging.getLogger("labctl.supervisor")

REAP_TIMEOUT_S = 5.0      # a Reaper itself waits up to 2 s for its process to go
REAP_MARGIN_S = 1.0


class Liveness:
    """Heartbeats and kills for the supervisor `actor` (send, after, createActor, process_ended, launch)."""

    def __init__(self, actor, registry: Registry, run_dir: str) -> None:
        self.actor = actor
        self.registry = registry
        self.run_dir = run_dir
        self.remote_file = os.path.join(run_dir, "remote-pids.json")
        self.remote_pids: dict[str, tuple[str, int]] = {}   # unit -> (host, pid) of remote processes
        self.reaps: list[tuple[str, int, str]] = []          # (host, pid, unit) waiting for a Reaper

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

    def exit_due(self, timer: ExitRecheck | ReapTimeout) -> None:
        """Look again at a process reported ended (still running), or one no reaper confirmed."""
        unit = self.registry.current(timer)
        if unit is not None:
            self.actor.process_ended(unit.address)


    def kill(self, unit: UnitState, reason: str) -> None:
        """End a unit's process that does not answer: SIGKILL by pid, on its own host."""
        unit.cause = unit.cause or reason
        log.error("%s: %s; killing pid %s", unit.name, reason, unit.pid, extra={"device": unit.name})
        remote = self.registry.remote(unit)
        if unit.pid and not remote and processes.parent_of(unit.pid) == os.getpid():
            families.kill_group(unit.pid, self.run_dir)  # first, while its process tree can still be walked
            try:
                os.kill(unit.pid, signal.SIGKILL)
                return  # ChildActorExited follows in a few milliseconds
            except ProcessLookupError:
                pass
        elif unit.pid and remote:
            # If the host is gone too, no exit will ever be reported: the unit is handled as ended
            # after REAP_TIMEOUT_S.
            self.reap(unit.spec.host, unit.pid)
            self.actor.after(REAP_TIMEOUT_S, ReapTimeout(unit.name, unit.incarnation))
            return
        self.actor.process_ended(unit.address)

    def reap(self, host: str, pid: int) -> None:
        """Have a Reaper on `host` kill `pid` there."""
        reaper = self.actor.createActor(Reaper, targetActorRequirements={HOST_CAPABILITY: host})
        self.actor.send(reaper, Reap(pid, host))

    # -- remote processes a predecessor left --------------------------------------------------

    def remember(self, unit: UnitState, pid: int) -> None:
        """Keep a remote process's pid on file, for a supervisor that replaces this one."""
        if self.registry.remote(unit):
            self.remote_pids[unit.name] = (unit.spec.host, pid)
            self.save()

    def forget(self, unit: UnitState) -> None:
        if self.remote_pids.pop(unit.name, None):
            self.save()

    def save(self) -> None:
        runstate.write_json(self.remote_file, {name: list(where) for name, where in self.remote_pids.items()})

    def reap_previous(self) -> None:
        """Kill the remote device processes a dead predecessor left (their hosts outlive it) before
        their units start again: two processes must never drive one device."""
        for name, (host, pid) in runstate.read_json(self.remote_file).items():
            unit = self.registry.get(name)
            if unit is None:
                continue
            unit.reaping = True
            self.reaps.append((host, pid, name))
            self.reap(host, pid)
            # If no reaper confirms (its host is unreachable), the old process ends by itself once
            # its watchdog hears no heartbeat; launch only after that.
            self.actor.after(unit.supervision.watchdog_s + REAP_MARGIN_S, ReapDeadline(name, pid))

    def reaped(self, message: Reaped) -> None:
        """A reaper is done: launch the unit that waited for it, if its old process is gone."""
        for host, pid, name in list(self.reaps):
            if (host, pid) == (message.host, message.pid) and message.gone:
                self.reaps.remove((host, pid, name))
                self.reap_finished(name)

    def reap_deadline(self, timer: ReapDeadline) -> None:
        for entry in [r for r in self.reaps if r[1:] == (timer.pid, timer.unit)]:
            self.reaps.remove(entry)
            log.warning("%s: no reaper confirmed the end of old process %d; its watchdog has ended it by now",
                        timer.unit, timer.pid, extra={"device": timer.unit})
            self.reap_finished(timer.unit)

    def reap_finished(self, name: str) -> None:
        unit = self.registry[name]
        if unit.reaping:
            unit.reaping = False
            self.actor.launch(unit)
