"""Every supervision duration and count is finite and sane, wherever it is set, and a bad one names its
key path and the accepted range."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from labctl.config import ConfigError, Supervision, load
from labctl.config.load import RANGES
from labctl.config.schema import SUPERVISION_KEYS

GOOD = """
[lab]
name = "durations"
[devices.valves]
driver = "sim-valves"
"""

# where a supervision key may be set: (TOML that sets KEY = VALUE there, the key path of KEY)
SECTIONS = {
    "supervision": ("[supervision]\n{key} = {value}\n", "supervision.{key}"),
    "shared group": ("[groups.g]\ndevices = ['valves']\n{key} = {value}\n", "groups.g.{key}"),
    "separate group": ("[groups.g]\ndevices = ['valves']\nprocess = 'separate'\n{key} = {value}\n", "groups.g.{key}"),
    "device": ("{key} = {value}\n", "devices.valves.{key}"),   # appended to [devices.valves]
}
BAD_VALUES = ["inf", "-inf", "nan", "-1", "1e-9", "1e12"]


def _cases():
    for section in SECTIONS:
        for key, (low, _) in RANGES.items():
            for value in BAD_VALUES:
                if value == "1e-9" and low == 0:
                    continue  # a nanosecond backoff is as good as none, which is allowed (see test below)
                yield section, key, value


def _lab(section: str, key: str, value: str) -> tuple[str, str]:
    template, path = SECTIONS[section]
    return GOOD + template.format(key=key, value=value), path.format(key=key)


def _problems(tmp_path, text: str) -> ConfigError:
    file = tmp_path / "lab.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(file)
    return info.value


@pytest.mark.parametrize("section, key, value", list(_cases()))
def test_bad_value_is_refused_at_its_key_path_with_the_range(tmp_path, section, key, value):
    text, path = _lab(section, key, value)
    error = _problems(tmp_path, text)
    low, high = RANGES[key]
    expected = (f"expected a number from {low:g} to {high:g} seconds" if key.endswith("_s")
                else f"expected an integer from {low:g} to {high:g}")
    mine = [p for p in error.problems if p.path == path]
    assert mine, [str(p) for p in error.problems]
    assert expected in mine[0].message and "got " in mine[0].message, mine[0].message
    assert f"{path}: {expected}" in str(error)


def test_message_reads_as_documented(tmp_path):
    error = _problems(tmp_path, GOOD + "heartbeat_s = inf\n")
    assert "devices.valves.heartbeat_s: expected a number from 0.05 to 3600 seconds, got inf" in str(error)
    error = _problems(tmp_path, GOOD + "[supervision]\nmax_restarts = 1e12\n")
    assert "supervision.max_restarts: expected an integer from 0 to 10000, got 1000000000000.0" in str(error)
    error = _problems(tmp_path, GOOD + "[supervision]\nheartbeat_misses = 'three'\n")
    assert "supervision.heartbeat_misses: expected an integer from 1 to 1000, got a string 'three'" in str(error)
    error = _problems(tmp_path, GOOD + "[supervision]\nstop_timeout_s = true\n")
    assert "supervision.stop_timeout_s: expected a number from 0.1 to 3600 seconds, got a boolean True" in str(error)


@pytest.mark.parametrize("key", [k for k in RANGES if not k.endswith("_s")])
def test_a_count_must_be_a_whole_number(tmp_path, key):
    error = _problems(tmp_path, GOOD + f"[supervision]\n{key} = 2.0\n")
    assert [p.path for p in error.problems] == [f"supervision.{key}"]


def test_every_numeric_supervision_key_has_a_range_that_holds_its_default():
    defaults = Supervision()
    numeric = {key for key in SUPERVISION_KEYS if not isinstance(getattr(defaults, key), str)}
    assert numeric == set(RANGES)
    for key, (low, high) in RANGES.items():
        assert 0 <= low <= getattr(defaults, key) <= high < 1e6, key
        assert math.isfinite(high)


@pytest.mark.parametrize("bound", [0, 1], ids=["low", "high"])
@pytest.mark.parametrize("section", SECTIONS)
def test_both_bounds_are_accepted_everywhere(tmp_path, section, bound):
    values = {key: RANGES[key][bound] for key in RANGES}
    body = "".join(f"{key} = {value}\n" for key, value in values.items())
    text = {"supervision": GOOD + "[supervision]\n" + body,
            "shared group": GOOD + "[groups.g]\ndevices = ['valves']\n" + body,
            "separate group": GOOD + "[groups.g]\ndevices = ['valves']\nprocess = 'separate'\n" + body,
            "device": GOOD + body}[section]
    file = tmp_path / "lab.toml"
    file.write_text(text)
    supervision = load(file).device("valves").supervision
    for key, value in values.items():
        assert getattr(supervision, key) == value, key
        assert type(getattr(supervision, key)) is type(getattr(Supervision(), key)), key  # 60 -> 60.0


def test_values_labs_really_use_are_accepted(tmp_path):
    file = tmp_path / "lab.toml"
    file.write_text(GOOD + "[supervision]\nbackoff_s = 1e-9\nbackoff_max_s = 0.05\nheartbeat_s = 0.05\n"
                           "heartbeat_misses = 2\nmax_restarts = 1000\nwithin_s = 60\nstop_timeout_s = 6\n")
    supervision = load(file).supervision
    assert (supervision.backoff_s, supervision.heartbeat_s, supervision.max_restarts) == (1e-9, 0.05, 1000)


def test_check_refuses_each_bad_duration_with_its_key_path(tmp_path):
    file = tmp_path / "lab.toml"
    file.write_text(GOOD + "heartbeat_s = 1e-9\n"
                    "[devices.furnace]\ndriver = 'sim-furnace'\nstop_timeout_s = inf\n"
                    "[supervision]\nbackoff_s = nan\nheartbeat_misses = -1\n"
                    "[groups.g]\ndevices = ['furnace']\nprocess = 'separate'\ninit_timeout_s = 1e12\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "labctl.bin.cli", "check", str(file)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1, result
    assert time.monotonic() - started < 10
    for line in ["devices.valves.heartbeat_s: expected a number from 0.05 to 3600 seconds, got 1e-09",
                 "devices.furnace.stop_timeout_s: expected a number from 0.1 to 3600 seconds, got inf",
                 "supervision.backoff_s: expected a number from 0 to 3600 seconds, got nan",
                 "supervision.heartbeat_misses: expected an integer from 1 to 1000, got -1",
                 "groups.g.init_timeout_s: expected a number from 0.1 to 86400 seconds, got 1000000000000.0"]:
        assert line in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
