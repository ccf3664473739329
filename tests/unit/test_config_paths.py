"""Validation of [hosts], [groups] and a device's [emulator] table: every problem carries its whole key
path (`hosts.pi.port`, never `hosts.port` or `pi.port`), and nothing else is reported with it."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from labctl.config import ConfigError, parse

BASE = """
[lab]
name = "paths"
[devices.valves]
driver = "sim-valves"
[devices.stage]
driver = "sim-stage"
"""

# (TOML appended to BASE, the exact key paths of every problem it has, words the first one must contain)
HOSTS = [
    ("[hosts.pi]\naddress = '10.0.0.2'\nport = 70000\n", ["hosts.pi.port"], "port 70000 is out of range 1..65535"),
    ("[hosts.pi]\naddress = '10.0.0.2'\nport = '1950'\n", ["hosts.pi.port"], "expected an integer, got a string"),
    ("[hosts.pi]\naddress = 10\nport = 1950\n", ["hosts.pi.address"], "expected a string, got an integer"),
    ("[hosts.pi]\naddress = '10.0.0.2'\ncolour = 'red'\n", ["hosts.pi.colour"], "unknown key; expected one of: "
                                                                                 "address, port"),
    ("[hosts]\npi = 3\n", ["hosts.pi"], "expected a table, got an integer"),
    ("[hosts.'pi 4']\naddress = '10.0.0.2'\n", ["hosts.pi 4"], "is not a usable host name"),
    ("hosts = 3\n", ["hosts"], "expected a table, got an integer"),
    # two hosts: each problem is reported at its own host
    ("[hosts.pi]\naddress = '10.0.0.2'\nport = 0\n[hosts.qi]\naddress = '10.0.0.3'\nport = 99999\n",
     ["hosts.qi.port"], "port 99999 is out of range"),
    ("[hosts.pi]\naddress = '10.0.0.2'\nport = -1\n[hosts.qi]\naddress = '10.0.0.3'\nport = 99999\n",
     ["hosts.pi.port", "hosts.qi.port"], "port -1"),
    # a node is accepted only from its declared address: one is required, and a wildcard is none
    ("[hosts.pi]\nport = 1950\n", ["hosts.pi.address"], "missing: the address this host's node listens on"),
    ("[hosts.pi]\naddress = '0.0.0.0'\n", ["hosts.pi.address"], "0.0.0.0 means every interface"),
]

GROUPS = [
    ("[groups.optics]\ndevices = ['valves']\ncolour = 'red'\n", ["groups.optics.colour"], "unknown key"),
    ("[groups.optics]\nprocess = 'shared'\n", ["groups.optics.devices"], "missing; expected a list"),
    ("[groups.optics]\ndevices = 'valves'\n", ["groups.optics.devices"], "expected a list, got a string"),
    ("[groups.optics]\ndevices = []\n", ["groups.optics.devices"], "expected a non-empty list of device names"),
    ("[groups.optics]\ndevices = ['valves', 3]\n", ["groups.optics.devices"], "expected a non-empty list"),
    ("[groups.optics]\ndevices = ['valves', 'nope']\n", ["groups.optics.devices"], "no device 'nope'"),
    ("[groups.optics]\ndevices = ['valves']\nprocess = 'together'\n", ["groups.optics.process"],
     "expected 'shared' (one process) or 'separate'"),
    ("[groups.optics]\ndevices = ['valves']\nprocess = 3\n", ["groups.optics.process"], "expected a string"),
    ("[groups.optics]\ndevices = ['valves']\nstrategy = 'one_for_all'\n", ["groups.optics.strategy"],
     "a shared group restarts as one process"),
    ("[groups.optics]\ndevices = ['valves']\nprocess = 'separate'\nstrategy = 'all_for_one'\n",
     ["groups.optics.strategy"], "expected one of one_for_one"),
    ("[groups.optics]\ndevices = ['valves']\nprocess = 'separate'\nrestart = 'sometimes'\n",
     ["groups.optics.restart"], "expected one of permanent"),
    ("[groups.optics]\ndevices = ['valves']\nmax_restarts = -1\n", ["groups.optics.max_restarts"],
     "expected an integer from 0 to"),
    ("[groups.optics]\ndevices = ['valves']\nbackoff_s = 2.0\nbackoff_max_s = 1.0\n", ["groups.optics.backoff_max_s"],
     "must be at least backoff_s"),
    ("[groups.optics]\ndevices = ['valves']\n[groups.more]\ndevices = ['stage', 'valves']\n", ["groups.more.devices"],
     "device 'valves' is already in group 'optics'"),
    ("[groups]\noptics = 3\n", ["groups.optics"], "expected a table, got an integer"),
    ("[groups.'not-a-name']\ndevices = ['valves']\n", ["groups.not-a-name"], "is not a valid group name"),
    ("groups = 3\n", ["groups"], "expected a table, got an integer"),
    ("[hosts.pi]\naddress = '10.0.0.2'\n[devices.remote]\ndriver = 'sim-light'\nhost = 'pi'\n"
     "[groups.optics]\ndevices = ['valves', 'remote']\n", ["groups.optics.devices"],
     "devices of a shared group run in one process, so on one host"),
]

# a furnace whose driver gets its port from its emulator
FURNACE = "[devices.furnace]\ndriver = 'eurotherm'\n"
EMULATOR = [
    (FURNACE + "[devices.furnace.emulator]\ntau_s = 5.0\n", ["devices.furnace.emulator.kind"],
     "missing; expected one of: arduino-valves, eurotherm"),
    (FURNACE + "[devices.furnace.emulator]\nkind = 'toaster'\n", ["devices.furnace.emulator.kind"],
     "unknown emulator 'toaster'"),
    (FURNACE + "[devices.furnace.emulator]\nkind = 3\n", ["devices.furnace.emulator.kind"],
     "expected a string, got an integer"),
    (FURNACE + "[devices.furnace.emulator]\nkind = 'eurotherm'\ntau = 5.0\n", ["devices.furnace.emulator.tau"],
     "unknown argument"),
    (FURNACE + "[devices.furnace.emulator]\nkind = 'eurotherm'\nlink = 'loop://'\n", ["devices.furnace.emulator.link"],
     "labctl places the emulator's port itself"),
    (FURNACE + "emulator = 3\n", ["devices.furnace.emulator"], "expected a table, got an integer"),
    (FURNACE + "conf = { port = '/dev/ttyUSB0' }\n[devices.furnace.emulator]\nkind = 'eurotherm'\n",
     ["devices.furnace.conf.port"], "labctl connects the driver to its emulator's port"),
]


def problems_in(text: str) -> list:
    """Every problem of a lab file's text (none: an empty list)."""
    try:
        parse(tomllib.loads(text), file="lab.toml")
    except ConfigError as exc:
        return exc.problems
    return []


