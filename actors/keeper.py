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
import signal
import time
import uuid

from thespian.actors import ActorSystemException

from labctl.config.schema import Lab

from . import logs, processes, runstate
from .actorsystem import SUPERVISOR_NAME, keep_out_of_children, start_admin
from .errors import LabError
from .messages import InitLab, Reply, StopLab

INIT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 1.6


class LabAlreadyRunning(LabError):
    """A live lab holds the port."""


class PortInUse(LabError):
    """Something that is not a labctl lab holds the port."""


class AdminLost(LabError):
    """The lab's admin died and the keeper was told not to recover."""


class Keeper:
    """Runs one lab on this host; see the module docstring."""

    def __init__(self, lab: Lab, recover: bool = True, detached: bool = False) -> None:
        self.lab = lab
        self.recover = recover
        self.detached = detached
        self.log = logs.file_logger(lab.log_dir)
        self.system = None
        self.record: runstate.LabRecord | None = None
        self.supervisor = None
        self.stop_requested = False
        self.incarnation = 0          # how many times the supervisor or the admin was brought back
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        keep_out_of_children(self._wake_r, self._wake_w)

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the admin and the supervisor and hand it the lab; raises LabError saying why not."""
        processes.become_subreaper()
        clear_port(self.lab.port, self.lab.bind)
        log_defs = logs.log_config(self.lab.log_dir)
        self.log.info("starting lab %s on %s:%d (keeper pid %d)", self.lab.name, self.lab.bind, self.lab.port,
                      os.getpid())
        self.system = start_admin(self.lab.port, self.lab.bind, self.lab.host, self.lab.name, self.lab.log_dir,
                                  log_defs)
        self.start_supervisor()

    def start_supervisor(self) -> None:
        """Create the supervisor, hand it the lab, and write the run record."""
        self.supervisor = self.system.createActor("labctl.actors.supervisor.Supervisor", globalName=SUPERVISOR_NAME)
        reply = self.system.ask(self.supervisor, InitLab(request_id=uuid.uuid4().hex, lab=self.lab,
                                                         keeper_pid=os.getpid(), incarnation=self.incarnation),
                                INIT_TIMEOUT_S)
        if not isinstance(reply, Reply):
            raise LabError(f"the supervisor did not answer within {INIT_TIMEOUT_S:g} s (got {reply!r}); "
                           f"see {self.lab.log_dir}/lab.log")
        admin_pid = reply.value["admin_pid"]
        self.record = runstate.LabRecord(
            port=self.lab.port, lab=self.lab.name, config=self.lab.file, log_dir=self.lab.log_dir,
            keeper_pid=os.getpid(), admin_pid=admin_pid, supervisor_pid=reply.value["pid"],
            session=processes.session_of(admin_pid) or 0, admin_cmdline=processes.cmdline(admin_pid),
            detached=self.detached)
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
            admin, supervisor = self.record.admin_pid, self.record.supervisor_pid
            fds = {}
            for pid in (admin, supervisor):
                try:
                    fds[os.pidfd_open(pid)] = pid
                except (OSError, AttributeError):
                    pass
            try:
                select.select([self._wake_r, *fds], [], [], 1.0)
            finally:
                for fd in fds:
                    os.close(fd)
            processes.reap_children()
            if self.stop_requested:
                break
            if not processes.is_alive(admin):
                self.admin_died()
            elif supervisor and not processes.is_alive(supervisor):
                self.supervisor_died()

    def supervisor_died(self) -> None:
        """Replace a dead supervisor once every process of the old one is gone."""
        self.log.error("the supervisor (pid %d) died; starting a new one", self.record.supervisor_pid)
        # Its device hosts die with it (parent-death signal); make sure, before new ones open the hardware.
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
        """Kill whatever is left of the lab on this host and wait for its port to be free."""
        processes.kill_all(self.record.lab_processes(), timeout=2.0)
        processes.reap_children()
        if not processes.wait_port_free(self.lab.port, self.lab.bind, timeout=2.0):
            self.log.error("port %d is still held by %s", self.lab.port, processes.port_listeners(self.lab.port))

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> float:
        """Stop every device (each driver's shutdown), the admin, and every process left; free the port.

        Returns how long it took."""
        began = time.monotonic()
        if self.system is not None and self.record is not None and processes.is_alive(self.record.admin_pid):
            try:
                self.system.ask(self.supervisor, StopLab(request_id=uuid.uuid4().hex), STOP_TIMEOUT_S)
            except ActorSystemException as exc:
                self.log.warning("stopping the devices: %s", exc)
            try:
                self.system.shutdown()
            except ActorSystemException as exc:
                self.log.warning("shutting down the admin: %s", exc)
        if self.record is not None:
            self.clear_leftovers()
        runstate.remove(self.lab.port)
        elapsed = time.monotonic() - began
        self.log.info("lab %s stopped in %.2f s", self.lab.name, elapsed)
        return elapsed


def clear_port(port: int, bind: str) -> None:
    """Make sure `port` can take a new lab: refuse if a live lab holds it, clear a dead lab's leftovers.

    A record written by this very process is the lab this keeper is recovering: it counts as dead."""
    record = runstate.read(port)
    if record is not None and record.keeper_pid != os.getpid() and lab_is_live(record):
        raise LabAlreadyRunning(f"lab {record.lab!r} is already running on port {port} (keeper pid "
                                f"{record.keeper_pid}, config {record.config}); stop it with: labctl down --port {port}")
    if record is not None:
        processes.kill_all(record.lab_processes(), timeout=2.0)
        runstate.remove(port)
    if processes.port_is_free(port, bind) and not processes.port_answers(port, bind, timeout=0.2):
        return
    holders = processes.port_listeners(port)
    leftovers = {pid for pid in holders if "labctl" in processes.cmdline(pid)}
    if holders - leftovers or not holders:
        raise PortInUse(f"port {port} is in use by another program (pids: "
                        f"{', '.join(map(str, sorted(holders))) or 'unknown'}); choose another [lab].port")
    processes.kill_all(leftovers, timeout=2.0)
    if not processes.wait_port_free(port, bind, timeout=2.0):
        raise PortInUse(f"port {port} is still held after stopping a dead lab's processes")


def lab_is_live(record: runstate.LabRecord) -> bool:
    """Whether a recorded lab still runs here (its keeper or its admin, not a stranger with a reused pid)."""
    admin = record.admin_pid and processes.is_alive(record.admin_pid) and \
        processes.cmdline(record.admin_pid) == record.admin_cmdline
    keeper = processes.is_alive(record.keeper_pid) and processes.cmdline(record.keeper_pid) == record.admin_cmdline
    return bool(admin or keeper)


def shutdown_lab(port: int, bind: str = "127.0.0.1", timeout: float = 10.0) -> str | None:
    """Stop the lab on `port` as Ctrl-C would, from any process; returns its name, or None if none ran.

    Its keeper, if alive, is asked to stop it in order; without a keeper the admin is stopped
    directly. Either way every process of the lab is then gone and the port free."""
    record = runstate.read(port)
    name = record.lab if record is not None else None
    keeper = record.keeper_pid if record is not None and lab_is_live(record) else 0
    if not keeper and processes.port_answers(port, bind, timeout=0.5):
        name, keeper = _ask_lab(port, bind)  # a lab started with another run folder: ask it
    if keeper:
        os.kill(keeper, signal.SIGTERM)
        if processes.wait_gone([keeper], timeout):
            processes.kill_all([keeper])
    elif processes.port_answers(port, bind, timeout=0.5):
        _stop_without_keeper(port, bind)
    leftovers = set(record.lab_processes()) if record is not None else set()
    leftovers |= {pid for pid in processes.port_listeners(port) if "labctl" in processes.cmdline(pid)}
    if leftovers:
        name = name or "lab"
        processes.kill_all(leftovers, timeout=2.0)
    processes.wait_port_free(port, bind, timeout=2.0)
    runstate.remove(port)
    return name


def _ask_lab(port: int, bind: str) -> tuple[str, int]:
    """(lab name, keeper pid if that keeper runs here) from the lab's own supervisor."""
    from .actorsystem import attach
    from .messages import GetLabStatus, LabStatus

    system = attach(port, bind)
    try:
        supervisor = system.createActor("labctl.actors.supervisor.Supervisor", globalName=SUPERVISOR_NAME)
        status = system.ask(supervisor, GetLabStatus(request_id=uuid.uuid4().hex), 2.0)
    except ActorSystemException:
        status = None
    finally:
        system._systemBase.transport.close()
    if not isinstance(status, LabStatus):
        return "lab", 0
    keeper = status.keeper_pid if "labctl" in processes.cmdline(status.keeper_pid) else 0
    return status.lab, keeper


def _stop_without_keeper(port: int, bind: str) -> None:
    """Stop a lab whose keeper is gone: its devices in order, then its admin."""
    from .actorsystem import attach

    system = attach(port, bind)
    try:
        supervisor = system.createActor("labctl.actors.supervisor.Supervisor", globalName=SUPERVISOR_NAME)
        system.ask(supervisor, StopLab(request_id=uuid.uuid4().hex), STOP_TIMEOUT_S)
    except ActorSystemException:
        pass
    finally:
        system.shutdown()  # from an attached process this stops the admin itself


def install_stop_signals(keeper: Keeper) -> None:
    """SIGINT, SIGTERM and SIGHUP stop the lab in order instead of killing the keeper."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, keeper.request_stop)
