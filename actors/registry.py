"""The supervisor's registry: what it knows of each unit (one device process), and the lab's names.

A unit moves through the phases of `Phase`; `cause` says why its current process ended (or is
being ended), `last_error` what `labctl status` shows."""

from __future__ import annotations

import enum
import os
import time
from typing import Any

import attrs

from labctl.config.schema import Lab, Unit

from .messages import DeviceInfo, LabStatus


class Phase(enum.StrEnum):
    """A unit's state, as `labctl status` shows it."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"          # its host is unreachable; it starts again when the host is back


@attrs.define
class UnitState:
    """What the supervisor knows of one unit (one DeviceHost process)."""

    spec: Unit
    state: Phase = Phase.STARTING
    address: Any = None
    pid: int | None = None
    pid_started: int | None = None # its process's start time (local): tells it from a reuse of its pid
    incarnation: int = 0           # which start of the unit its current process is
    start_token: int = 0           # a scheduled launch is valid only with the current token
    restarts: int = 0
    consecutive: int = 0           # quick restarts in a row, for back-off
    restart_times: tuple = ()      # the intensity window
    running_since: float | None = None
    constructing_since: float | None = None   # when Construct was sent; None once ready
    last_error: str | None = None
    cause: str | None = None       # why its current process ended or is being ended (failure, kill)
    exit_plan: str | None = None   # why we asked it to end: "restart", "stop" or "fail"
    waiting: bool = False          # failed only because its unit or host is not there (yet)
    stale: tuple | None = None     # (pid, start time) of its last process on a member host, until confirmed gone
    launch_pending: bool = False   # waiting to start: for its host, or for its old process to be gone
    reap_asked: float = 0.0        # when its host's agent was last asked to confirm `stale` gone
    descriptions: dict = attrs.Factory(dict)
    lane: Any = None               # messages.Lane of its current process, once it runs
    served: dict = attrs.Factory(dict)   # device -> [answered, failed] on lanes, as reported
    degraded: set = attrs.Factory(set)
    ping_seq: int = 0
    pong_seq: int = 0
    misses: int = 0
    beat_at: float = 0.0           # when the last heartbeat went out
    candidates: dict | None = None
    pending_probes: dict = attrs.Factory(dict)
    probe_attempts: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def supervision(self):
        return self.spec.supervision

    def new_process(self, address, pid: int | None) -> None:
        """A new process was created for the unit: a new incarnation, nothing heard from it yet."""
        self.incarnation += 1
        self.address, self.pid, self.pid_started, self.lane = address, pid, None, None
        self.ping_seq = self.pong_seq = self.misses = 0
        self.exit_plan = self.cause = None


class Registry:
    """Every unit of the lab by name, and which unit each device (and sub-device) name belongs to."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.units: dict[str, UnitState] = {unit.name: UnitState(unit) for unit in lab.units()}
        self.unit_of: dict[str, str] = {d.name: u.name for u in lab.units() for d in u.devices}
        self.group_of: dict[str, list[str]] = {m: members for _, members in lab.supervision_groups()
                                               for m in members}

    def __iter__(self):
        return iter(self.units.values())

    def __getitem__(self, name: str) -> UnitState:
        return self.units[name]

    def get(self, name: str) -> UnitState | None:
        """A unit by its own name."""
        return self.units.get(name)

    def unit_for(self, device: str) -> UnitState | None:
        """The unit a device (or sub-device) name belongs to."""
        return self.units.get(self.unit_of.get(device, ""))

    def current(self, timer) -> UnitState | None:
        """The unit a timer (or report) is for, if it is still about the unit's current process."""
        unit = self.units.get(timer.unit)
        return unit if unit is not None and unit.incarnation == timer.incarnation and unit.address else None

    def by_address(self, address) -> UnitState | None:
        """The unit whose current process has this address."""
        return next((u for u in self.units.values() if u.address is not None and u.address == address), None)

    def learn_names(self, unit: UnitState, descriptions) -> None:
        """Record what a unit's process runs: its devices' descriptions and sub-device names."""
        unit.descriptions = {d.name: d for d in descriptions}
        for description in descriptions:
            self.unit_of[description.name] = unit.name
            for sub in description.sub_devices:
                self.unit_of[sub] = unit.name

    def note(self, notice) -> bool:
        """Take in a device's notice (link lost or back, memory exceeded); False if its unit is unknown."""
        unit = self.units.get(notice.unit)
        if unit is None:
            return False
        if notice.kind == "degraded":
            unit.degraded.add(notice.device)
            unit.last_error = f"link lost: {notice.detail.get('error', '')}"
        elif notice.kind == "recovered":
            unit.degraded.discard(notice.device)
        elif notice.kind == "memory_exceeded" and notice.detail.get("pid") == unit.pid:
            unit.cause = f"memory limit exceeded: {notice.detail['rss_mb']} MB > {notice.detail['limit_mb']} MB"
        return True

    def lane_done(self, report) -> None:
        """Count what a unit's process answered on its lane (reported about once a second)."""
        unit = self.units.get(report.unit)
        if unit is None or unit.incarnation != report.incarnation:
            return
        for device, (answered, failed) in report.counts.items():
            self.count(unit, device, answered, failed)

    @staticmethod
    def count(unit: UnitState, device: str, answered: int, failed: int) -> None:
        """Add to the requests a device has answered (and how many of them failed)."""
        counts = unit.served.setdefault(device, [0, 0])
        counts[0] += answered
        counts[1] += failed

    def remote(self, unit: UnitState) -> bool:
        """Whether a unit runs on another host than the supervisor's."""
        return unit.spec.host != self.lab.host

    def all_ended(self) -> bool:
        """Whether no unit has a process."""
        return all(u.address is None for u in self.units.values())

    def status(self, request_id: str, keeper_pid: int, hosts: tuple = ()) -> LabStatus:
        """The registry as LabStatus, one line per device and sub-device (and the member `hosts`)."""
        now = time.monotonic()
        infos = []
        subs: dict[str, list[str]] = {}  # device -> its sub-devices, in one pass (a lab may have hundreds)
        for name in self.unit_of:
            if "." in name:
                subs.setdefault(name.split(".")[0], []).append(name)
        for unit in self.units.values():
            uptime = now - unit.running_since if unit.running_since is not None and unit.state == "running" else None
            for device in unit.spec.devices:
                names = [device.name] + sorted(n for n in subs.get(device.name, ())
                                               if self.unit_of[n] == unit.name)
                for name in names:
                    description = unit.descriptions.get(name)
                    driver = (device.driver or device.factory) if name == device.name else \
                        (description.driver if description else "")
                    infos.append(DeviceInfo(name, driver, unit.spec.host, unit.pid, str(unit.state), unit.restarts,
                                            uptime, unit.last_error, name.split(".")[0] in unit.degraded
                                            or name in unit.degraded, unit.name,
                                            tuple(unit.served.get(name, (0, 0)))))
        return LabStatus(request_id, self.lab.name, self.lab.port, tuple(infos), os.getpid(), os.getppid(),
                         keeper_pid, hosts)
