"""The keeper: the process behind `labctl up` that runs one lab on this host.

It starts the lab's admin and supervisor, then watches both. If the supervisor is killed it
makes sure every device process of the old one is gone (never two processes on one serial port)
and creates a new supervisor; if the admin is killed, it clears what is left, frees the port and
starts the lab again (or, told not to recover, says what happened and exits non-zero). It also
reaps the lab's orphans, so none is ever left as a zombie.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import time
import uuid

from thespian.system.messages.status import Thespian_StatusReq, Thespian_SystemStatus

from labctl.config.schema import Lab

from . import families, framering, labkey, logs, processes, runstate
from .actorsystem import SUPERVISOR_NAME, keep_out_of_children, never_starting_an_admin, start_admin
from .errors import LabError
from .messages import GetLabStatus, InitLab, LabStatus, Reply
from .stopping import ask_lab, stop_in_order
from .supervisor import Supervisor

INIT_TIMEOUT_S = 15.0
LIVENESS_S = 2.0        # the keeper asks the supervisor how the lab is this often ...
LIVENESS_MISSES = 2     # ... and kills one that stays silent this many times in a row (stopped) ...
BUSY_MISSES = 5         # ... or this many (running, but not answering: stuck)


class LabAlreadyRunning(LabError):
    """A live lab holds the port."""


class PortInUse(LabError):
    """Something that is not a labctl lab holds the port."""


class AdminLost(LabError):
    """The lab's admin died and the keeper was told not to recover."""


