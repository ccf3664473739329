"""A member host of a multi-host lab: the process behind `labctl node NAME --leader HOST:PORT`.

It runs one admin that advertises `labctl.host = NAME` and joins the leader's convention, so the
leader's supervisor can place devices on it (their config says `host = "NAME"`). Like the keeper,
it watches its admin, brings it back if it dies, reaps orphans, and on Ctrl-C or SIGTERM stops
every process it started and frees its port.
"""

from __future__ import annotations

import os
import select
import time

from labctl.config.schema import Lab

from . import labkey, processes, runstate
from .actorsystem import start_admin
from .errors import LabError
from .keeper import Keeper, clear_port

ADOPTION_S = 5.0


class Node(Keeper):
    """Runs a member admin for one host of a lab."""

    def __init__(self, name: str, leader: tuple[str, int], port: int, bind: str, log_dir: str,
                 key: bytes | None = None) -> None:
        super().__init__(Lab(name=f"node-{name}", file="", port=port, bind=bind, log_dir=log_dir, host=name))
        self.leader = leader
        # The lab's key: a member presents it to join and seals every packet with it. None: the
        # leader runs on this machine, and its key is read from the run folder once it answers.
        self.key = key

    def start(self) -> None:
        """Wait for the leader, then start this host's admin and join it; raises LabError saying why not."""
        processes.become_subreaper()
        # What a killed node left (its admin ends with it, a moment later) is cleared, not refused.
        clear_port(self.lab.port, self.lab.bind, keeper_only=True)
        # A member that registers before its leader listens is not retried for minutes; wait instead.
        delay = 0.1
        while not processes.port_answers(self.leader[1], self.leader[0]):
            if self.stop_requested:
                raise LabError(f"stopped before the lab at {self.leader[0]}:{self.leader[1]} answered")
            select.select([self._wake_r], [], [], delay)
            delay = min(2.0, delay * 2)
        self.log.info("host %s joining the lab at %s:%d from %s:%d (pid %d)", self.lab.host, *self.leader,
                      self.lab.bind, self.lab.port, os.getpid())
        if self.key is None:
            self.key = labkey.for_lab(self.leader[1])
        labkey.install(self.lab.port, self.key)  # so that `labctl down --port` on this host can reach it
        self.system = start_admin(self.lab.port, self.lab.bind, self.lab.host, self.lab.name, self.lab.log_dir,
                                  self.key, leader=self.leader)
        # The admin detached itself (double fork); as subreaper we adopt it once the middle process has
        # exited: then it is our child that listens on the port (the logger listens there too, but is
        # the admin's child).
        deadline, admin = time.monotonic() + ADOPTION_S, 0
        while not admin and time.monotonic() < deadline:
            admin = next((pid for pid in processes.port_listeners(self.lab.port)
                          if processes.parent_of(pid) == os.getpid()), 0)
            if not admin:
                processes.reap_children()
                time.sleep(0.01)
        if not admin:
            raise LabError(f"the admin of host {self.lab.host} did not start on port {self.lab.port}")
        self.record = runstate.LabRecord.of(self.lab.port, self.lab.name, "", self.lab.log_dir, admin,
                                            detached=self.detached)
        runstate.write(self.record)

    def stop_processes(self) -> None:
        """Stop this host's admin, and with it the devices placed here."""
        self.system.shutdown()
