"""Lab files: every problem reported with its file, key path and what was expected; all at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labctl.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[lab]
name = "ok"
[devices.valves]
driver = "sim-valves"
"""

# (lab file, the key path of the problem, words the problem must contain)
BAD = [
    ("[lab]\nname='x'\n", "devices", "no devices"),
    (GOOD + "[devices.v2]\ndriver = 'sim-valvez'\n", "devices.v2.driver", "unknown driver 'sim-valvez'"),
    (GOOD + "[devices.v2]\ndriver = 'no_such_module_x:Valves'\n", "devices.v2.driver",
     "cannot import module 'no_such_module_x'"),
    (GOOD + "[devices.v2]\ndriver = 'labctl.hardware.simulated:NoSuchClass'\n", "devices.v2.driver", "has no 'NoSuchClass'"),
    (GOOD + "[devices.v2]\ndriver = 'labctl.hardware.simulated:stage_aware_camera'\n", "devices.v2.driver",
     "is not a driver class"),
    (GOOD + "[devices.v2]\nhost = 'sim-valves'\n", "devices.v2.driver", "missing"),
    (GOOD + "[devices.'camera-1']\ndriver = 'sim-camera'\n", "devices.camera-1", "not a valid device name"),
    (GOOD + "[devices.class]\ndriver = 'sim-camera'\n", "devices.class", "not a valid device name"),
    (GOOD.replace('name = "ok"', 'name = "ok"\nport = 70000'), "lab.port", "out of range 1..65535"),
    (GOOD.replace('name = "ok"', 'name = "ok"\nport = "1900"'), "lab.port", "expected an integer, got a string"),
    (GOOD.replace('name = "ok"', 'name = "ok"\nbind = "localhost:1"'), "lab.bind", "expected an IPv4 address"),
    (GOOD.replace('name = "ok"', 'name = "ok"\ncolour = "red"'), "lab.colour", "unknown key"),
    (GOOD + "[devices.f]\ndriver = 'sim-furnace'\nhost = 'valvepi'\n", "devices.f.host",
     "host 'valvepi' is not declared in [hosts]"),
    (GOOD + "[devices.f]\ndriver = 'sim-furnace'\n[devices.f.conf]\ntau = 3\n", "devices.f.conf.tau",
     "unknown argument; SimFurnace takes: setpoint, ambient, tau_s"),
    (GOOD + "[devices.f]\ndriver = 'sim-furnace'\nconf = 3\n", "devices.f.conf", "expected a table, got an integer"),
    (GOOD + "[supervision]\nstrategy = 'one_for_none'\n", "supervision.strategy", "expected one of one_for_one"),
    (GOOD + "[supervision]\nmax_restarts = -1\n", "supervision.max_restarts", "expected an integer from 0 to"),
    (GOOD + "[supervision]\nheartbeat_s = 0\n", "supervision.heartbeat_s", "expected a number from 0.05 to"),
    (GOOD + "[supervision]\nrestart = 'sometimes'\n", "supervision.restart", "expected one of permanent"),
    (GOOD + "[devices.cam]\ndriver = 'sim-floating-camera'\n", "devices.cam.uid", "is a floating driver"),
    (GOOD + "[devices.cam]\ndriver = 'sim-camera'\nuid = '123'\n", "devices.cam.uid", "not a floating driver"),
    (GOOD + "[groups.g]\ndevices = ['valves', 'nope']\n", "groups.g.devices", "no device 'nope'"),
    (GOOD + "[devices.a]\ndriver = 'arduino-valves'\nconf = { valves = ['A'] }\n", "devices.a.conf",
     "missing argument 'port'"),
    (GOOD + "[devices.v2]\ndriver = 'sim-valves'\nfactory = 'labctl.hardware.simulated:stage_aware_camera'\n",
     "devices.v2", "either `driver` or `factory`"),
]


