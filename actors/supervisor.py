"""Supervisor: the one actor that owns a lab's registry and supervises its device processes.

It starts, watches and restarts units (a device, or a shared group, in its own process) under
OTP's rules; the rest is delegated: the rules themselves (policy.decide, pure), what it knows of
each unit (registry), starting them, paced (starting), heartbeats and kills (liveness), floating
devices (probing), requests and what is in flight (routing), and events (eventfeed). Every
message type has one handler, in the table below.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timedelta

from thespian.actors import (Actor, ActorExitRequest, ActorSystemConventionUpdate, ChildActorExited, PoisonMessage,
                             WakeupMessage)

from . import failures, families, lanes, logs, policy, processes, runstate
from .actorsystem import EXIT_CODES
from .eventfeed import EventFeed
from .hosts import Hosts
from .liveness import Liveness
from .messages import (DescribeDevice, DeviceRequest, GetEvents, GetLabStatus, GetLanes, InitLab, Reply, Request,
                       RestartDevice, StopLab, WhyEnded)
from .protocol import (DeviceNotice, Done, HostPong, Hung, LaneDone, NotStarted, Pong, ProbeResult, Reaped,
                       UnitFailed, UnitReady, UnitStarted)
from .probing import Probing
from .registry import Phase, Registry, UnitState
from .routing import Router
from .starting import Starts
from .valvelocks import ValveLocks
from .timers import (Beat, EventsDue, ExitRecheck, HostBeat, HostsDue, InitTimeout, LanesDue, Launch, StopTimeout,
                     WhyDue)

log = logging.getLogger("labctl.supervisor")

EXIT_RECHECK_S = 0.005


class Supervisor(Actor):
    """Supervises every device process of one lab and answers the lab's clients."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        logs.adopt_inherited_loggers()  # this module's loggers were made in the keeper, before the fork
        self.lab = self.registry = self.router = self.liveness = self.probing = self.starts = self.locks = None
        self.hosts = None
        self.events = EventFeed(self)
        self.keeper_pid = 0
        self.run_dir = ""
        self.stopping = False
        self.stop_waiters: list[tuple[object, str]] = []
        self.handlers = {
            Done: lambda m, s: self.router.done(m), Pong: lambda m, s: self.liveness.pong(m),
            WakeupMessage: lambda m, s: self.wakeup(m.payload), ChildActorExited: lambda m, s: self.child_exited(m),
            UnitStarted: lambda m, s: self.starts.unit_started(m), Hung: lambda m, s: self.liveness.hung(m),
            NotStarted: lambda m, s: self.router.not_started(m.request_ids, m.why),
            Reaped: lambda m, s: self.hosts.reaped(m), UnitReady: lambda m, s: self.starts.unit_ready(m),
            HostPong: lambda m, s: self.hosts.pong(m),
            ActorSystemConventionUpdate: lambda m, s: self.hosts.convention_update(m),
            UnitFailed: lambda m, s: self.starts.unit_failed(m), DeviceNotice: lambda m, s: self.device_notice(m),
            ProbeResult: lambda m, s: self.probing.result(m), InitLab: self.init_lab,
            GetLabStatus: lambda m, s: self.send(s, self.registry.status(m.request_id, self.keeper_pid,
                                                                         self.hosts.status())),
            GetEvents: self.events.get, DescribeDevice: lambda m, s: self.router.describe(m, s),
            GetLanes: lambda m, s: self.router.lanes(m, s), LaneDone: lambda m, s: self.registry.lane_done(m),
            WhyEnded: lambda m, s: self.router.why_ended(m, s),
            RestartDevice: self.restart_by_hand, StopLab: self.stop_lab,
            ActorExitRequest: lambda m, s: log.info("supervisor exiting; Thespian stops every device host"),
            PoisonMessage: lambda m, s: log.warning("a message could not be handled: %r", m.poisonMessage),
        }
        self.timers = {
            Launch: lambda t: self.starts.launch_due(t), Beat: lambda t: self.liveness.beat_due(t),
            InitTimeout: lambda t: self.liveness.init_timeout(t), StopTimeout: lambda t: self.liveness.stop_timeout(t),
            ExitRecheck: lambda t: self.liveness.exit_due(t), HostBeat: lambda t: self.hosts.beat(t),
            HostsDue: lambda t: self.hosts.hosts_due(t), EventsDue: self.events.due,
            WhyDue: lambda t: self.router.why_due(t), LanesDue: lambda t: self.router.publish_lanes(t),
        }

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, Request) and not isinstance(message, InitLab) and self.lab is None:
                self.send(sender, failures.not_ready(message))
            elif isinstance(message, DeviceRequest):
                self.router.route(message, sender)
            elif type(message) in self.handlers:
                self.handlers[type(message)](message, sender)
            elif isinstance(message, Request):
                self.send(sender, failures.unknown_request(message))
        except Exception as exc:  # never escape: Thespian would hand us the same message again
            log.exception("supervisor: error handling %s", type(message).__name__)
            if isinstance(message, Request):
                self.send(sender, failures.lab_error(message, exc))

    def after(self, seconds: float, timer) -> None:
        """Wake this actor with `timer` after `seconds`."""
        self.wakeupAfter(timedelta(seconds=max(0.0, seconds)), payload=timer)

    def wakeup(self, timer) -> None:
        handler = self.timers.get(type(timer))
        if handler is not None:
            handler(timer)

    # -- start-up ---------------------------------------------------------------------------

    def init_lab(self, message: InitLab, sender) -> None:
        """Take the lab from the keeper and start every unit (a repeat only updates the keeper)."""
        self.keeper_pid = message.keeper_pid
        if self.lab is None:
            self.lab, self.registry = message.lab, Registry(message.lab)
            self.run_dir = str(runstate.lab_dir(self.lab.port))
            self.router, self.probing = Router(self, self.registry), Probing(self, self.registry)
            self.liveness = Liveness(self, self.registry, self.run_dir)
            self.hosts = Hosts(self, self.registry)
            self.starts = Starts(self)
            self.locks = ValveLocks(self.lab.log_dir)
            log.info("lab %s: starting %d devices in %d processes", self.lab.name, len(self.lab.devices),
                     len(self.registry.units))
            logs.write_locally(self.lab.log_dir)
            self.events.open(self.lab.log_dir)
            if message.incarnation:  # a replacement: the lab's history and restart counts carry on
                self.events.restore_records(self.registry)
                self.events.event("lab", "recovered", supervisor=message.incarnation, pid=os.getpid())
                self.liveness.reap_previous()
            self.hosts.start()
            for unit in self.registry:
                self.events.emit(unit, "starting")
                self.launch(unit)
        self.send(sender, Reply(message.request_id, {"pid": os.getpid(), "admin_pid": os.getppid()}))

    def launch(self, unit: UnitState) -> None:
        """Start the unit's process, when a start slot is free (see starting)."""
        self.starts.launch(unit)

    def start_impossible(self, unit: UnitState, reason: str) -> None:
        """The unit cannot start yet: failed, retried with back-off (see starting)."""
        self.starts.impossible(unit, reason)

    def device_notice(self, notice: DeviceNotice) -> None:
        """A device's own change, or its link or memory: noted in the registry, then an event."""
        if notice.kind == "valve_lock":
            self.locks.note(notice.device, notice.detail.get("valve", ""), notice.detail.get("locked", False))
        if self.registry.note(notice):
            self.events.event(notice.device, notice.kind, **notice.detail)

    # -- ends -------------------------------------------------------------------------------

    def end(self, unit: UnitState, plan: str) -> None:
        """Ask a unit's process to exit (for a restart, a stop, or because its group failed)."""
        unit.exit_plan = plan
        self.send(unit.address, ActorExitRequest())
        self.after(unit.supervision.stop_timeout_s, StopTimeout(unit.name, unit.incarnation))

    def child_exited(self, message: ChildActorExited) -> None:
        if not self.probing.ended(message.childAddress) and not self.hosts.agent_ended(message.childAddress):
            self.process_ended(message.childAddress)

    def unit_lost(self, unit: UnitState, cause: str) -> None:
        """A unit's host is unreachable: what was in flight there fails now, and the unit waits for its
        host (its process there ends itself, or is confirmed gone before another starts)."""
        if unit.pid:
            unit.stale = (unit.pid, unit.pid_started or 0)
        pid, plan = self.clear_process(unit)
        if plan == "stop" or self.stopping:      # it was being stopped, or failed with its group: so it stays
            self.settle(unit, Phase.STOPPED)
        elif plan == "fail":
            unit.state, unit.launch_pending = Phase.FAILED, False
        else:
            unit.state, unit.last_error, unit.launch_pending = Phase.LOST, cause, True
            self.events.emit(unit, "lost", cause=cause, pid=pid)
        self.after_process(unit, cause, pid)

    def clear_process(self, unit: UnitState) -> tuple[int | None, str | None]:
        """Forget a unit's process (it ended, or its host is lost): its pid, and why it was asked to end."""
        pid, plan = unit.pid, unit.exit_plan
        unit.address = unit.running_since = unit.constructing_since = unit.pid = unit.lane = None
        self.starts.ended(unit)
        return pid, plan

    def after_process(self, unit: UnitState, cause: str, pid: int | None) -> None:
        """A unit's process is gone: fail what was in flight there (never re-sent), publish the lanes
        without it, keep its group's records, and finish a stop that waited for it."""
        self.router.fail_inflight(unit, cause, pid)
        self.router.lanes_changed()
        for name in self.registry.group_of.get(unit.name, [unit.name]):
            self.events.keep_record(self.registry[name])
        self.check_stopped()

    def process_ended(self, address) -> None:
        """A unit's process ended: answer what was in flight there, then stop, fail or restart it."""
        unit = self.registry.by_address(address)
        if unit is None:
            return  # already handled: Thespian may report one exit twice
        if unit.pid and not self.registry.remote(unit) and processes.is_alive(unit.pid):
            # After SIGTERM, Thespian reports the exit while the process still runs (and holds its
            # port): act once it is gone, so that no replacement ever overlaps it.
            self.after(EXIT_RECHECK_S, ExitRecheck(unit.name, unit.incarnation))
            return
        exitcode = EXIT_CODES.pop(unit.pid, None) if unit.pid else None
        if unit.pid and not self.registry.remote(unit):
            # what its drivers started ends with it, before a restart; a killed process leaves its lane's
            # socket file and its cameras' rings in shared memory behind
            families.kill_group(unit.pid, self.run_dir, leader_started=unit.pid_started)
            lanes.remove_leftovers(self.run_dir, self.lab.port, unit.pid)
            self.liveness.forget(unit)
        elif unit.pid:
            # On a member host an exit is only reported (or assumed, by Thespian, of a silent host): its
            # host's agent confirms the process gone, killing it if need be, before another starts.
            unit.stale = (unit.pid, unit.pid_started or 0)
            self.hosts.reap(unit)
        ran = time.monotonic() - unit.running_since if unit.running_since is not None else 0.0
        init_timeout = unit.supervision.init_timeout_s
        constructing = time.monotonic() - unit.constructing_since if unit.constructing_since is not None else 0.0
        if exitcode == -signal.SIGALRM or (exitcode is None and not unit.cause and constructing >= init_timeout):
            # the host's construction alarm (a remote host's exit code is not seen here: judge by time)
            unit.cause = unit.cause or f"construction took longer than {init_timeout:g} s"
        killed, cause = unit.cause is not None, unit.cause or processes.exit_cause(exitcode)
        pid, plan = self.clear_process(unit)
        if plan == "stop" or self.stopping:
            self.settle(unit, Phase.STOPPED)
        elif plan == "fail":
            unit.state = Phase.FAILED
        elif plan == "restart":
            self.schedule_launch(unit, 0.0)
        elif pid is None and unit.state != Phase.RUNNING and not killed and self.registry.remote(unit):
            # No process ever reported itself: nothing on that host accepted it.
            host = unit.spec.host
            self.start_impossible(unit, f"host {host!r} took no process; {self.hosts.start_hint(host)}")
            return
        else:
            normal = exitcode == 0 and not killed
            unit.last_error = None if normal else cause
            self.events.emit(unit, "exited" if normal else "crashed", cause=cause, pid=pid)
            self.apply(unit, policy.Ended(unit.name, normal, cause, ran))
        self.after_process(unit, cause, pid)

    def apply(self, unit: UnitState, ended: policy.Ended) -> None:
        """Carry out the restart policy's decision for a unit that ended on its own."""
        group = [policy.Member(name, self.registry[name].state)
                 for name in self.registry.group_of.get(unit.name, [unit.name])]
        decision = policy.decide(ended, unit.supervision, unit.consecutive, unit.restart_times, group,
                                 time.monotonic())
        unit.consecutive, unit.restart_times = decision.consecutive, decision.restart_times
        if decision.settle:
            self.settle(unit, Phase(decision.settle), reason=decision.reason)
        for name in decision.fail:
            other = self.registry[name]
            other.last_error = decision.reason if other is unit else f"its group failed: {unit.name}: {decision.reason}"
            if other.address is not None:
                self.end(other, "fail")
            other.start_token += 1
            self.settle(other, Phase.FAILED, reason=other.last_error)
        for name in decision.restart:
            other = self.registry[name]
            other.restarts += 1
            other.consecutive += 1
            other.state = Phase.RESTARTING
            self.events.emit(other, "restarting", attempt=other.consecutive, delay_s=round(decision.delay, 3),
                             because=unit.name if other is not unit else "crashed")
            if other.address is not None:
                self.end(other, "restart")
            elif other is unit:
                self.schedule_launch(unit, decision.delay)

    def schedule_launch(self, unit: UnitState, delay: float) -> None:
        """Launch a unit after `delay` seconds (at once when 0)."""
        unit.start_token += 1
        unit.state = Phase.RESTARTING
        if delay <= 0:
            self.launch(unit)
        else:
            self.after(delay, Launch(unit.name, unit.start_token))

    def settle(self, unit: UnitState, state: Phase, reason: str | None = None) -> None:
        """Put a unit in a resting state (failed or stopped) and say so."""
        unit.launch_pending = False   # nothing starts it again but a restart by hand
        if unit.state != state:
            unit.state = state
            self.events.emit(unit, str(state), **({"reason": reason} if reason else {}))

    # -- timers -----------------------------------------------------------------------------

    # -- by hand ----------------------------------------------------------------------------

    def restart_by_hand(self, request: RestartDevice, sender) -> None:
        """`labctl restart`: clear the unit's history and restart it now (after a stop, too)."""
        unit = self.registry.unit_for(request.device)
        if unit is None:
            self.send(sender, failures.unknown_device(request, self.registry.unit_of))
            return
        if self.stopping:
            if self.stop_waiters or not self.registry.all_ended():
                self.send(sender, failures.lab_stopping(request))
                return
            self.stopping = False  # the stop is over: the owner brings devices back one by one
        unit.restart_times, unit.consecutive, unit.probe_attempts = (), 0, 0
        self.events.emit(unit, "restarting", by="hand", attempt=0, delay_s=0)
        unit.state = Phase.RESTARTING
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
        self.probing.stop()
        for unit in self.registry:
            unit.start_token += 1  # cancels pending launches
            unit.launch_pending = False
            if unit.address is not None:
                self.end(unit, "stop")
            else:
                self.settle(unit, Phase.STOPPED)
        self.check_stopped()

    def check_stopped(self) -> None:
        """Answer pending StopLab requests once no unit has a process."""
        if self.stopping and self.registry.all_ended():
            for sender, request_id in self.stop_waiters:
                self.send(sender, Reply(request_id, "stopped"))
            self.stop_waiters.clear()
