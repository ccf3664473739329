"""Starting and attaching to Thespian actor systems, with labctl's fixes to Thespian's defaults.

THESPIAN.md lists what these fixes are for: every actor and admin port would listen on 0.0.0.0,
actor processes would outlive their parents (holding serial ports), and a client could start a
stray admin where it only meant to attach. `harden()` must run before a process's first
`ActorSystem()`; forked actors inherit it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from datetime import timedelta
from pathlib import Path

from thespian.actors import Actor, ActorSystem, InvalidActorAddress

from . import logs, processes
from .errors import LabNotRunning

BASE = "multiprocTCPBase"
SUPERVISOR_NAME = "labctl.supervisor"
HOST_CAPABILITY = "labctl.host"
LAB_CAPABILITY = "labctl.lab"
CONVENTION_CAPABILITY = "Convention Address.IPv4"
ADMIN_SHUTDOWN_S = 2.0

# pid -> exit code of this process's children that Thespian has reaped; the supervisor reads it to
# say how a device's process ended ("killed by SIGKILL").
EXIT_CODES: dict[int, int | None] = {}

_hardened = False
_attach_only = threading.local()
_attach_lock = threading.Lock()
_close_in_children: set[int] = set()


def keep_out_of_children(*fds: int) -> None:
    """Close these descriptors in every process Thespian forks from now on (admin, logger, actors).

    A forked actor inherits every open descriptor; a pipe end kept open in an actor would, for one,
    stop its reader from ever seeing end-of-file."""
    _close_in_children.update(fds)


def _close_inherited() -> None:
    for fd in _close_in_children:
        try:
            os.close(fd)
        except OSError:
            pass


def harden(bind: str = "127.0.0.1") -> None:
    """Install labctl's fixes to Thespian in this process (idempotent)."""
    global _hardened
    os.environ["THESPIAN_BASE_IPADDR"] = bind
    if _hardened:
        return
    _hardened = True
    logs.remember_logging_manager()
    import thespian.system.systemBase as system_base

    # An admin shuts down in tens of milliseconds; one that does not (stopped, hung) is not waited
    # on for Thespian's 10 s: whoever stops a lab kills what is left afterwards anyway.
    system_base.MAX_SYSTEM_SHUTDOWN_DELAY = timedelta(seconds=ADMIN_SHUTDOWN_S)
    import thespian.system.multiprocCommon as multiproc
    from thespian.system.transport import IPBase

    original_address_init = IPBase.IPActorAddress.__init__

    def address_init(self, *args, **kwargs):
        original_address_init(self, *args, **kwargs)
        # Thespian binds '' (every interface) for addresses it advertises; bind the advertised one.
        if self.bindname[0] == "":
            self.bindname = (self.sockname[0], self.bindname[1])

    IPBase.IPActorAddress.__init__ = address_init

    def dying_with_parent(start):
        def run(*args, **kwargs):
            parent = multiprocessing.parent_process()
            processes.die_with_parent(parent.pid if parent is not None else None)
            _close_inherited()
            # Thespian is about to replace logging's root and manager in this process, as it did in
            # each process above; loggers made before (a driver module's, imported in the keeper
            # to check the lab file) would keep pointing at an old root. See logs.adopt_inherited_loggers().
            logs.remember_logging_manager()
            return start(*args, **kwargs)
        return run

    def admin_start(start):
        def run(*args, **kwargs):
            _close_inherited()
            return start(*args, **kwargs)
        return run

    # These are looked up as module globals when a process is forked, so wrapping them here reaches
    # every actor process and the logger (each dies with the process that forked it) and the admin
    # (which detaches itself on purpose: the keeper watches it instead).
    multiproc.startChild = dying_with_parent(multiproc.startChild)
    multiproc.startupASLogger = dying_with_parent(multiproc.startupASLogger)
    multiproc.startAdmin = admin_start(multiproc.startAdmin)

    check_liveness = multiproc.MultiProcReplicator._checkChildLiveness

    def record_exit(child_info):
        alive = check_liveness(child_info)
        if not alive:
            EXIT_CODES[child_info.childProc.pid] = child_info.childProc.exitcode
        return alive

    multiproc.MultiProcReplicator._checkChildLiveness = staticmethod(record_exit)

    original_start_admin = multiproc.multiprocessCommon._startAdmin

    def start_admin(self, *args, **kwargs):
        if getattr(_attach_only, "on", False):
            raise LabNotRunning("no lab is running on this port")
        return original_start_admin(self, *args, **kwargs)

    multiproc.multiprocessCommon._startAdmin = start_admin


