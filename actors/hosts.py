"""Member hosts, as the supervisor sees them: which joined and from where, which are lost and since
when; what a lost host means for the units placed on it; and the rule that a unit's new process on
a member host starts only once that host's agent has confirmed its old process gone.

A host joins when its node registers with the leader's admin (which accepts only the hosts the lab
file declares, from their declared addresses). From then on the supervisor pings the HostAgent it
places there every `heartbeat_s` of the lab's [supervision]; `heartbeat_misses` unanswered pings in
a row and the host is lost: its units' requests in flight fail at once, new ones are refused at
once, and the units start again as soon as the host answers again (or its node joins anew)."""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs

from .actorsystem import HOST_CAPABILITY
from .hostagent import HostAgent
from .messages import HostInfo
from .protocol import HostPing, HostPong, Reap, Reaped
from .registry import Phase, Registry, UnitState
from .timers import HostBeat, HostsDue

log = logging.getLogger("labctl.supervisor")

WAITING, JOINED, LOST = "waiting", "joined", "lost"
REAP_AGAIN_S = 1.0   # an old process not confirmed gone is asked about again after this long
AGENT_LIFE_S = 60.0


@attrs.define
class HostState:
    """What the supervisor knows of one member host."""

    name: str
    address: str                   # declared in the lab file
    state: str = WAITING
    since: float = attrs.Factory(time.time)   # wall-clock time of its last change of state
    why: str = ""                  # why it is lost (or has not joined)
    admin: Any = None              # its admin's address, while it is a member of the convention
    agent: Any = None              # its HostAgent
    ping_seq: int = 0
    pong_seq: int = 0
    misses: int = 0


