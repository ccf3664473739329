"""A member host of a multi-host lab: the process behind `labctl node NAME --leader HOST:PORT`.

It runs one admin that advertises `labctl.host = NAME` and joins the leader's convention, so the
leader's supervisor can place devices on it (their config says `host = "NAME"`). Like the keeper,
it watches its admin, brings it back if it dies, reaps orphans, and on Ctrl-C or SIGTERM stops
every process it started and frees its port.
"""

from __future__ import annotations

import os
import time

from labctl.config.schema import Lab

from . import logs, processes, runstate
from .actorsystem import start_admin
from .errors import LabError
from .keeper import Keeper, clear_port


class Node(Keeper):
    """Runs a member admin for one host of a lab."""

    def __init__(self, name: str, leader: tuple[str, int], port: int, bind: str, log_dir: str) -> None:
        super().__init__(Lab(name=f"node-{name}", file="", port=port, bind=bind, log_dir=log_dir, host=name))
        self.leader = leader

    def start(self) -> None:
        """Start this host's admin and join the leader; raises LabError saying why not."""
        processes.become_subreaper()
        clear_port(self.lab.port, self.lab.bind)
        self.log.info("host %s joining the lab at %s:%d from %s:%d (pid %d)", self.lab.host, *self.leader,
                      self.lab.bind, self.lab.port, os.getpid())
        self.system = start_admin(self.lab.port, self.lab.bind, self.lab.host, self.lab.name, self.lab.log_dir,
                                  logs.log_config(self.lab.log_dir), leader=self.leader)
        # The admin detached itself (double fork); as subreaper we adopted it: it is our child that
        # listens on the port (the logger listens there too, but is the admin's child).
        admin = next((pid for pid in processes.port_listeners(self.lab.port)
                      if processes.parent_of(pid) == os.getpid()), 0)
        if not admin:
            raise LabError(f"the admin of host {self.lab.host} did not start on port {self.lab.port}")
        self.record = runstate.LabRecord(
            port=self.lab.port, lab=self.lab.name, config="", log_dir=self.lab.log_dir, keeper_pid=os.getpid(),
            admin_pid=admin, supervisor_pid=0, session=processes.session_of(admin) or 0,
            admin_cmdline=processes.cmdline(admin), detached=self.detached)
        runstate.write(self.record)

    def stop(self) -> float:
        """Stop the admin (and the devices placed here), every process left, and free the port."""
        began = time.monotonic()
        if self.system is not None and self.record is not None and processes.is_alive(self.record.admin_pid):
            self.system.shutdown()
            self.system = None
        super().stop()
        return time.monotonic() - began