class Keeper:
    """Runs one lab on this host; see the module docstring."""

    def __init__(self, lab: Lab, recover: bool = True, detached: bool = False, new_key: bool = False) -> None:
        self.lab = lab
        self.recover = recover
        self.new_key = new_key
        self.detached = detached
        self.log = logs.file_logger(lab.log_dir)
        self.system = None
        self.key: bytes | None = None  # one key for the lab's whole life, recoveries included
        self.record: runstate.LabRecord | None = None
        self.supervisor = None
        self.stop_requested = False
        self.incarnation = 0          # how many times the supervisor or the admin was brought back
        self.next_check = time.monotonic() + LIVENESS_S
        self.silent = {"admin": 0, "supervisor": 0}   # liveness checks in a row each did not answer
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        keep_out_of_children(self._wake_r, self._wake_w)

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the admin and the supervisor and hand it the lab; raises LabError saying why not."""
        processes.become_subreaper()
        clear_port(self.lab.port, self.lab.bind)
        if self.key is None:
            self.key = self.choose_key()
        labkey.install(self.lab.port, self.key)
        self.log.info("starting lab %s on %s:%d (keeper pid %d)", self.lab.name, self.lab.bind, self.lab.port,
                      os.getpid())
        self.system = start_admin(self.lab.port, self.lab.bind, self.lab.host, self.lab.name, self.lab.log_dir,
                                  self.key, max_packet_bytes=self.lab.max_packet_mb * 1024 * 1024,
                                  members={name: (h.address, h.port) for name, h in self.lab.hosts.items()})
        self.start_supervisor()

    def choose_key(self) -> bytes:
        """The lab's key: `[lab] key_file`'s, else the one an earlier start of this lab kept here (so
        member hosts and clients given a copy keep working), else a new one."""
        if self.lab.key_file:
            return labkey.read_key_file(self.lab.key_file)
        if not self.new_key:
            try:
                return labkey.read_key_file(labkey.path_for(self.lab.port))
            except LabError:
                pass
        self.log.info("made a new lab key: %s", labkey.path_for(self.lab.port))
        return labkey.generate()

    def start_supervisor(self) -> None:
        """Create the supervisor, hand it the lab, and write the run record."""
        self.supervisor = self.system.createActor(Supervisor, globalName=SUPERVISOR_NAME)
        reply = self.system.ask(self.supervisor, InitLab(request_id=uuid.uuid4().hex, lab=self.lab,
                                                         keeper_pid=os.getpid(), incarnation=self.incarnation),
                                INIT_TIMEOUT_S)
        if not isinstance(reply, Reply):
            raise LabError(f"the supervisor did not answer within {INIT_TIMEOUT_S:g} s (got {reply!r}); "
                           f"see {self.lab.log_dir}/lab.log")
        self.record = runstate.LabRecord.of(
            self.lab.port, self.lab.name, self.lab.file, self.lab.log_dir, reply.value["admin_pid"],
            reply.value["pid"], self.detached,
            stop_timeout_s=max((d.supervision.stop_timeout_s for d in self.lab.devices), default=1.0),
            bind=self.lab.bind)
        runstate.write(self.record)

    # -- watch ------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Signal-safe: ask the watch loop to stop the lab."""
        self.stop_requested = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def watch(self) -> None:
        """Keep the lab alive until a stop is requested; raises AdminLost when told not to recover."""
        while not self.stop_requested:
            self.watch_once(1.0)

    def watch_once(self, wait: float) -> None:
        """One look at the lab, waiting up to `wait` s for its admin or supervisor to end: replace what
        died, kill what hangs (also called while `up` waits for the devices to start)."""
        admin, supervisor = self.record.admin_pid, self.record.supervisor_pid
        fds = {}
        for pid in (admin, supervisor):
            try:
                fds[os.pidfd_open(pid)] = pid
            except (OSError, AttributeError):
                pass
        try:
            select.select([self._wake_r, *fds], [], [], wait)
        finally:
            for fd in fds:
                os.close(fd)
        processes.reap_children()
        if self.stop_requested:
            return
        if not processes.is_alive(admin):
            self.admin_died()
        elif supervisor and not processes.is_alive(supervisor):
            self.supervisor_died()
        elif supervisor and time.monotonic() >= self.next_check:
            self.check_liveness(supervisor)

    def check_liveness(self, pid: int) -> None:
        """Ask the admin and the supervisor how they are; one that stays silent too many times in a row
        is hung (stopped, stuck): kill it, and the watch loop replaces it as if it had died."""
        self.next_check = time.monotonic() + LIVENESS_S
        for name, address, question, answer, who in (
                ("admin", self.system._systemBase.adminAddr, Thespian_StatusReq(), Thespian_SystemStatus,
                 self.record.admin_pid),
                ("supervisor", self.supervisor, GetLabStatus(request_id=uuid.uuid4().hex), LabStatus, pid)):
            try:
                # A fresh context (a timeout must not stall the next ask) that never starts an admin
                # of its own if it finds the lab's gone: recovering the admin is this loop's job.
                with never_starting_an_admin(), self.system.private() as context:
                    reply = context.ask(address, question, LIVENESS_S)
            except Exception as exc:  # the admin itself may be in trouble; the loop sees it die
                self.log.warning("asking the %s how the lab is: %s", name, exc)
                reply = None
            self.silent[name] = 0 if isinstance(reply, answer) else self.silent[name] + 1
            # A busy process may keep a status request waiting a while (the admin placing an actor on
            # a host that does not answer, a supervisor with a burst of work): give it longer, unless
            # it is plainly stopped. Replacing a supervisor restarts every device.
            patience = LIVENESS_MISSES if processes.is_stopped(who) else BUSY_MISSES
            if self.silent[name] >= patience:
                self.log.error("the %s (pid %d) has not answered for %d checks %.0f s apart: hung; killing it",
                               name, who, self.silent[name], LIVENESS_S)
                self.silent[name] = 0
                processes.kill_all([who], timeout=2.0)
                return

    def supervisor_died(self) -> None:
        """Replace a dead supervisor once every process of the old one is gone."""
        self.log.error("the supervisor (pid %d) died; starting a new one", self.record.supervisor_pid)
        # Its device hosts die with it (parent-death signal); make sure, before new ones open the hardware.
        # What their drivers started in new sessions did not: their records name it.
        families.kill_recorded_families(runstate.lab_dir(self.lab.port))
        orphans = [pid for pid in self.record.lab_processes()
                   if pid != self.record.admin_pid and processes.parent_of(pid) != self.record.admin_pid]
        survivors = processes.kill_all(orphans, timeout=2.0)
        if survivors:
            self.log.error("device processes %s would not die; not starting a new supervisor", sorted(survivors))
            return
        self.incarnation += 1
        self.start_supervisor()

    def admin_died(self) -> None:
        """Clear a dead admin's processes and port, then start the lab again (or raise AdminLost)."""
        self.log.error("the admin (pid %d) died", self.record.admin_pid)
        self.clear_leftovers()
        if not self.recover:
            raise AdminLost(f"the lab's admin (pid {self.record.admin_pid}) died; its processes were stopped and "
                            f"port {self.lab.port} freed (not recovering: --no-recover)")
        self.log.info("recovering: starting the lab again")
        self.system = None
        self.incarnation += 1
        self.start()

    def clear_leftovers(self) -> None:
        """Kill whatever is left of the lab on this host and wait for its port to be free.

        Besides the recorded processes: an admin this keeper forked (its parent, as subreaper) that
        holds the port but never finished starting, so it was never recorded."""
        ours = [pid for pid in processes.port_listeners(self.lab.port) if processes.parent_of(pid) == os.getpid()]
        families.kill_recorded_families(runstate.lab_dir(self.lab.port))
        processes.kill_all(self.record.lab_processes() + ours, timeout=2.0)
        processes.reap_children()
        if not processes.wait_port_free(self.lab.port, self.lab.bind, timeout=2.0):
            self.log.error("port %d is still held by %s", self.lab.port, processes.port_listeners(self.lab.port))

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> float:
        """Stop every device (each driver's shutdown), the admin, and every process left; free the port.

        Only what this keeper started: a keeper that could not start touches nothing. Returns how
        long it took."""
        began = time.monotonic()
        if self.record is not None:
            if self.system is not None and self.record.admin_running():
                self.stop_processes()
            self.clear_leftovers()
            framering.remove_segments(self.lab.port)   # the rings of device processes that were killed
            runstate.remove(self.lab.port)
            shutil.rmtree(runstate.lab_dir(self.lab.port), ignore_errors=True)
        elapsed = time.monotonic() - began
        self.log.info("%s stopped in %.2f s", self.lab.name, elapsed)
        return elapsed

    def stop_processes(self) -> None:
        """The ordered part of stopping: devices through the supervisor, then the admin."""
        stop_in_order(self.system, self.supervisor, self.record)


