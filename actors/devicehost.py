"""DeviceHost: the actor (one OS process) that owns one device's driver, or a shared group's.

It reports its pid, then constructs its drivers when the supervisor says so, never in `__init__`
(an exception there would kill the process silently). Requests are queued and run one at a time,
in order, on a worker thread (see drivercalls), so this actor's own thread stays free to answer
heartbeats and send replies while a call blocks. The host times each call from its real start: a
call past its time limit (declared with `time_limit`, else heartbeat_s x heartbeat_misses) is
reported to the supervisor as hung, and heartbeats stop, so the process is killed. No driver
exception ever escapes `receiveMessage`: Thespian would deliver the same message again, and an
actuation would happen twice.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
import traceback
from collections import deque
from datetime import timedelta

from thespian.actors import ActorExitRequest, ThespianWatch, WakeupMessage, WatchMessage

from labctl.hardware import Device, ValveController, remote_methods

from . import building, families, logs, processes, runstate
from .actorsystem import PlacedActor
from .drivercalls import Job, LimitKnown, Notice, Outcome, Worker, check, describe
from .lanedesk import STREAM, LaneDesk
from .lanes import Conn
from .pyrofacade import PyroCall, PyroDesks
from .messages import Acquire, Failure, Image, Reply
from .protocol import (Construct, Deliver, DeviceNotice, Done, Hung, NotStarted, Ping, Pong, StartUnit,
                       UnitFailed, UnitReady, UnitStarted)
from .seal import SEAL
from .policy import backoff_delay

log = logging.getLogger("labctl.devicehost")

RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 5.0
MEMORY_CHECK_S = 0.5        # how often a device with memory_max_mb measures itself
MEMORY_EXIT_GRACE_S = 0.1   # past the limit: time for its report to leave before the process ends
QUICK_CALL_S = 0.002        # how long the actor waits for a call's outcome before returning to its loop
QUICK_TURN_S = 0.005        # and how long it goes on taking queued calls so, before it looks at its sockets
LINGER_S = 0.0005           # after answering on the lane, how long it waits there for the next request
LANE_REPORT_S = 1.0         # how often what was answered on the lane is reported (and idle handshakes swept)


class DeviceHost(PlacedActor):
    """Owns drivers in its own process and answers requests addressed to them."""

    family: families.Family | None = None        # its process group and what its drivers started

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervisor = None
        self.spec: StartUnit | None = None
        self.drivers: dict[str, Device] = {}        # every addressable name, sub-devices included
        self.methods: dict[str, dict] = {}          # name -> its driver's remote methods, found once
        self.owned: list[tuple[str, Device]] = []   # what to shut down, in construction order
        self.emulators: list = []
        self.degraded: dict[str, int] = {}          # device -> reconnect attempts so far
        self.worker: Worker | None = None
        self.desk: LaneDesk | None = None           # the lane: clients' direct connections
        self.pyro: PyroDesks | None = None          # Pyro4 clients' ([devices.X.pyro])
        self.pending: deque[Deliver] = deque()
        self.current: Job | None = None             # what the worker is doing now
        self.armed: list[float] = []                # when the time-limit timers set will fire (monotonic)
        self.jobs = 0
        self.hung = False
        self.last_heard = time.monotonic()

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, Deliver):
                if self.hung:  # it can never start here; the supervisor answers (this process is doomed)
                    self.send(self.supervisor, NotStarted(self.unit, self.incarnation,
                                                          (message.request.request_id,), "the device is hung"))
                else:
                    self.pending.append(message)
                    self.next_job()
            elif isinstance(message, WatchMessage):
                self.watched(message.ready)
            elif isinstance(message, Ping):
                self.last_heard = time.monotonic()
                if not self.hung:  # a hung call: fall silent, so that the supervisor kills the process
                    self.send(sender, Pong(self.unit, self.incarnation, message.seq))
            elif isinstance(message, WakeupMessage):
                self.wakeup(message.payload)
            elif isinstance(message, StartUnit):
                self.start(message, sender)
            elif isinstance(message, Construct):
                self.build(message)
            elif isinstance(message, ActorExitRequest):
                self.stop()
        except Exception:  # never let anything escape: Thespian would re-deliver the message
            log.exception("device host %s: unexpected error handling %s", self.unit, type(message).__name__)
        # The worker's pipe and the lane's sockets are watched along with the mailbox (Thespian resets
        # the watch each time).
        if self.worker is None:
            return None
        return ThespianWatch([self.worker.wake_r, *(self.desk.fds() if self.desk is not None else ()),
                              *(self.pyro.fds() if self.pyro is not None else ())])

    def watched(self, ready) -> None:
        """The worker handed something over, or a lane socket has something to read."""
        if self.pyro is not None:
            for call in self.pyro.take(ready):   # Pyro clients' calls queue like any other request
                if self.hung:   # it can never start here; this process is about to be killed
                    call.answer(self.not_started(call.request, "the device is hung"))
                else:
                    self.pending.append(Deliver(call.request, call))
        lane = [fd for fd in ready if fd != self.worker.wake_r and (self.pyro is None or fd not in self.pyro.fds())]
        self.take_in(lane)
        self.collect()
        turn_ends = time.monotonic() + QUICK_TURN_S
        while lane and self.current is None and not self.hung and time.monotonic() < turn_ends:
            # A client calling in a loop sends its next request within tens of microseconds of its
            # reply: look at the lane a moment longer, and serve it in this turn rather than after a
            # trip through Thespian's loop (as long again as the call itself).
            lane = select.select(self.desk.fds(), [], [], LINGER_S)[0]
            self.take_in(lane)
            self.next_job()

    def take_in(self, fds) -> None:
        """Read the lane's ready sockets and queue the requests they bring."""
        if self.desk is None or not fds:
            return
        for deliver in self.desk.receive(fds):
            if self.hung:  # it can never start here; this process is about to be killed
                self.answer(deliver.reply_to, self.not_started(deliver.request, "the device is hung"),
                            deliver.request.device)
            else:
                self.pending.append(deliver)

    # -- construction -----------------------------------------------------------------------

    def start(self, message: StartUnit, supervisor) -> None:
        """Learn what to run and report this process's pid; construction waits for Construct."""
        if self.supervisor is not None:
            return  # a repeated StartUnit must not open the hardware twice
        self.supervisor, self.spec = supervisor, message
        # A group of its own, before any driver starts a process. The record of its descendants goes
        # in the run folder on the supervisor's machine only: elsewhere that path is not the lab's.
        local = os.getppid() == message.supervisor_pid
        self.family = families.Family(message.run_dir if local else None)
        logs.tag_records_with_device(message.unit)
        if local and message.log_dir:
            logs.write_locally(message.log_dir)
        # Reported before any hardware is opened, so that a constructor that hangs can be killed by
        # pid, on any host. Waiting for the answer also makes sure this message has left: one sent
        # just before a blocking call may not, on a connection not yet used.
        self.send(supervisor, UnitStarted(self.unit, self.incarnation, os.getpid(), processes.start_time(os.getpid()) or 0))

    def build(self, message: Construct) -> None:
        """Construct the unit's drivers and report ready, or the error and exit."""
        spec = self.spec
        if spec is None or message.incarnation != self.incarnation or self.owned:
            return
        # A constructor stuck in a blocking call is ended by the kernel: SIGALRM's default action
        # terminates the process, whatever the Python code is doing.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, spec.supervision.init_timeout_s)
        try:
            for device in spec.devices:
                with logs.driving(device.name):
                    self.construct(device, spec.candidates.get(device.name), spec.run_dir)
            for name, locks in spec.locks.items():
                if locks and isinstance(self.drivers.get(name), ValveController):
                    self.drivers[name]._restore_locks(locks)
            controllers = {name: d for name, d in self.drivers.items() if isinstance(d, ValveController)}
            for controller in controllers.values():
                controller._link_peers(controllers)   # interlocks on another controller of this process
            descriptions = tuple(describe(name, driver) for name, driver in self.drivers.items())
            self.methods = {name: remote_methods(driver) for name, driver in self.drivers.items()}
            if any(device.pyro is not None for device in spec.devices):
                self.pyro = PyroDesks(spec.devices, self.owned)
        except Exception as exc:
            log.error("construction failed: %s: %s", type(exc).__name__, exc)
            # Reported first: releasing a half-built group could itself hang (the alarm still runs).
            self.send(self.supervisor, UnitFailed(self.unit, self.incarnation, os.getpid(), type(exc).__name__,
                                                  str(exc), traceback.format_exc()))
            self.release()
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.send(self.myAddress, ActorExitRequest())
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.worker = Worker()
        self.open_lane()
        self.attach_lab()
        for name, driver in list(self.drivers.items()):
            # Drivers report changes from the worker thread: hand them over to be sent from here.
            driver.subscribe(lambda event, detail, name=name: self.worker.post(Notice(name, event, dict(detail))))
        # Heartbeats start when the supervisor hears UnitReady: so does the clock on its silence.
        self.last_heard = time.monotonic()
        self.watchdog()  # records what the constructors started before anyone can know it runs
        self.send(self.supervisor, UnitReady(self.unit, self.incarnation, os.getpid(), descriptions,
                                             self.desk.lane if self.desk is not None else None))
        log.info("running (pid %d): %s", os.getpid(), ", ".join(self.drivers))

    def open_lane(self) -> None:
        """Listen for clients' direct connections: a Unix socket in the lab's private run folder (on
        the supervisor's machine; elsewhere this user's own) and TCP on the address this actor uses."""
        spec = self.spec
        local = os.getppid() == spec.supervisor_pid
        try:
            folder = spec.run_dir if local else str(runstate.private_dir(runstate.base_dir() / "lanes"))
            bind = self.myAddress.addressDetails.sockname[0]
            cameras = {name for name, methods in self.methods.items() if "acquire" in methods}
            self.desk = LaneDesk(self.unit, tuple(self.drivers), cameras, SEAL.key, folder, bind,
                                 spec.max_argument_bytes + (64 << 10), spec.lab_port)
        except Exception:  # the device still runs; its clients go through the supervisor
            log.exception("could not open the lane; clients reach this device through the supervisor only")
            return
        self.wakeupAfter(timedelta(seconds=LANE_REPORT_S), payload="lanes")

    def attach_lab(self) -> None:
        """Give drivers that are clients of the lab (a gateway) a client of it: by the lanes published
        in the run folder only, never through the actor system this process is part of."""
        for name, driver in self.owned:
            if hasattr(driver, "attach_lab"):
                from .client import connect

                with logs.driving(name):
                    try:
                        driver.attach_lab(connect(self.spec.lab_port, via_supervisor=False))
                    except Exception:
                        log.exception("%s could not be given a client of the lab", name)

    def construct(self, spec, candidate: int | None, run_dir: str) -> None:
        """Build one configured device's driver or a factory's drivers (its emulator first, if any)."""
        for name, driver in building.build(spec, candidate, run_dir, self.emulators).items():
            self.adopt(name, driver)

    def adopt(self, name: str, driver: Device) -> None:
        """Register a constructed driver and its sub-devices under their names."""
        self.owned.append((name, driver))
        self.drivers[name] = driver
        for sub, part in driver.sub_devices().items():
            self.drivers[f"{name}.{sub}"] = part

    def release(self) -> None:
        """Shut down every driver (newest first) and emulator; never raises."""
        for name, driver in reversed(self.owned):
            with logs.driving(name):
                try:
                    driver.shutdown()
                except Exception:
                    log.exception("shutdown of %s failed", name)
        self.owned.clear()
        self.drivers.clear()
        for emulator in self.emulators:
            try:
                emulator.stop()
            except Exception:
                log.exception("stopping an emulator failed")
        self.emulators.clear()

    def stop(self) -> None:
        """On ActorExitRequest: let a running call finish (briefly) and answer it, answer what never
        started, then release the hardware, then end every process the drivers left."""
        try:
            if self.worker is not None:
                ended = self.worker.stop(self.spec.supervision.stop_timeout_s * 0.8)
                self.collect(start_next=False)
                self.refuse_pending("the device is stopping")
            if self.desk is not None:
                self.desk.close("the device is stopping")
                if not ended:
                    log.error("%s is still running; its drivers cannot be shut down cleanly",
                              self.current.method if self.current else "a call")
                    return
            log.info("stopping: shutting down %s", ", ".join(name for name, _ in self.owned) or "nothing")
            self.release()
            if self.pyro is not None:   # after the drivers: closing joins each connected client's thread
                threading.Thread(target=self.pyro.close, daemon=True).start()
        finally:
            if self.family is not None and self.family.end():
                log.error("processes the drivers started survived SIGKILL")

    def refuse_pending(self, why: str) -> None:
        """Answer every queued request that never started: it was not carried out."""
        while self.pending:
            deliver = self.pending.popleft()
            self.answer(deliver.reply_to, self.not_started(deliver.request, why), deliver.request.device)

    @staticmethod
    def not_started(request, why: str) -> Failure:
        """The failure of a request that was never started."""
        return Failure(request.request_id, "restarting", "DeviceUnavailable",
                       f"{request.device}: {type(request).__name__} was not started: {why}", request.device)

    # -- requests ---------------------------------------------------------------------------

    @property
    def unit(self) -> str:
        """The unit this process runs ('' until told)."""
        return self.spec.unit if self.spec is not None else ""

    @property
    def incarnation(self) -> int:
        """Which start of the unit this process is, as the supervisor counts them."""
        return self.spec.incarnation if self.spec is not None else 0

    def next_job(self) -> None:
        """Keep the worker busy: the next request (or a frame for a camera's subscribers) as soon as it is free."""
        turn_ends = time.monotonic() + QUICK_TURN_S
        while self.current is None and not self.hung and self.start_one():
            if self.current.reply_to is STREAM or time.monotonic() > turn_ends:
                return  # back to Thespian's loop: sockets to read (a stream's acks), heartbeats
            # A short call is done within a millisecond: take its outcome in this turn, not after
            # another trip through Thespian's loop (which would cost a third of a trivial call).
            deadline = time.monotonic() + QUICK_CALL_S
            while self.current is not None and (left := deadline - time.monotonic()) > 0:
                self.take(self.worker.collect(wait=left))

    def start_one(self) -> bool:
        """Start the next request on the worker (or, if none waits, a frame for a camera's subscribers),
        answering at once those that cannot run; False if there is nothing to start."""
        while self.pending:
            deliver = self.pending.popleft()
            request = deliver.request
            # Before StartUnit there are no drivers (every request is refused); no limit is needed.
            limit = self.spec.max_argument_bytes if self.spec is not None else 0
            checked = check(self.drivers, self.methods, request, limit)
            if isinstance(checked, Failure):
                self.answer(deliver.reply_to, checked, request.device)
                continue
            self.run(self.job(request, deliver.reply_to, checked))
            return True
        camera = self.desk.next_stream() if self.desk is not None else None
        if camera is None:
            return False
        request = Acquire(device=camera, request_id=STREAM)
        checked = check(self.drivers, self.methods, request, self.spec.max_argument_bytes)
        if isinstance(checked, Failure):
            return False
        self.run(self.job(request, STREAM, checked))
        return True

    def job(self, request, reply_to, checked) -> Job:
        """The worker's job for a checked request."""
        driver, args, kwargs = checked
        owner = self.owner_of(request.device)
        ring = self.desk.ring_for(request.device, reply_to) if self.desk is not None else None
        return Job(0, request.device, driver, self.drivers.get(owner, driver), request, reply_to, args, kwargs,
                   self.spec.supervision.call_limit_s, reconnect_first=owner in self.degraded, ring=ring)

    def run(self, job: Job) -> None:
        """Start a job on the worker and the clock on its time limit."""
        self.jobs += 1
        job.id, job.started = self.jobs, time.monotonic()
        self.current = job
        self.worker.submit(job)
        self.arm_limit()

    def arm_limit(self) -> None:
        """Make sure a timer fires by the current call's time limit. One timer serves many short calls
        (each fired timer re-arms for the call running then), not one timer per call."""
        job = self.current
        if job is None:
            return
        deadline = job.started + job.limit
        if any(due <= deadline + 0.001 for due in self.armed):
            return
        self.armed.append(deadline)
        self.wakeupAfter(timedelta(seconds=max(0.0, deadline - time.monotonic())), payload=("limit", deadline))

    def collect(self, start_next: bool = True) -> None:
        """The worker finished something, worked out a time limit, or a device reported a change."""
        self.take(self.worker.collect())
        if start_next:
            self.next_job()

    def take(self, items) -> None:
        """Act on what the worker handed over."""
        for item in items:
            if isinstance(item, Outcome):
                self.finished(item)
            elif isinstance(item, LimitKnown):
                job = self.current
                if job is not None and job.id == item.job_id:
                    job.limit = item.seconds
                    self.arm_limit()
            else:
                self.tell(item.device, item.event, item.detail)

    def tell(self, device: str, kind: str, detail: dict) -> None:
        """A device's change: to the supervisor (events, registry) and to the lane's subscribers."""
        self.send(self.supervisor, DeviceNotice(self.unit, device, kind, detail))
        if self.desk is not None:
            self.desk.notice(device, kind, detail, time.time())

    def finished(self, outcome: Outcome) -> None:
        """Send a finished call's reply; follow its link going down or coming back."""
        job = outcome.job
        if self.current is not None and self.current.id == job.id:
            self.current = None
        owner = self.owner_of(job.device)
        if outcome.link == "restored" and owner in self.degraded:
            attempts = self.degraded.pop(owner) + 1
            with logs.driving(owner):
                log.info("link restored after %d attempts", attempts)
            self.tell(owner, "recovered", {"attempts": attempts})
        elif outcome.link == "lost":
            self.link_lost(owner, outcome.detail)
        elif job.request is None:  # a reconnect attempt that failed
            self.degraded[owner] = self.degraded.get(owner, 0) + 1
            delay = backoff_delay(self.degraded[owner], RECONNECT_FIRST_S, RECONNECT_MAX_S)
            with logs.driving(owner):
                log.info("reconnect attempt %d failed: %s", self.degraded[owner], outcome.detail)
            self.wakeupAfter(timedelta(seconds=delay), payload=("reconnect", owner))
        if job.request is None:
            return
        reply = outcome.reply
        if self.desk is not None and isinstance(reply, Reply) and isinstance(reply.value, Image):
            self.desk.publish(job.device, reply.value, outcome.shared)  # every frame the camera makes
        if job.reply_to is STREAM:
            if isinstance(reply, Failure):
                self.desk.end_streams(job.device, reply)
        else:
            self.answer(job.reply_to, reply, job.device, outcome.shared)

    def answer(self, reply_to, reply: Reply | Failure, device: str, shared=None) -> None:
        """Send a reply to its client: on its lane, or as a message (then telling the supervisor it is done)."""
        if isinstance(reply_to, Conn):
            self.desk.answer(reply_to, device, reply, shared)
            return
        if isinstance(reply_to, PyroCall):
            reply_to.answer(reply)
            if self.desk is not None:
                self.desk.count(device, isinstance(reply, Failure))
            return
        try:
            self.send(reply_to, reply)
        finally:
            self.send(self.supervisor, Done(self.unit, reply.request_id, isinstance(reply, Failure)))

    # -- links, watchdog --------------------------------------------------------------------

    def owner_of(self, name: str) -> str:
        """The configured device that `name` belongs to (itself, or the controller of a sub-device)."""
        for owner, _ in self.owned:
            if name == owner or name.startswith(owner + "."):
                return owner
        return name

    def link_lost(self, owner: str, error: str) -> None:
        """Mark a device degraded after a LinkError and schedule reconnection."""
        if owner in self.degraded:
            return
        self.degraded[owner] = 0
        with logs.driving(owner):
            log.warning("link lost: %s; reconnecting in the background", error)
        self.tell(owner, "degraded", {"error": error})
        self.wakeupAfter(timedelta(seconds=RECONNECT_FIRST_S), payload=("reconnect", owner))

    def wakeup(self, payload) -> None:
        """Timers: call time limits, the watchdog on the supervisor, reconnection attempts."""
        if isinstance(payload, tuple) and payload[0] == "limit":
            if payload[1] in self.armed:
                self.armed.remove(payload[1])
            job = self.current
            if job is None or self.hung:
                return
            if job.started + job.limit - time.monotonic() > 0.001:  # a later call, or a longer limit since
                self.arm_limit()
                return
            self.hung = True
            with logs.driving(job.device):
                log.error("%s has run %.1f s, past its time limit of %g s: hung", job.method,
                          time.monotonic() - job.started, job.limit)
            # The queued requests never started. The supervisor answers them: a reply sent from here
            # now could be lost when this process is killed, a moment from now.
            local = (Conn, PyroCall)   # answered from here; the others by the supervisor
            not_started = tuple(d.request.request_id for d in self.pending if not isinstance(d.reply_to, local))
            for deliver in [d for d in self.pending if isinstance(d.reply_to, local)]:
                self.answer(deliver.reply_to, self.not_started(deliver.request, "the device is hung"),
                            deliver.request.device)
            self.pending.clear()
            self.send(self.supervisor, Hung(self.unit, self.incarnation, job.method, job.limit,
                                            job.request.request_id if job.request else "", not_started))
        elif payload == "watchdog":
            self.watchdog()
        elif payload == "lanes" and self.desk is not None:
            self.desk.sweep()
            report = self.desk.report(self.unit, self.incarnation)
            if report is not None:
                self.send(self.supervisor, report)
            self.wakeupAfter(timedelta(seconds=LANE_REPORT_S), payload="lanes")
        elif payload == "memory_exit":
            os._exit(processes.MEMORY_LIMIT_EXIT)
        elif isinstance(payload, tuple) and payload[0] == "reconnect":
            owner = payload[1]
            if owner not in self.degraded:
                return
            if self.current is not None:  # the worker is busy: the next call tries to reconnect first
                self.wakeupAfter(timedelta(seconds=RECONNECT_FIRST_S), payload=payload)
                return
            driver = next(d for name, d in self.owned if name == owner)
            self.run(Job(0, owner, driver, driver, limit=self.spec.supervision.call_limit_s))

    def watchdog(self) -> None:
        """The supervisor's silence, this process's memory (its children's included), and the record
        of the processes its drivers started."""
        sup = self.spec.supervision
        silent = time.monotonic() - self.last_heard
        # Looked at again the moment the silence would pass watchdog_s: a process on a lost host
        # ends itself within watchdog_s of the last heartbeat it heard, not up to twice that.
        next_look = sup.watchdog_s - silent + 0.01
        if silent > sup.watchdog_s and os.getppid() == self.spec.supervisor_pid:
            # The supervisor is this process's parent and alive (its death would have ended us, by
            # the parent-death signal): it is busy or stalled, which is no reason to end a device.
            log.warning("no word from the supervisor for %.1f s; it is alive, so it is busy: staying up", silent)
            next_look = sup.watchdog_s
        elif silent > sup.watchdog_s:
            # The supervisor is gone, or cannot reach this host (a remote host's parent-death signal
            # cannot reach us): end, closing the drivers, before anyone may start another process of them.
            log.error("no word from the supervisor for %.1f s; shutting down", silent)
            self.send(self.myAddress, ActorExitRequest())
            return
        used = self.family.check()
        if 0 < sup.memory_max_mb < used:
            self.over_memory(used, sup.memory_max_mb)
        else:
            self.wakeupAfter(timedelta(seconds=min(MEMORY_CHECK_S, next_look) if sup.memory_max_mb else next_look),
                             payload="watchdog")

    def over_memory(self, used: float, limit: int) -> None:
        """Past memory_max_mb: report it, kill what the drivers started, and end this process with
        MEMORY_LIMIT_EXIT once the report has left. Ended like a crash: a shutdown could allocate or
        hang, and a call may still be running."""
        log.error("memory limit exceeded: %.0f MB > %d MB (with its child processes); ending the process",
                  used, limit)
        for device in self.spec.devices:
            self.send(self.supervisor, DeviceNotice(self.unit, device.name, "memory_exceeded",
                                                    {"rss_mb": round(used), "limit_mb": limit, "pid": os.getpid()}))
        self.family.end(timeout=0)
        self.wakeupAfter(timedelta(seconds=MEMORY_EXIT_GRACE_S), payload="memory_exit")