@pytest.mark.parametrize("text, path, words", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_config_names_its_problem(tmp_path, text, path, words):
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(file)
    problems = info.value.problems
    assert any(p.path == path and words in p.message for p in problems), [str(p) for p in problems]
    assert str(file) in str(info.value)  # each line names the file
    assert f"{path}: " in str(info.value)


def test_all_problems_are_reported_together(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text(textwrap.dedent("""
        [lab]
        port = 0
        [devices.a]
        driver = "sim-valvez"
        [devices.b]
        driver = "sim-furnace"
        conf = { tau = 3 }
    """))
    with pytest.raises(ConfigError) as info:
        load(file)
    paths = {p.path for p in info.value.problems}
    assert {"lab.port", "devices.a.driver", "devices.b.conf.tau"} <= paths


def test_not_toml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[lab\nname=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(broken)
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.toml")


def test_conf_is_verbatim_and_copied_per_device():
    lab = parse({"devices": {
        "a": {"driver": "sim-valves", "conf": {"valves": {"A": 0}}},
        "b": {"driver": "sim-valves", "conf": {"valves": {"A": 0}}},
    }})
    a, b = lab.devices
    assert a.conf == b.conf == {"valves": {"A": 0}}
    assert a.conf is not b.conf and a.conf["valves"] is not b.conf["valves"]
    fresh = a.fresh_conf()
    fresh["valves"]["Z"] = 9
    assert a.conf == {"valves": {"A": 0}}  # what a driver does to its kwargs never reaches the lab


def test_defaults_and_overrides():
    lab = parse({"supervision": {"max_restarts": 2, "strategy": "rest_for_one"},
                 "devices": {"a": {"driver": "sim-valves", "max_restarts": 7}, "b": {"driver": "sim-stage"}}})
    assert lab.port == 1900 and lab.bind == "127.0.0.1" and lab.host == "local"
    assert lab.log_dir.endswith("logs/lab")
    assert lab.device("a").supervision.max_restarts == 7
    assert lab.device("b").supervision.max_restarts == 2
    assert lab.device("b").supervision.strategy == "rest_for_one"


def test_shared_group_is_one_unit_and_separate_group_a_supervision_group():
    lab = parse({"devices": {"a": {"driver": "sim-valves"}, "s": {"driver": "sim-stage"},
                             "c": {"driver": "sim-camera"}, "l": {"driver": "sim-light"}},
                 "groups": {"scope": {"devices": ["s", "c"]},
                            "optics": {"devices": ["l"], "process": "separate", "strategy": "one_for_all"}}})
    assert [(u.name, [d.name for d in u.devices]) for u in lab.units()] == \
        [("a", ["a"]), ("scope", ["s", "c"]), ("l", ["l"])]
    assert lab.supervision_groups() == [("lab", ["a", "scope"]), ("optics", ["l"])]
    assert lab.device("l").supervision.strategy == "one_for_all" and lab.device("a").supervision.strategy == "one_for_one"


def test_check_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    ok = subprocess.run([sys.executable, "-m", "labctl.bin.cli", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok: 1 devices"
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD[1][0])
    result = subprocess.run([sys.executable, "-m", "labctl.bin.cli", "check", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and "devices.v2.driver" in result.stderr


def test_check_accepts_a_non_loopback_bind_and_says_the_key_guards_it(tmp_path):
    def check(bind: str) -> subprocess.CompletedProcess:
        file = tmp_path / "lab.toml"
        file.write_text(GOOD.replace('name = "ok"', f'name = "ok"\nbind = "{bind}"'))
        return subprocess.run([sys.executable, "-m", "labctl.bin.cli", "check", str(file)], capture_output=True,
                              text=True)

    lan = check("10.0.0.5")
    assert lan.returncode == 0 and lan.stdout.strip() == "ok: 1 devices"
    assert "note: lab.bind is 10.0.0.5, not loopback: every host that can reach it can connect; " \
           "only holders of the lab key are let in" in lan.stderr
    assert "every interface" in check("0.0.0.0").stderr
    for loopback in ("127.0.0.1", "127.0.0.2"):
        quiet = check(loopback)
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert load_bind_note("192.168.1.20") and not load_bind_note("127.0.0.1")


def load_bind_note(bind: str) -> str | None:
    from labctl.config.load import bind_note

    return bind_note(parse({"lab": {"bind": bind}, "devices": {"v": {"driver": "sim-valves"}}}))


@pytest.mark.parametrize("name", ["demo.toml", "floating.toml", "composite.toml"])
def test_shipped_example_labs_are_valid(name):
    path = ROOT / "config" / name
    if not path.exists():
        pytest.fail(f"config/{name} is missing")
    assert load(path).devices