def clear_port(port: int, bind: str, keeper_only: bool = False) -> None:
    """Make sure `port` can take a new lab: refuse if a live lab holds it, clear a dead lab's leftovers.

    A record written by this very process is the lab this keeper is recovering: it counts as dead.
    With `keeper_only` (a node's port), what outlived its keeper is a leftover, not a live lab.
    Only processes that the record names are ever killed; anything else on the port is refused."""
    record = runstate.read(port)
    alive = record is not None and (record.keeper_running() if keeper_only else record.live())
    if record is not None and record.keeper_pid != os.getpid() and alive:
        raise LabAlreadyRunning(f"lab {record.lab!r} is already running on port {port} (keeper pid "
                                f"{record.keeper_pid}, config {record.config}); stop it with: labctl down --port {port}")
    if record is not None:
        processes.kill_all(record.lab_processes(), timeout=2.0)
        framering.remove_segments(port)
        runstate.remove(port)
    if processes.port_is_free(port, bind) and not processes.port_answers(port, bind, timeout=0.2):
        return
    name, _ = ask_lab(port, bind)  # a lab whose record is elsewhere (another run folder) still answers
    if name is not None:
        raise LabAlreadyRunning(f"lab {name!r} is already running on port {port}; stop it with: "
                                f"labctl down --port {port}")
    if record is not None and processes.wait_port_free(port, bind, timeout=2.0):
        return
    holders = processes.port_listeners(port)
    raise PortInUse(f"port {port} is in use by another program (pids: "
                    f"{', '.join(map(str, sorted(holders))) or 'unknown'}), or by a lab whose record and key are "
                    "not in this run folder; choose another [lab].port, or stop that program")


def install_stop_signals(keeper: Keeper) -> None:
    """SIGINT, SIGTERM and SIGHUP stop the lab in order instead of killing the keeper."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, keeper.request_stop)
