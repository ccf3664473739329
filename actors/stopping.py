"""Stopping a lab in order, from its keeper or from any other process (`labctl down`).

In order means: every device's driver shuts down first (through the supervisor, or, when the
supervisor does not answer, by SIGTERM to each device process, which Thespian turns into the same
orderly exit), then the admin, then whatever is left is killed and the port is free.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid

from thespian.actors import ActorSystemException

from . import framering, labkey, processes, runstate
from .actorsystem import SUPERVISOR_CLASS, SUPERVISOR_NAME, attach
from .errors import LabNotRunning, NotAuthorised
from .messages import GetLabStatus, LabStatus, Reply, StopLab

STOP_MARGIN_S = 0.6       # the supervisor stops every device in parallel, within its stop_timeout_s

log = logging.getLogger("labctl.stopping")


def stop_in_order(system, supervisor, record: runstate.LabRecord | None) -> None:
    """Stop every device through the supervisor (or by signal if it does not answer), then the admin."""
    stop_timeout = record.stop_timeout_s if record is not None else 1.0
    try:
        reply = system.ask(supervisor, StopLab(request_id=uuid.uuid4().hex), stop_timeout + STOP_MARGIN_S)
    except ActorSystemException as exc:
        log.warning("asking the supervisor to stop the devices: %s", exc)
        reply = None
    if not isinstance(reply, Reply) and record is not None and record.supervisor_running():
        # A hung supervisor (a replacement would answer "not ready": it has nothing to stop).
        log.warning("the supervisor (pid %d) did not stop the devices; stopping them by signal", record.supervisor_pid)
        devices = [pid for pid in record.lab_processes() if processes.parent_of(pid) == record.supervisor_pid]
        for pid in devices:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        processes.kill_all(processes.wait_gone(devices, stop_timeout) | {record.supervisor_pid}, timeout=1.0)
    try:
        system.shutdown()
    except ActorSystemException as exc:
        log.warning("shutting down the admin: %s", exc)


def shutdown_lab(port: int, bind: str = "127.0.0.1", timeout: float = 10.0) -> str | None:
    """Stop the lab on `port` as Ctrl-C would, from any process; returns its name, or None if none ran.

    Its keeper, if alive, is asked to stop it in order; without a keeper the admin is stopped
    directly. Either way every process of the lab is then gone and the port free."""
    record = runstate.read(port)
    name = record.lab if record is not None else None
    keeper = record.keeper_pid if record is not None and record.keeper_running() else 0
    if not keeper and processes.port_answers(port, bind, timeout=0.5):
        name, keeper = ask_lab(port, bind)  # e.g. a lab started with another run folder
    if keeper:
        try:
            os.kill(keeper, signal.SIGTERM)
        except ProcessLookupError:
            keeper = 0
        else:
            if processes.wait_gone([keeper], timeout):
                processes.kill_all([keeper])  # a keeper that cannot stop: finish the job below
    if processes.port_answers(port, bind, timeout=0.5):
        name = name or "lab"
        _stop_without_keeper(port, bind, record)
    # Only what this lab recorded is killed: never a process found by its port or its command line.
    leftovers = set(record.lab_processes()) if record is not None else set()
    if leftovers:
        name = name or "lab"
        processes.kill_all(leftovers, timeout=2.0)
    processes.wait_port_free(port, bind, timeout=2.0)
    framering.remove_segments(port)   # frame rings of device processes that were killed
    runstate.remove(port)
    return name


def ask_lab(port: int, bind: str, timeout: float = 2.0) -> tuple[str | None, int]:
    """(lab name, its keeper's pid when that keeper runs here) from the lab on `port`; (None, 0) when
    nothing there answers as a lab whose key this user holds."""
    try:
        system = attach(port, bind, timeout, labkey.for_lab(port))
    except (LabNotRunning, NotAuthorised):
        return None, 0
    try:
        supervisor = system.createActor(SUPERVISOR_CLASS, globalName=SUPERVISOR_NAME)
        status = system.ask(supervisor, GetLabStatus(request_id=uuid.uuid4().hex), timeout)
    except ActorSystemException:
        status = None
    finally:
        system._systemBase.transport.close()  # attached, not started: shutdown() would stop the lab
    if not isinstance(status, LabStatus):
        return None, 0
    # The lab's own word (it holds the key); its keeper here is the parent of its admin.
    keeper = status.keeper_pid if status.keeper_pid and processes.parent_of(status.admin_pid) == status.keeper_pid \
        else 0
    return status.lab, keeper


def _stop_without_keeper(port: int, bind: str, record: runstate.LabRecord | None) -> None:
    try:
        system = attach(port, bind, 2.0, labkey.for_lab(port))
    except LabNotRunning:
        return  # a hung admin: its processes are killed with the leftovers
    try:
        supervisor = system.createActor(SUPERVISOR_CLASS, globalName=SUPERVISOR_NAME)
    except ActorSystemException:
        system.shutdown()
        return
    stop_in_order(system, supervisor, record)