def problems(extra: str) -> list:
    """The problems of BASE with `extra`: tables after it, top-level keys (`hosts = 3`) before it."""
    return problems_in(BASE + extra if extra.startswith("[") else extra + BASE)


def check(extra: str, paths: list[str], words: str, consequences: frozenset = frozenset()) -> None:
    """The problems are at exactly the key paths `paths` (besides `consequences`, problems that follow
    from the first), and the first problem is at paths[0] and says `words`."""
    found = problems(extra)
    assert found and found[0].path == paths[0], [str(p) for p in found]
    assert {p.path for p in found} - consequences == set(paths), [str(p) for p in found]
    assert words in found[0].message, str(found[0])


@pytest.mark.parametrize("extra, paths, words", HOSTS, ids=[f"{c[1]}:{c[2][:24]}" for c in HOSTS])
def test_a_hosts_problem_names_its_whole_key_path(extra, paths, words):
    check(extra, paths, words)


@pytest.mark.parametrize("lab_keys, path, words", [
    ("bind = '0.0.0.0'", "lab.bind", "0.0.0.0 means every interface, which no other host can connect to"),
    ("hosts_wait_s = -1", "lab.hosts_wait_s", "out of range 0..3600"),
])
def test_a_wildcard_bind_and_a_bad_host_wait_are_refused(lab_keys, path, words):
    found = problems_in(BASE.replace('name = "paths"', f'name = "paths"\n{lab_keys}'))
    assert [p.path for p in found] == [path] and words in found[0].message, [str(p) for p in found]


