"""The validated lab description: frozen attrs classes, picklable, shared by every layer above."""

from __future__ import annotations

import copy
from typing import Any

import attrs

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS = ("permanent", "transient", "temporary")
DEFAULT_PORT = 1900
DEFAULT_BIND = "127.0.0.1"
DEFAULT_HOST = "local"


@attrs.frozen
class Supervision:
    """How one device is supervised (OTP's restart type, strategy and intensity, plus heartbeats)."""

    strategy: str = "one_for_one"
    restart: str = "permanent"
    max_restarts: int = 5
    within_s: float = 60.0
    heartbeat_s: float = 1.0
    heartbeat_misses: int = 3
    backoff_s: float = 0.1
    backoff_max_s: float = 10.0
    stable_s: float = 10.0
    init_timeout_s: float = 60.0
    stop_timeout_s: float = 1.0
    probe_backoff_max_s: float = 10.0
    memory_max_mb: int = 0        # resident memory of the device's process and its children; 0: no limit

    @property
    def call_limit_s(self) -> float:
        """How long a driver call without a declared time limit may block: the heartbeats' tolerance."""
        return self.heartbeat_s * self.heartbeat_misses

    @property
    def watchdog_s(self) -> float:
        """How long a device process hears no heartbeat before it decides its supervisor is gone."""
        return max(3.0, self.heartbeat_s * (self.heartbeat_misses + 2))


SUPERVISION_KEYS = tuple(field.name for field in attrs.fields(Supervision))


@attrs.frozen
class Host:
    """A machine of the lab other than the leader, where some devices run."""

    name: str
    address: str = ""
    port: int = 0


@attrs.frozen
class Emulator:
    """An instrument emulator that labctl starts for a device, serving a pseudo-terminal."""

    kind: str
    options: dict = attrs.field(factory=dict)


@attrs.frozen
class PyroServe:
    """Where a device process also serves a device to Pyro4 clients, as python-microscope's device server."""

    port: int
    host: str = "127.0.0.1"
    hmac_key_file: str = ""     # Pyro's HMAC key; required unless host is loopback or `insecure`
    insecure: bool = False
    name: str = ""              # the Pyro object id; default the device's name (PYRO:<name>@host:port)


@attrs.frozen
class Device:
    """One device of the lab, as configured."""

    name: str
    driver: str = ""           # "short-name" or "package.module:Class"; empty when `factory` is set
    factory: str = ""          # "package.module:function" returning {name: driver}
    host: str = DEFAULT_HOST
    conf: dict = attrs.field(factory=dict)
    uid: str | None = None
    description: str = ""
    emulator: Emulator | None = None
    supervision: Supervision = Supervision()
    pyro: PyroServe | None = None

    def fresh_conf(self) -> dict[str, Any]:
        """A deep copy of the driver's keyword arguments: never shared, never mutated."""
        return copy.deepcopy(self.conf)


@attrs.frozen
class Group:
    """Devices declared together: one shared process, or separate processes under one strategy."""

    name: str
    devices: tuple[str, ...]
    process: str = "shared"    # "shared" (one process) or "separate"
    strategy: str | None = None


@attrs.frozen
class Unit:
    """What one DeviceHost process runs: a single device, or the devices of a shared group."""

    name: str
    devices: tuple[Device, ...]

    @property
    def host(self) -> str:
        return self.devices[0].host

    @property
    def supervision(self) -> Supervision:
        return self.devices[0].supervision


@attrs.frozen
class Lab:
    """The whole lab: identity, network, logging, hosts, devices and groups."""

    name: str
    file: str
    port: int = DEFAULT_PORT
    bind: str = DEFAULT_BIND
    log_dir: str = ""
    host: str = DEFAULT_HOST
    hosts: dict = attrs.field(factory=dict)            # name -> Host
    supervision: Supervision = Supervision()
    devices: tuple[Device, ...] = ()
    groups: tuple[Group, ...] = ()
    max_argument_bytes: int = 1 << 20                  # a call's arguments, pickled, may be no larger
    key_file: str = ""                                 # the lab key to use; default: a new one per start
    max_packet_mb: int = 64                            # the largest packet (a camera frame) the lab accepts
    hosts_wait_s: float = 20.0                         # how long `up` waits for the declared hosts to join

    def device(self, name: str) -> Device:
        """The device called `name` (KeyError if none)."""
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)

    def units(self) -> list[Unit]:
        """One unit per process, in config order (a shared group stands where its first device does)."""
        shared = {name: group for group in self.groups if group.process == "shared" for name in group.devices}
        units, seen = [], set()
        for device in self.devices:
            group = shared.get(device.name)
            if group is None:
                units.append(Unit(device.name, (device,)))
            elif group.name not in seen:
                seen.add(group.name)
                units.append(Unit(group.name, tuple(self.device(name) for name in group.devices)))
        return units

    def supervision_groups(self) -> list[tuple[str, list[str]]]:
        """(group name, unit names in config order): a strategy applies within its group.

        Each separate group is its own; every other unit belongs to the lab's group, "lab". (A
        group's `strategy` reaches its devices through their supervision settings.)"""
        unit_of = {device.name: unit.name for unit in self.units() for device in unit.devices}
        groups, grouped = [], set()
        for group in self.groups:
            if group.process == "separate":
                members = [unit_of[name] for name in group.devices]
                grouped.update(members)
                groups.append((group.name, members))
        rest = [unit.name for unit in self.units() if unit.name not in grouped]
        if rest:
            groups.insert(0, ("lab", rest))
        return groups