class Hosts:
    """The member hosts of the supervisor `actor` (its registry, events, router, launch)."""

    def __init__(self, actor, registry: Registry) -> None:
        self.actor = actor
        self.registry = registry
        lab = registry.lab
        self.hosts = {name: HostState(name, host.address) for name, host in lab.hosts.items()}
        self.beat_s, self.max_misses = lab.supervision.heartbeat_s, lab.supervision.heartbeat_misses
        # How long an agent hears no ping before it ends itself: it holds no hardware, and one that
        # outlives a long outage answers the moment the link is back (a new one takes seconds to place).
        self.agent_life_s = max(AGENT_LIFE_S, 10 * lab.supervision.watchdog_s)
        self.waited = not self.hosts   # the declared hosts had their time to join
        self.beat_at = 0.0

    def start(self) -> None:
        """Hear of hosts joining and leaving; fail the units of hosts still absent after hosts_wait_s."""
        if not self.hosts:
            return
        self.actor.notifyOnSystemRegistrationChanges(True)  # answered at once with the current members
        self.actor.after(self.registry.lab.hosts_wait_s, HostsDue())
        self.beat_at = time.monotonic()
        self.actor.after(self.beat_s, HostBeat())

    # -- placing units ------------------------------------------------------------------------

    def may_launch(self, unit: UnitState) -> bool:
        """Whether a unit on a member host may start now; if not, it starts when it can (its host joins
        or answers again, its old process is confirmed gone), or is failed saying why."""
        host = self.hosts.get(unit.spec.host)
        if host is None:
            return True   # the leader's own
        if host.state != JOINED:
            if host.state == LOST:
                unit.state = Phase.LOST
            elif self.waited:
                self.actor.start_impossible(unit, self.absent(host))
            unit.launch_pending = True
            return False
        if unit.stale is not None:  # never two processes of one device: its old one must be gone first
            unit.launch_pending = True
            self.reap(unit)
            return False
        return True

    def absent(self, host: HostState) -> str:
        return (f"host {host.name!r} did not join within {self.registry.lab.hosts_wait_s:g} s; "
                f"{self.start_hint(host.name)}")

    def start_hint(self, name: str) -> str:
        """How to start host `name`'s node, for a message that it is missing."""
        lab, host = self.registry.lab, self.hosts[name]
        return f"start it there with: labctl node {name} --bind {host.address} --leader {lab.bind}:{lab.port}"

    def hosts_due(self, _timer: HostsDue) -> None:
        self.waited = True
        for host in self.hosts.values():
            if host.state == WAITING:
                host.why = self.absent(host)
                log.error("%s", host.why)
                for unit in self.units_on(host):
                    if unit.address is None and unit.launch_pending:
                        self.actor.start_impossible(unit, host.why)

    def units_on(self, host: HostState) -> list[UnitState]:
        return [unit for unit in self.registry if unit.spec.host == host.name]

    # -- joining and leaving ------------------------------------------------------------------

    def convention_update(self, message) -> None:
        """Thespian: a member admin joined (or left) the lab's convention."""
        name = (message.remoteCapabilities or {}).get(HOST_CAPABILITY)
        host = self.hosts.get(name)
        if host is None:
            return
        if message.remoteAdded:
            host.admin = message.remoteAdminAddress
            log.info("host %s joined from %s", name, message.remoteAdminAddress)
            # A new member (a node started, or started again): a new agent. An old one there ends by its
            # own watchdog; its exit, if ever reported, no longer names this host's agent.
            self.place_agent(host)
            self.answering(host)
        else:
            host.admin = None
            self.lose(host, "its node left the lab")

    def place_agent(self, host: HostState) -> None:
        host.agent = self.actor.createActor(HostAgent, targetActorRequirements={HOST_CAPABILITY: host.name})
        host.pong_seq = host.ping_seq
        self.ping(host)

    def agent_ended(self, address) -> bool:
        """A ChildActorExited for a host's agent: its host is lost (the node or its admin ended)."""
        for host in self.hosts.values():
            if host.agent is not None and host.agent == address:
                host.agent = None
                self.lose(host, "its agent ended (the node, or its admin, ended)")
                return True
        return False

    def answering(self, host: HostState) -> None:
        """A host joined, or answers again: start its units that wait for it."""
        if host.state != JOINED:
            before = host.state
            host.state, host.since, host.why, host.misses = JOINED, time.time(), "", 0
            self.actor.events.event("lab", "host_joined" if before == WAITING else "host_back", host=host.name,
                                    address=host.address)
        for unit in self.units_on(host):
            if unit.address is None and (unit.launch_pending or unit.state == Phase.LOST):
                # Back from a lost host is no crash: no back-off, and the retry delay starts afresh.
                unit.consecutive = unit.probe_attempts = 0
                unit.start_token += 1
                self.actor.launch(unit)

    def lose(self, host: HostState, why: str) -> None:
        """Declare a host lost: its units' requests are answered now, and they wait for it to return."""
        if host.state == LOST:
            return
        was = host.state
        host.state, host.since, host.why = LOST, time.time(), why
        if was == WAITING:
            return
        cause = f"host {host.name} unreachable: {why}"
        log.error("%s", cause)
        self.actor.events.event("lab", "host_lost", host=host.name, reason=why)
        for unit in self.units_on(host):
            if unit.address is not None:
                self.actor.unit_lost(unit, cause)
            elif unit.launch_pending or unit.state in (Phase.RESTARTING, Phase.STARTING):
                unit.state, unit.last_error = Phase.LOST, cause

    # -- heartbeats ---------------------------------------------------------------------------

    def beat(self, _timer: HostBeat) -> None:
        """Count each host's unanswered ping, declare a host lost after too many, ping again."""
        try:
            self.look(time.monotonic())
        finally:
            self.actor.after(self.beat_s, HostBeat())   # whatever happened, the heartbeats go on

    def look(self, now: float) -> None:
        stalled = now - self.beat_at > 2 * self.beat_s   # the supervisor was stalled: judge from now on
        self.beat_at = now
        for host in self.hosts.values():
            if host.agent is None:
                if host.admin is not None:
                    self.place_agent(host)   # a member whose agent ended: one try per beat
                continue
            if stalled or host.pong_seq >= host.ping_seq:
                host.misses = 0
            else:
                host.misses += 1
            if host.state == JOINED and host.misses >= self.max_misses:
                self.lose(host, f"missed {host.misses} heartbeats {self.beat_s:g} s apart")
            elif host.state == LOST and host.admin is not None and host.misses * self.beat_s > self.agent_life_s:
                # Silent longer than its agent waits before it ends itself: if the host is back, only a new
                # agent can say so (Thespian may not have dropped the member, so no rejoin will tell).
                self.place_agent(host)
                host.misses = 0
                continue
            self.ping(host)
            if host.state == JOINED:
                for unit in self.units_on(host):
                    if unit.stale is not None and now - unit.reap_asked > REAP_AGAIN_S:
                        self.reap(unit)   # not confirmed yet: ask again

    def ping(self, host: HostState) -> None:
        host.ping_seq += 1
        self.actor.send(host.agent, HostPing(host.name, host.ping_seq, self.agent_life_s))

    def pong(self, message: HostPong) -> None:
        host = self.hosts.get(message.host)
        if host is None:
            return
        host.pong_seq = max(host.pong_seq, message.seq)
        if host.state == LOST and host.pong_seq == host.ping_seq:
            log.info("host %s answers again", host.name)
            self.answering(host)

    def suspect(self, name: str) -> bool:
        """Whether a host has missed a beat (or is not joined): a unit there that stops answering then
        is its host's loss, not a hang of its own."""
        host = self.hosts.get(name)
        return host is not None and (host.state != JOINED or host.misses > 0)

    def lose_for(self, unit: UnitState) -> None:
        """A unit stopped answering and so did its host: the host is lost, not the unit hung."""
        host = self.hosts[unit.spec.host]
        if host.state == JOINED:
            self.lose(host, f"neither it nor {unit.name} answered {self.max_misses} heartbeats")
        elif unit.address is not None:
            self.actor.unit_lost(unit, f"host {host.name} unreachable: {host.why}")

    # -- old processes --------------------------------------------------------------------------

    def reap(self, unit: UnitState) -> None:
        """Have the unit's host kill its old process (if it still runs) and confirm it gone."""
        host = self.hosts.get(unit.spec.host)
        if host is not None and host.agent is not None and unit.stale is not None:
            pid, started = unit.stale
            unit.reap_asked = time.monotonic()
            self.actor.send(host.agent, Reap(pid, host.name, started))

    def reaped(self, message: Reaped) -> None:
        """An old process is confirmed gone: a unit waiting for that starts."""
        for unit in self.registry:
            if unit.spec.host == message.host and unit.stale is not None and unit.stale[0] == message.pid:
                if not message.gone:
                    log.error("%s: old process %d on %s would not die; not starting another", unit.name,
                              message.pid, message.host, extra={"device": unit.name})
                    continue
                unit.stale = None
                self.actor.liveness.forget(unit)
                if unit.launch_pending and unit.address is None:
                    self.actor.launch(unit)

    def status(self) -> tuple[HostInfo, ...]:
        """Each member host's line in `labctl status`."""
        return tuple(HostInfo(h.name, h.address, h.state, h.since, h.why or None) for h in self.hosts.values())
