"""Reaper: a one-shot actor that kills a device process on a remote host (hung, or left over from a
supervisor that died), where the supervisor cannot send a signal itself."""

from __future__ import annotations

import logging
import os
import signal

from thespian.actors import ActorExitRequest

from . import families, processes
from .actorsystem import PlacedActor
from .protocol import Reap, Reaped

log = logging.getLogger("labctl.reaper")


class Reaper(PlacedActor):
    """Placed on a device's host: SIGKILLs its pid, answers once it is gone, then exits."""

    def receiveMessage(self, message, sender):
        if not isinstance(message, Reap):
            return
        # Device hosts placed on this host are children of its admin, as this reaper is: never
        # kill anything else, whatever pid arrives.
        if processes.parent_of(message.pid) == os.getppid():
            families.kill_group(message.pid)  # and what its drivers started
            try:
                os.kill(message.pid, signal.SIGKILL)
                log.warning("killed device process %d", message.pid)
            except ProcessLookupError:
                pass
        gone = not processes.wait_gone([message.pid], 2.0)
        self.send(sender, Reaped(message.pid, message.host, gone))
        self.send(self.myAddress, ActorExitRequest())
