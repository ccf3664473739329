"""HostAgent: the supervisor's agent on a member host. It answers the host heartbeats (how the
supervisor knows the host is reachable) and kills device processes there on request (hung, left
behind by a lost link or a supervisor that died), where the supervisor cannot send a signal."""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timedelta

from thespian.actors import ActorExitRequest, WakeupMessage

from . import families, processes
from .actorsystem import PlacedActor
from .protocol import HostPing, HostPong, Reap, Reaped

log = logging.getLogger("labctl.hostagent")

REAP_WAIT_S = 0.2   # then it answers either way (the supervisor asks again): pings must not wait behind it


class HostAgent(PlacedActor):
    """Placed on a member host: answers HostPing, reaps processes, and ends when no ping comes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_ping = time.monotonic()
        self.watchdog_s = 0.0

    def receiveMessage(self, message, sender):
        if isinstance(message, HostPing):
            self.last_ping = time.monotonic()
            if not self.watchdog_s:
                self.wakeupAfter(timedelta(seconds=message.watchdog_s))
            self.watchdog_s = message.watchdog_s
            self.send(sender, HostPong(message.host, message.seq))
        elif isinstance(message, Reap):
            self.send(sender, Reaped(message.pid, message.host, reap(message.pid, message.started)))
        elif isinstance(message, WakeupMessage):
            silent = time.monotonic() - self.last_ping
            if silent > self.watchdog_s:  # the supervisor is gone, or cannot reach this host: nobody needs us
                self.send(self.myAddress, ActorExitRequest())
            else:
                self.wakeupAfter(timedelta(seconds=self.watchdog_s - silent + 0.01))


def reap(pid: int, started: int) -> bool:
    """Kill device process `pid` of this host if it is still the process that started at `started`
    (clock ticks); True once it is gone (or was: a later process under a reused pid is not it)."""
    if not processes.is_alive(pid):
        return True
    if started and processes.start_time(pid) != started:
        return True   # that process is gone; its pid now names another, which is left alone
    if not started and processes.parent_of(pid) != os.getppid():
        return False  # no identity to go by, and not one of this admin's device processes: not ours to kill
    families.kill_group(pid)  # and what its drivers started
    try:
        os.kill(pid, signal.SIGKILL)
        log.warning("killed device process %d", pid)
    except ProcessLookupError:
        pass
    return not processes.wait_gone([pid], REAP_WAIT_S)