def start_admin(port: int, bind: str, host: str, lab_name: str, log_dir: str,
                leader: tuple[str, int] | None = None) -> ActorSystem:
    """Start a new admin for a lab on this host (joining the `leader`'s convention if given); the
    caller must have checked that the port is free."""
    harden(bind)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    os.environ["THESPLOG_FILE"] = str(Path(log_dir) / "thespian.log")
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(1024 * 1024))
    capabilities = {"Admin Port": port, HOST_CAPABILITY: host, LAB_CAPABILITY: lab_name,
                    "Process Startup Method": "fork"}
    if leader is not None:
        capabilities[CONVENTION_CAPABILITY] = leader
    return ActorSystem(BASE, capabilities, logDefs=logs.log_config(log_dir), transientUnique=True)


def attach(port: int, address: str = "127.0.0.1", timeout: float = 2.0) -> ActorSystem:
    """Attach to the admin on `port`, never starting one; LabNotRunning when none answers in time."""
    harden(address)
    if not processes.port_answers(port, address):
        raise LabNotRunning(f"no lab is running on port {port}")
    import thespian.system.systemBase as system_base

    # Thespian retries an admin that does not answer for ~11 s (MAX_SYSTEM_SHUTDOWN_DELAY + 1 s, in
    # steps of MAX_ADMIN_STATUS_REQ_DELAY); a client gives it its own timeout instead.
    with _attach_lock:
        saved = system_base.MAX_SYSTEM_SHUTDOWN_DELAY, system_base.MAX_ADMIN_STATUS_REQ_DELAY
        system_base.MAX_SYSTEM_SHUTDOWN_DELAY = timedelta(0)
        # It asks twice, with a 0.5 s pause: two asks of timeout/2.5 each fit the timeout.
        system_base.MAX_ADMIN_STATUS_REQ_DELAY = timedelta(seconds=max(0.2, min(timeout / 2.5, 2.0)))
        _attach_only.on = True
        try:
            return ActorSystem(BASE, {"Admin Port": port}, logDefs=QUIET_LOGS, transientUnique=True)
        except InvalidActorAddress:
            raise LabNotRunning(f"something listens on port {port} but no lab's admin answers "
                                "(a hung lab, or another program)") from None
        finally:
            _attach_only.on = False
            system_base.MAX_SYSTEM_SHUTDOWN_DELAY, system_base.MAX_ADMIN_STATUS_REQ_DELAY = saved


# Clients pass this when attaching; it is used only if Thespian had to start something itself.
QUIET_LOGS = {"version": 1, "disable_existing_loggers": False,
              "root": {"level": "WARNING", "handlers": []}}


class PlacedActor(Actor):
    """An actor that runs only on the host its creator names: targetActorRequirements={HOST_CAPABILITY: name}."""

    @staticmethod
    def actorSystemCapabilityCheck(capabilities, requirements):
        wanted = (requirements or {}).get(HOST_CAPABILITY)
        return wanted is None or capabilities.get(HOST_CAPABILITY) == wanted


def local_child_pid(actor, address) -> int | None:
    """The pid of a child that `actor` has just created in this host's process tree, when known.

    Thespian forks local children synchronously inside createActor but does not expose the pid;
    the supervisor needs it to kill a device that hangs before it could report itself."""
    for child in reversed(getattr(actor._myRef, "_child_procs", [])):
        if child.childAddr == address:
            return child.childProc.pid
    return None