@pytest.mark.parametrize("extra, paths, words", GROUPS, ids=[f"{c[1]}:{c[2][:24]}" for c in GROUPS])
def test_a_groups_problem_names_its_whole_key_path(extra, paths, words):
    check(extra, paths, words)


@pytest.mark.parametrize("extra, paths, words", EMULATOR, ids=[f"{c[1]}:{c[2][:24]}" for c in EMULATOR])
def test_an_emulator_problem_names_its_whole_key_path(extra, paths, words):
    # without a usable emulator, the driver's port is missing from its conf (said too, at its own key);
    # without an emulator table, its kind is missing too
    follow = {"devices.furnace.conf"} | ({"devices.furnace.emulator.kind"} if paths == ["devices.furnace.emulator"]
                                         else set())
    check(extra, paths, words, consequences=frozenset(follow))


def test_a_shared_group_member_with_its_own_supervision_key_is_named_at_the_device():
    found = problems_in(BASE.replace('driver = "sim-valves"\n', 'driver = "sim-valves"\nmax_restarts = 2\n', 1)
                        + "[groups.optics]\ndevices = ['valves', 'stage']\n")
    assert [p.path for p in found] == ["devices.valves.max_restarts"], [str(p) for p in found]
    assert "set max_restarts on [groups.optics]" in found[0].message


def test_valid_hosts_groups_and_emulator_are_read_as_written():
    lab = parse(tomllib.loads(BASE + "[hosts.pi]\naddress = '10.0.0.2'\nport = 1950\n"
                              "[devices.remote]\ndriver = 'sim-light'\nhost = 'pi'\n"
                              "[groups.optics]\ndevices = ['valves', 'stage']\nprocess = 'separate'\n"
                              "strategy = 'rest_for_one'\nmax_restarts = 7\n"
                              + FURNACE + "[devices.furnace.emulator]\nkind = 'eurotherm'\ntau_s = 5.0\n"))
    assert lab.hosts["pi"].address == "10.0.0.2" and lab.hosts["pi"].port == 1950
    assert lab.device("remote").host == "pi"
    assert lab.device("stage").supervision.strategy == "rest_for_one"
    assert lab.device("stage").supervision.max_restarts == 7
    assert lab.device("furnace").emulator.kind == "eurotherm" and lab.device("furnace").emulator.options == {"tau_s": 5.0}


def test_check_prints_each_sections_problem_with_file_and_whole_key_path(tmp_path):
    file = tmp_path / "lab.toml"
    file.write_text(BASE + "[hosts.pi]\naddress = '10.0.0.2'\nport = 70000\n[groups.optics]\ndevices = ['valves']\nprocess = 'together'\n"
                    + FURNACE + "[devices.furnace.emulator]\nkind = 'toaster'\n")
    result = subprocess.run([sys.executable, "-m", "labctl.bin.cli", "check", str(file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{file}: 4 problems", result.stderr
    for path in ("hosts.pi.port", "groups.optics.process", "devices.furnace.emulator.kind", "devices.furnace.conf"):
        assert any(line.startswith(f"  {file}: {path}: ") for line in lines), (path, result.stderr)


def test_pyro_ports_shared_across_processes_and_unknown_controller_parts_are_problems():
    pytest.importorskip("microscope")
    found = problems_in("""
[devices.a]
driver = "microscope:microscope.simulators:SimulatedLightSource"
pyro = { port = 8100 }
[devices.b]
driver = "microscope:microscope.simulators:SimulatedController"
pyro = { port = 8100 }
[devices.b.conf.devices]
laser = { driver = "microscope.simulators:NoSuch" }
[devices.c]
driver = "microscope:microscope.simulators:SimulatedLightSource"
pyro = { port = 8101 }
[devices.d]
driver = "microscope:microscope.simulators:SimulatedLightSource"
pyro = { port = 8101 }
[groups.together]
devices = ["c", "d"]
""")
    assert {p.path for p in found} == {"devices.b.conf.devices.laser.driver", "devices.b.pyro.port"}, found
    assert any("served by a already, in another process" in p.message for p in found)


def test_a_pyro_table_without_pyro4_installed_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "Pyro4" else real(name, *a))
    found = problems_in(BASE + "[devices.valves.pyro]\nport = 8000\n")
    assert [p.path for p in found] == ["devices.valves.pyro"], found
    assert "pip install -e '.[microscope]'" in found[0].message
