"""Loading a lab TOML file into a validated `Lab`, reporting every problem at once."""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import keyword
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from labctl.hardware import HardwareError, ValveController
from labctl.hardware.interfaces import parse_valve_rules

from .drivers import DriverNotFound, check_arguments, import_target, is_floating, resolve_driver, resolve_factory
from .errors import ConfigError, Problem
from .imports import check_imports, untrusted_modules
from .schema import (DEFAULT_HOST, RESTARTS, STRATEGIES, SUPERVISION_KEYS, Device, Emulator, Group, Host, Lab,
                     PyroServe, Supervision)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MISSING = object()

# The accepted range (inclusive) of every numeric supervision key: `*_s` keys are seconds, the others
# counts. Each bound is one a lab could mean; beyond them a value only switches supervision off (inf, a
# day of backoff), kills healthy devices (a nanosecond heartbeat) or overflows a timer (1e12 s).
RANGES: dict[str, tuple[float, float]] = {
    "max_restarts": (0, 10_000),
    "within_s": (0.1, 86_400),
    "heartbeat_s": (0.05, 3_600),
    "heartbeat_misses": (1, 1_000),
    "backoff_s": (0, 3_600),
    "backoff_max_s": (0, 3_600),
    "stable_s": (0.1, 86_400),
    "init_timeout_s": (0.1, 86_400),
    "stop_timeout_s": (0.1, 3_600),
    "probe_backoff_max_s": (0.1, 3_600),
    "memory_max_mb": (0, 524_288),   # 0: no limit; else at least MEMORY_MIN_MB (checked in supervision())
}
MEMORY_MIN_MB = 16  # below this no Python process can run: a limit that small only restarts it forever


def address_problem(address: str) -> str:
    """Why `address` cannot be one to listen on and advertise (one IPv4 address, not a wildcard); ''."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != 4:
        return f"expected an IPv4 address such as 127.0.0.1, got {address!r}"
    if parsed.is_unspecified:
        # Every actor advertises the address it binds; 0.0.0.0 is no address another host can reach
        # (remote devices never start), and it would open every port of the lab on every network.
        return (f"{address} means every interface, which no other host can connect to: give the one address "
                "of this machine that the lab's clients and hosts reach, e.g. 192.168.1.10 (127.0.0.1 for a "
                "lab on this machine only)")
    return ""


def load(path: str | os.PathLike, *, import_timeout: float | None = None) -> Lab:
    """Read and validate a lab file; raises ConfigError listing all its problems.

    With `import_timeout`, driver and factory modules outside labctl are first imported in child
    processes with that time limit (see config.imports); one whose import kills or hangs its child is a
    problem of the lab file, and is never imported in this process."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [Problem("", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [Problem("", f"cannot read: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [Problem("", f"not valid TOML: {exc}")]) from None
    refused = check_imports(untrusted_modules(data), import_timeout) if import_timeout is not None else {}
    return parse(data, file=str(path), refused_imports=refused)


def parse(data: dict[str, Any], file: str = "<lab>", refused_imports: dict[str, str] | None = None) -> Lab:
    """Validate an already-parsed TOML document; raises ConfigError listing all its problems.

    `refused_imports`: {module: why} for modules that must not be imported here (see check_imports)."""
    checker = _Checker(file, refused_imports or {})
    lab = checker.lab(data)
    if checker.problems:
        raise ConfigError(file, checker.problems)
    return lab


def bind_note(lab: Lab) -> str | None:
    """What a user should know about the lab's bind address (None for loopback, which only this host reaches)."""
    try:
        address = ipaddress.ip_address(lab.bind)
    except ValueError:
        return None  # the checker has already refused it
    if address.is_loopback:
        return None
    where = f"{lab.bind} (every interface)" if address.is_unspecified else lab.bind
    return (f"lab.bind is {where}, not loopback: every host that can reach it can connect; "
            "only holders of the lab key are let in")


