"""The lab's lifecycle events as the supervisor serves them: numbered, logged, kept on disk (the
durable eventlog, so a replacement supervisor numbers on and shows what came before), and handed to
long-polling clients (`labctl events --follow`) as they happen.

Waiting clients are bounded, in all and per client, and so is how long one may wait: a client
that asked and went away costs one answer, at most one wait later."""

from __future__ import annotations

import logging

from .eventlog import EventLog
from .messages import Event, Events, GetEvents
from .timers import EventsDue

log = logging.getLogger("labctl.supervisor")

MAX_WAIT_S = 60.0
MAX_WAITERS = 1000
MAX_WAITERS_PER_CLIENT = 8


class EventFeed:
    """Events for the supervisor `actor` (whose `send` and `after` it uses)."""

    def __init__(self, actor) -> None:
        self.actor = actor
        self.log: EventLog | None = None
        self.waiters: dict[int, tuple[object, str, int]] = {}   # token -> (client, request id, since)
        self.token = 0

    def open(self, folder: str) -> None:
        """Keep events in the lab's log folder, numbering on from those already there."""
        self.log = EventLog(folder)

    @property
    def seq(self) -> int:
        return self.log.last_seq

    def event(self, device: str, kind: str, **detail) -> Event:
        """Record one event (on disk before anything else), log it, and answer every waiting client."""
        event = self.log.append(device, kind, detail)
        level = logging.WARNING if kind in ("crashed", "failed", "degraded") else logging.INFO
        log.log(level, "%s", event.text(), extra={"device": device})
        for token in list(self.waiters):
            self.answer(token)
        return event

    def emit(self, unit, kind: str, **detail) -> None:
        """A lifecycle event for each configured device of a unit."""
        for device in unit.spec.devices:
            self.event(device.name, kind, **detail)

    def get(self, request: GetEvents, sender) -> None:
        """Answer GetEvents now, or hold it until an event comes or its wait (at most MAX_WAIT_S) passes."""
        newer = self.since(request.since)
        if newer or request.wait_s <= 0:
            self.actor.send(sender, Events(request.request_id, newer, self.seq))
            return
        client = str(sender)
        mine = [t for t, (s, _, _) in self.waiters.items() if str(s) == client]
        for token in mine[:len(mine) - MAX_WAITERS_PER_CLIENT + 1]:
            self.answer(token)
        if len(self.waiters) >= MAX_WAITERS:
            self.answer(next(iter(self.waiters)))
        self.token += 1
        self.waiters[self.token] = (sender, request.request_id, request.since)
        self.actor.after(min(request.wait_s, MAX_WAIT_S), EventsDue(self.token))

    def due(self, timer: EventsDue) -> None:
        if timer.token in self.waiters:
            self.answer(timer.token)

    def answer(self, token: int) -> None:
        sender, request_id, since = self.waiters.pop(token)
        self.actor.send(sender, Events(request_id, self.since(since), self.seq))

    def since(self, seq: int) -> tuple[Event, ...]:
        return self.log.since(seq)

    def keep_record(self, unit) -> None:
        """Keep a unit's restart count and last error on disk, for a supervisor that replaces this one."""
        for device in unit.spec.devices:
            self.log.record(device.name, unit.restarts, unit.last_error)

    def restore_records(self, units) -> None:
        """Take up the restart counts and last errors a predecessor kept."""
        records = self.log.records()
        for unit in units:
            if unit.spec.devices[0].name in records:
                unit.restarts, unit.last_error = records[unit.spec.devices[0].name]
