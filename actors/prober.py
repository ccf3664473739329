"""Prober: a short-lived actor, in its own process on a device's host, that finds floating units."""

from __future__ import annotations

import logging
import traceback

from thespian.actors import ActorExitRequest

from labctl.config.drivers import resolve_driver
from labctl.hardware import probe

from .actorsystem import PlacedActor
from .protocol import ProbeRequest, ProbeResult

log = logging.getLogger("labctl.prober")


class Prober(PlacedActor):
    """Opens each candidate unit of a floating driver, reads its id, releases it, answers, exits."""

    def receiveMessage(self, message, sender):
        if not isinstance(message, ProbeRequest):
            return
        try:
            found, errors = probe(resolve_driver(message.driver), message.conf)
            result = ProbeResult(message.key, found, errors)
        except Exception as exc:  # report, never re-raise: Thespian would probe a second time
            log.warning("probing %s failed: %s", message.driver, exc)
            result = ProbeResult(message.key, {}, {}, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        self.send(sender, result)
        self.send(self.myAddress, ActorExitRequest())
