"""The supervisor's timers, as typed wakeup payloads. Thespian cannot cancel a wakeup, so each names
the incarnation (or start token) it was set for, and one that no longer matches is ignored."""

from __future__ import annotations

import attrs

frozen = attrs.frozen


@frozen
class Launch:
    """Start the unit's process (after a back-off delay), if `token` is still its start token."""
    unit: str
    token: int


@frozen
class Beat:
    """Time for the next heartbeat of a running process."""
    unit: str
    incarnation: int


@frozen
class InitTimeout:
    """A process's construction must have finished by now (the host's own alarm is the first line)."""
    unit: str
    incarnation: int


@frozen
class StopTimeout:
    """A process asked to exit must have exited by now; else it is killed."""
    unit: str
    incarnation: int


@frozen
class ExitRecheck:
    """Thespian reported an exit while the process still ran: look again."""
    unit: str
    incarnation: int


@frozen
class EventsDue:
    """A long-poll for events has waited as long as it asked."""
    token: int


@frozen
class WhyDue:
    """A client asked why its lane to a process closed: answer it now, if that process's end has not."""
    unit: str
    pid: int


@frozen
class LanesDue:
    """Time to publish the devices' lanes in the run folder (changes are gathered, not written one by one)."""


@frozen
class HostBeat:
    """Ping every joined member host; count the unanswered."""


@frozen
class HostsDue:
    """The declared hosts had their time to join: units on one that did not are failed, saying so."""