class _Checker:
    """Walks a lab document, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, refused_imports: dict[str, str] | None = None) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.refused_imports = refused_imports or {}

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    # -- typed access -------------------------------------------------------------------------

    def table(self, data: dict, path: str, key: str) -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(_join(path, key), f"expected a table, got {_kind(value)}")
            return {}
        return value

    def unknown_keys(self, data: dict, path: str, allowed: set[str] | tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                self.problem(_join(path, key), f"unknown key; expected one of: {', '.join(sorted(allowed))}")

    def value(self, data: dict, path: str, key: str, kind: type | tuple, default: Any = _MISSING) -> Any:
        """data[key] checked against `kind`; the default (or None) when absent or wrong."""
        if key not in data:
            if default is _MISSING:
                self.problem(_join(path, key), f"missing; expected {_expected(kind)}")
                return None
            return default
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            self.problem(_join(path, key), f"expected {_expected(kind)}, got {_kind(value)} {value!r}")
            return None if default is _MISSING else default
        return value

    # -- sections -----------------------------------------------------------------------------

    def lab(self, data: dict) -> Lab:
        self.unknown_keys(data, "", ("lab", "hosts", "supervision", "devices", "groups"))
        section = self.table(data, "", "lab")
        self.unknown_keys(section, "lab", ("name", "port", "bind", "log_dir", "host", "max_argument_bytes",
                                              "key_file", "max_packet_mb", "hosts_wait_s"))
        stem = Path(self.file).stem
        name = self.value(section, "lab", "name", str, stem if _NAME.match(stem) else "lab")
        if name is not None and not _NAME.match(name):
            self.problem("lab.name", f"{name!r} is not a usable lab name (letters, digits, '_', '-', '.')")
        port = self.value(section, "lab", "port", int, 1900)
        if port is not None and not 1 <= port <= 65535:
            self.problem("lab.port", f"port {port} is out of range 1..65535")
        bind = self.value(section, "lab", "bind", str, "127.0.0.1")
        if bind is not None:
            self.check_address("lab.bind", bind)
        log_dir = self.value(section, "lab", "log_dir", str, "") or os.path.join("logs", str(name))
        host = self.value(section, "lab", "host", str, DEFAULT_HOST)
        if host is not None and not _NAME.match(host):
            self.problem("lab.host", f"{host!r} is not a usable host name (letters, digits, '_', '-', '.')")
        max_argument_bytes = self.value(section, "lab", "max_argument_bytes", int, 1 << 20)
        if max_argument_bytes is not None and not 1 << 10 <= max_argument_bytes <= 1 << 30:
            self.problem("lab.max_argument_bytes", f"{max_argument_bytes} is out of range "
                         f"{1 << 10}..{1 << 30} (1 KiB .. 1 GiB)")
            max_argument_bytes = None
        key_file = self.value(section, "lab", "key_file", str, "")
        if key_file:
            key_file = os.path.join(os.path.dirname(os.path.abspath(self.file)), os.path.expanduser(key_file))
        max_packet_mb = self.value(section, "lab", "max_packet_mb", int, 64)
        if max_packet_mb is not None and not 1 <= max_packet_mb <= 4096:
            self.problem("lab.max_packet_mb", f"{max_packet_mb} is out of range 1..4096 (MiB; the largest message, "
                                              "e.g. a camera frame, the lab accepts)")
            max_packet_mb = None

        hosts_wait_s = self.value(section, "lab", "hosts_wait_s", float, 20.0)
        if hosts_wait_s is not None and not 0 <= hosts_wait_s <= 3600:
            self.problem("lab.hosts_wait_s", f"{hosts_wait_s:g} is out of range 0..3600 (seconds `up` waits for the "
                                             "declared hosts to join)")
            hosts_wait_s = None
        hosts = self.hosts(self.table(data, "", "hosts"))
        defaults = self.supervision(self.table(data, "", "supervision"), "supervision", Supervision())
        raw_groups = self.table(data, "", "groups")
        groups, group_supervision = self.groups(raw_groups, defaults)
        group_of = {member: group for group in groups for member in group.devices}
        devices = self.devices(self.table(data, "", "devices"), defaults, group_supervision, group_of,
                               host or DEFAULT_HOST, hosts)
        self.check_groups(groups, {device.name: device for device in devices})
        self.check_interlocks(devices, group_of)
        self.check_pyro_ports(devices, group_of)
        return Lab(name=name or "lab", file=str(Path(self.file).resolve()), port=port or 1900,
                   bind=bind or "127.0.0.1", log_dir=os.path.abspath(log_dir), host=host or DEFAULT_HOST,
                   hosts=hosts, supervision=defaults, devices=tuple(devices), groups=tuple(groups),
                   max_argument_bytes=max_argument_bytes or 1 << 20, key_file=key_file or "",
                   max_packet_mb=max_packet_mb or 64,
                   hosts_wait_s=20.0 if hosts_wait_s is None else hosts_wait_s)

    def check_address(self, path: str, address: str) -> None:
        """An address this lab can listen on and advertise: one IPv4 address, not a wildcard."""
        problem = address_problem(address)
        if problem:
            self.problem(path, problem)

    def check_pyro_ports(self, devices: list[Device], group_of: dict[str, Group]) -> None:
        """Two processes of one host cannot both serve Pyro on one address and port (each would crash
        in turn); devices of one shared process may share a port."""
        served: dict[tuple[str, str, int], tuple[str, str]] = {}   # (host, address, port) -> (device, process)
        for device in devices:
            if device.pyro is None:
                continue
            group = group_of.get(device.name)
            process = group.name if group is not None and group.process == "shared" else device.name
            where = (device.host, device.pyro.host, device.pyro.port)
            other = served.setdefault(where, (device.name, process))
            if other[1] != process:
                self.problem(f"devices.{device.name}.pyro.port", f"{device.pyro.host}:{device.pyro.port} is served "
                                                                  f"by {other[0]} already, in another process")

    def check_interlocks(self, devices: list[Device], group_of: dict[str, Group]) -> None:
        """An interlock on another controller's valve (`device:valve`) must name a valve that exists,
        on a controller in the same shared group: one process, where actuations run one at a time."""
        valves_of = {}
        for device in devices:
            valves = device.conf.get("valves") if isinstance(device.conf, dict) else None
            if valves is not None:
                try:
                    valves_of[device.name] = parse_valve_rules(valves)
                except HardwareError:
                    continue  # reported with the device
        for device in devices:
            if device.name not in valves_of:
                continue
            for valve, rules in valves_of[device.name][2].items():
                for key in ("interlocks", "positive_interlocks"):
                    for name in rules.get(key, ()):
                        if ":" not in name:
                            continue
                        other, other_valve = name.split(":", 1)
                        path = f"devices.{device.name}.conf.valves.{valve}.{key}"
                        if other not in valves_of or other_valve not in valves_of[other][0]:
                            self.problem(path, f"{name}: no valve {other_valve!r} on a valve controller {other!r}")
                            continue
                        group, their = group_of.get(device.name), group_of.get(other)
                        if other != device.name and (group is None or group is not their or group.process != "shared"):
                            self.problem(path, f"{name} is on another controller: interlocked controllers must "
                                               f"share a process, where their actuations run one at a time: "
                                               f"[groups.NAME] devices = [\"{device.name}\", \"{other}\"]")

    def hosts(self, section: dict) -> dict[str, Host]:
        hosts = {}
        for name, spec in section.items():
            path = f"hosts.{name}"
            if not _NAME.match(name):
                self.problem(path, f"{name!r} is not a usable host name (letters, digits, '_', '-', '.')")
            if not isinstance(spec, dict):
                self.problem(path, f"expected a table, got {_kind(spec)}")
                continue
            self.unknown_keys(spec, path, ("address", "port"))
            port = self.value(spec, path, "port", int, 0)
            if port and not 1 <= port <= 65535:
                self.problem(f"{path}.port", f"port {port} is out of range 1..65535")
            address = self.value(spec, path, "address", str, "")
            if "address" not in spec:
                # A node is accepted only from its declared address: without one, anyone could pose as it.
                self.problem(f"{path}.address", "missing: the address this host's node listens on (`labctl node "
                                                f"{name} --bind ADDRESS`); only a node there is accepted as {name!r}")
            elif address is not None:
                self.check_address(f"{path}.address", address)
            hosts[name] = Host(name, address or "", port or 0)
        return hosts

    def supervision(self, section: dict, path: str, base: Supervision, only_known: bool = True) -> Supervision:
        """`base` overridden by the supervision keys present in `section`."""
        if only_known:
            self.unknown_keys(section, path, SUPERVISION_KEYS)
        changes = {}
        for key in SUPERVISION_KEYS:
            if key not in section:
                continue
            default = getattr(base, key)
            if key in RANGES:  # type and range in one message, so that `inf` for a count names the range too
                problem = _range_problem(key, section[key])
                value = None if problem else section[key] if isinstance(default, int) else float(section[key])
            else:
                kind = str if isinstance(default, str) else int if isinstance(default, int) else float
                value = self.value(section, path, key, kind, default)
                problem = _supervision_problem(key, value)
            if problem:
                self.problem(_join(path, key), problem)
            else:
                changes[key] = value
        result = attrs.evolve(base, **changes)
        if 0 < changes.get("memory_max_mb", 0) < MEMORY_MIN_MB:
            self.problem(_join(path, "memory_max_mb"), f"expected 0 (no limit) or an integer from {MEMORY_MIN_MB} to "
                                                       f"{RANGES['memory_max_mb'][1]}, got {result.memory_max_mb}")
        if result.backoff_max_s < result.backoff_s:
            self.problem(_join(path, "backoff_max_s"),
                         f"backoff_max_s {result.backoff_max_s:g} must be at least backoff_s {result.backoff_s:g}")
        return result

    def groups(self, section: dict, defaults: Supervision) -> tuple[list[Group], dict[str, Supervision]]:
        """The groups, and each group's supervision settings (the lab's, overridden by the group's)."""
        groups, owner, supervision = [], {}, {}
        for name, spec in section.items():
            path = f"groups.{name}"
            if not _identifier(name):
                self.problem(path, f"{name!r} is not a valid group name (a Python identifier)")
            if not isinstance(spec, dict):
                self.problem(path, f"expected a table, got {_kind(spec)}")
                continue
            self.unknown_keys(spec, path, {"devices", "process"} | set(SUPERVISION_KEYS))
            members = self.value(spec, path, "devices", list)
            if members is None:
                continue
            if not members or not all(isinstance(m, str) for m in members):
                self.problem(f"{path}.devices", "expected a non-empty list of device names")
                continue
            for member in members:
                if member in owner:
                    self.problem(f"{path}.devices", f"device {member!r} is already in group {owner[member]!r}")
                owner[member] = name
            process = self.value(spec, path, "process", str, "shared")
            if process not in ("shared", "separate"):
                self.problem(f"{path}.process", f"expected 'shared' (one process) or 'separate', got {process!r}")
            if process == "shared" and "strategy" in spec:
                self.problem(f"{path}.strategy", "a shared group restarts as one process; a strategy "
                                                 "applies only with process = 'separate'")
            supervision[name] = self.supervision(spec, path, defaults, only_known=False)
            groups.append(Group(name, tuple(members), process or "shared", spec.get("strategy")))
        return groups, supervision

    def devices(self, section: dict, defaults: Supervision, group_supervision: dict[str, Supervision],
                group_of: dict[str, Group],
                lab_host: str, hosts: dict[str, Host]) -> list[Device]:
        if not section:
            self.problem("devices", "no devices; a lab needs at least one [devices.NAME] table")
        devices = []
        allowed = {"driver", "factory", "host", "conf", "uid", "description", "emulator", "pyro"} | set(SUPERVISION_KEYS)
        for name, spec in section.items():
            path = f"devices.{name}"
            if not _identifier(name):
                self.problem(path, f"{name!r} is not a valid device name (a Python identifier such as "
                                   "'valves' or 'camera_1')")
            if not isinstance(spec, dict):
                self.problem(path, f"expected a table, got {_kind(spec)}")
                continue
            self.unknown_keys(spec, path, allowed)
            group = group_of.get(name)
            base = defaults if group is None else group_supervision[group.name]
            if group is not None and group.process == "shared":
                for key in SUPERVISION_KEYS:
                    if key in spec:
                        self.problem(_join(path, key), f"devices of shared group {group.name!r} restart as one; "
                                                       f"set {key} on [groups.{group.name}]")
                supervision = base
            else:
                supervision = self.supervision({k: v for k, v in spec.items() if k in SUPERVISION_KEYS},
                                               path, base)
            host = self.value(spec, path, "host", str, lab_host)
            if host is not None and host != lab_host and host not in hosts:
                declared = ", ".join([lab_host] + sorted(hosts))
                self.problem(f"{path}.host", f"host {host!r} is not declared in [hosts]; known hosts: {declared}")
            conf = self.value(spec, path, "conf", dict, {})
            emulator = self.emulator(spec, path, conf or {})
            uid = self.value(spec, path, "uid", str, None)
            driver, factory = self.constructor(spec, path, conf or {}, uid, emulator)
            devices.append(Device(
                name=name, driver=driver or "", factory=factory or "", host=host or lab_host,
                conf=copy.deepcopy(conf or {}), uid=uid, description=self.value(spec, path, "description", str, ""),
                emulator=emulator, supervision=supervision, pyro=self.pyro(spec, path)))
        return devices

    def pyro(self, spec: dict, path: str) -> PyroServe | None:
        """[devices.X.pyro]: serve the device to Pyro4 clients too; on a network address only with a key."""
        if "pyro" not in spec:
            return None
        table, ppath = self.table(spec, path, "pyro"), f"{path}.pyro"
        self.unknown_keys(table, ppath, ("port", "host", "hmac_key_file", "insecure", "name"))
        if importlib.util.find_spec("Pyro4") is None:
            self.problem(ppath, "serving to Pyro clients needs Pyro4; install labctl with it: pip install -e '.[microscope]'")
        port = self.value(table, ppath, "port", int, None)
        if port is None:
            if "port" not in table:
                self.problem(f"{ppath}.port", "missing: the TCP port Pyro clients connect to, e.g. 8000")
            return None
        if not 1 <= port <= 65535:
            self.problem(f"{ppath}.port", f"port {port} is out of range 1..65535")
        host = self.value(table, ppath, "host", str, "127.0.0.1") or "127.0.0.1"
        self.check_address(f"{ppath}.host", host)
        key_file = self.value(table, ppath, "hmac_key_file", str, "") or ""
        if key_file:
            key_file = os.path.join(os.path.dirname(os.path.abspath(self.file)), os.path.expanduser(key_file))
            if not os.path.isfile(key_file):
                self.problem(f"{ppath}.hmac_key_file", f"no such file: {key_file}")
        insecure = self.value(table, ppath, "insecure", bool, False)
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = True   # reported above
        if not loopback and not key_file and not insecure:
            # Pyro with pickle runs whatever a packet says, as Thespian's pickle did before the lab key.
            self.problem(ppath, f"serving on {host}, a network address, takes a Pyro HMAC key: set hmac_key_file "
                                "(the same key in every client's Proxy._pyroHmacKey), or `insecure = true` to accept "
                                "that anyone who reaches the port can run code in the device's process")
        name = self.value(table, ppath, "name", str, "") or ""
        return PyroServe(port, host, key_file, bool(insecure), name)

    def constructor(self, spec: dict, path: str, conf: dict, uid: str | None,
                    emulator: Emulator | None) -> tuple[str | None, str | None]:
        driver = self.value(spec, path, "driver", str, None)
        factory = self.value(spec, path, "factory", str, None)
        if (driver is None) == (factory is None):
            if "driver" not in spec or "factory" not in spec:
                self.problem(f"{path}.driver", "missing; give `driver` (a registered name or "
                                               "'package.module:Class') or `factory`")
            else:
                self.problem(path, "give either `driver` or `factory`, not both")
            return driver, factory
        supplied = frozenset({"port"}) if emulator else frozenset()
        try:
            target = (resolve_driver(driver, self.refused_imports) if driver is not None
                      else resolve_factory(factory, self.refused_imports))
        except DriverNotFound as exc:
            self.problem(f"{path}.{'driver' if driver is not None else 'factory'}", str(exc))
            return driver, factory
        for key, problem in check_arguments(target, conf, supplied):
            self.problem(f"{path}.conf" + (f".{key}" if key else ""), problem)
        if driver is not None and driver.startswith("microscope:") and isinstance(conf.get("devices"), dict):
            for part, part_spec in conf["devices"].items():   # a microscope controller's devices
                ppath = f"{path}.conf.devices.{part}"
                part_driver = part_spec.get("driver") if isinstance(part_spec, dict) else None
                if not isinstance(part_driver, str):
                    self.problem(ppath, "expected a table with driver = \"package.module:Class\" (and conf)")
                    continue
                try:
                    import_target(part_driver.removeprefix("microscope:"), refused=self.refused_imports)
                except DriverNotFound as exc:
                    self.problem(f"{ppath}.driver", str(exc))
        if isinstance(target, type) and issubclass(target, ValveController) and "valves" in conf:
            try:  # the safety rules too: an interlock naming no valve of the controller, say
                parse_valve_rules(conf["valves"])
            except HardwareError as exc:
                self.problem(f"{path}.conf.valves", str(exc))
        floating = driver is not None and is_floating(target)
        if floating and uid is None:
            self.problem(f"{path}.uid", f"{target.__name__} is a floating driver: give the uid (serial number) "
                                        "of the unit this device is")
        if uid is not None and not floating:
            self.problem(f"{path}.uid", f"{driver or factory} is not a floating driver; uid applies only to "
                                        "floating drivers")
        return driver, factory

    def emulator(self, spec: dict, path: str, conf: dict) -> Emulator | None:
        if "emulator" not in spec:
            return None
        table = self.table(spec, path, "emulator")
        epath = f"{path}.emulator"
        kind = self.value(table, epath, "kind", str, None)
        options = {key: value for key, value in table.items() if key != "kind"}
        if "port" in conf:
            self.problem(f"{path}.conf.port", "labctl connects the driver to its emulator's port; remove "
                                              "conf.port or the [emulator] table")
        from labctl.hardware.emulators import EMULATORS

        if kind is None:
            self.problem(f"{epath}.kind", f"missing; expected one of: {', '.join(EMULATORS)}")
            return None
        if kind not in EMULATORS:
            self.problem(f"{epath}.kind", f"unknown emulator {kind!r}; expected one of: {', '.join(EMULATORS)}")
            return None
        if "link" in options:
            self.problem(f"{epath}.link", "labctl places the emulator's port itself; remove link")
            options.pop("link")
        for key, problem in check_arguments(EMULATORS[kind], options):
            self.problem(epath + (f".{key}" if key else ""), problem)
        return Emulator(kind, copy.deepcopy(options))

    def check_groups(self, groups: list[Group], devices: dict[str, Device]) -> None:
        for group in groups:
            for member in group.devices:
                if member not in devices:
                    self.problem(f"groups.{group.name}.devices",
                                 f"no device {member!r}; devices: {', '.join(devices) or 'none'}")
            hosts = {devices[m].host for m in group.devices if m in devices}
            if group.process == "shared" and len(hosts) > 1:
                self.problem(f"groups.{group.name}.devices",
                             f"devices of a shared group run in one process, so on one host; got {sorted(hosts)}")


def _supervision_problem(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if key == "strategy" and value not in STRATEGIES:
        return f"expected one of {', '.join(STRATEGIES)}, got {value!r}"
    if key == "restart" and value not in RESTARTS:
        return f"expected one of {', '.join(RESTARTS)}, got {value!r}"
    return None


def _range_problem(key: str, value: Any) -> str | None:
    """Why `value` is not acceptable for the numeric supervision key `key` (see RANGES), or None."""
    low, high = RANGES[key]
    seconds = key.endswith("_s")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (seconds or isinstance(value, int)) and low <= value <= high:  # False for nan
        return None
    expected = f"a number from {low:g} to {high:g} seconds" if seconds else f"an integer from {low:g} to {high:g}"
    return f"expected {expected}, got {value!r}" if number else f"expected {expected}, got {_kind(value)} {value!r}"


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expected(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def _kind(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
