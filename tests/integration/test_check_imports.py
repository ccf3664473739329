"""`labctl check` imports driver modules in child processes first: a module that exits, crashes or hangs at
import is a problem of its key, `check` always answers, and such a module is never imported by `check` itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from labctl.config.imports import IMPORT_TIMEOUT_S, check_imports, untrusted_modules

pytestmark = pytest.mark.integration

# module name -> its source; each does its harm at import
MODULES = {
    "exits_mod": "import sys\nsys.exit(4)\n",
    "os_exits_mod": "import os\nos._exit(6)\n",
    "segfaults_mod": "import ctypes\nctypes.string_at(0)\n",
    "sleeps_mod": "import time\ntime.sleep(1000)\n",
    "sleeps_too_mod": "import time\ntime.sleep(1000)\n",
    "interrupts_mod": "raise KeyboardInterrupt\n",
    "raises_mod": "raise ValueError('boom at import')\n",
    "good_mod": "from labctl.hardware.simulated import SimValves as Valves\n\n"
                "def make():\n    return {'valves': Valves()}\n",
    # leaves a line in $IMPORT_JOURNAL for each process that imports it, then ends that process
    "journaled_mod": "import os\nwith open(os.environ['IMPORT_JOURNAL'], 'a') as f:\n"
                     "    f.write(f'{os.getpid()}\\n')\nos._exit(3)\n",
}

# fault -> (lab file line, the problem `check` must print for devices.bad)
FAULTS = {
    "exit": ("driver = 'exits_mod:Valves'", "devices.bad.driver: importing 'exits_mod' exited with code 4"),
    "os._exit": ("driver = 'os_exits_mod:Valves'", "devices.bad.driver: importing 'os_exits_mod' exited with code 6"),
    "segfault": ("driver = 'segfaults_mod:Valves'",
                 "devices.bad.driver: importing 'segfaults_mod' killed the process with SIGSEGV"),
    "sleep": ("driver = 'sleeps_mod:Valves'",
              f"devices.bad.driver: importing 'sleeps_mod' did not finish within {IMPORT_TIMEOUT_S:g} s"),
    "KeyboardInterrupt": ("driver = 'interrupts_mod:Valves'",
                          "devices.bad.driver: importing 'interrupts_mod' raised KeyboardInterrupt"),
    "factory": ("factory = 'segfaults_mod:make'",
                "devices.bad.factory: importing 'segfaults_mod' killed the process with SIGSEGV"),
}

GOOD = """
[lab]
name = "imports"
[devices.valves]
driver = "sim-valves"
"""


@pytest.fixture
def modules(tmp_path):
    """A folder holding the modules above, and an environment whose PYTHONPATH reaches it."""
    folder = tmp_path / "mods"
    folder.mkdir()
    for name, source in MODULES.items():
        (folder / f"{name}.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
           "IMPORT_JOURNAL": str(tmp_path / "journal")}
    return folder, env


def check(tmp_path, env, body: str) -> tuple[subprocess.CompletedProcess, float]:
    """`labctl check` on a lab file of GOOD plus `body`: what it did, and how long it took."""
    file = tmp_path / "lab.toml"
    file.write_text(GOOD + textwrap.dedent(body))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "labctl.bin.cli", "check", str(file)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


@pytest.mark.parametrize("fault", FAULTS)
def test_import_fault_is_a_problem_of_its_key(tmp_path, modules, fault):
    line, problem = FAULTS[fault]
    result, took = check(tmp_path, modules[1], f"[devices.bad]\n{line}\n")
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert took < IMPORT_TIMEOUT_S + 5, took


def test_every_fault_at_once_is_reported_within_one_time_limit(tmp_path, modules):
    body = "".join(f"[devices.bad_{i}]\n{line}\n" for i, (line, _) in enumerate(FAULTS.values()))
    body += "[devices.late]\ndriver = 'sleeps_too_mod:Valves'\n[devices.raises]\ndriver = 'raises_mod:Valves'\n"
    result, took = check(tmp_path, modules[1], body)
    assert result.returncode == 1, result.stderr
    for i, (_, problem) in enumerate(FAULTS.values()):
        assert problem.replace("devices.bad.", f"devices.bad_{i}.") in result.stderr, result.stderr
    assert "devices.late.driver: importing 'sleeps_too_mod' did not finish" in result.stderr
    # an ordinary exception is reported as before, by the in-process import
    assert "devices.raises.driver: cannot import module 'raises_mod'" in result.stderr
    assert "ValueError: boom at import" in result.stderr
    assert took < IMPORT_TIMEOUT_S + 5, took  # the children run in parallel
    assert "ok:" not in result.stdout


def test_a_module_that_failed_in_its_child_is_never_imported_by_check(tmp_path, modules):
    result, _ = check(tmp_path, modules[1], "[devices.bad]\ndriver = 'journaled_mod:Valves'\n")
    assert result.returncode == 1 and "importing 'journaled_mod' exited with code 3" in result.stderr
    imported_by = (tmp_path / "journal").read_text().split()
    assert len(imported_by) == 1  # the child only: an import by check itself would have ended it with code 3


def test_good_lab_with_outside_modules_is_ok(tmp_path, modules):
    result, took = check(tmp_path, modules[1], "[devices.v2]\ndriver = 'good_mod:Valves'\n"
                                               "[devices.composite]\nfactory = 'good_mod:make'\n")
    assert (result.returncode, result.stdout.strip()) == (0, "ok: 3 devices"), result.stderr
    assert result.stderr == ""
    assert took < 5, took


def test_check_imports_directly(tmp_path, modules, monkeypatch):
    folder, env = modules
    monkeypatch.syspath_prepend(str(folder))  # the children get the caller's sys.path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMPORT_JOURNAL", env["IMPORT_JOURNAL"])
    started = time.monotonic()
    problems = check_imports(["good_mod", "raises_mod", "sleeps_mod", "sleeps_too_mod", "segfaults_mod",
                              "journaled_mod"], timeout=2)
    assert time.monotonic() - started < 3.5  # in parallel: one time limit for all (in turn would take 4 s)
    assert problems == {"sleeps_mod": "importing 'sleeps_mod' did not finish within 2 s",
                        "sleeps_too_mod": "importing 'sleeps_too_mod' did not finish within 2 s",
                        "segfaults_mod": "importing 'segfaults_mod' killed the process with SIGSEGV",
                        "journaled_mod": "importing 'journaled_mod' exited with code 3"}
    assert "good_mod" not in sys.modules and "segfaults_mod" not in sys.modules  # nothing imported here
    assert check_imports([]) == {}


def test_only_modules_outside_labctl_need_a_child():
    data = {"devices": {"a": {"driver": "sim-valves"}, "b": {"driver": "labctl.hardware.simulated:SimValves"},
                        "c": {"driver": "mine.drivers:Valves"}, "d": {"factory": "mine.factories:make"},
                        "e": {"driver": "mine.drivers:Other"}, "f": "not a table", "g": {"driver": 3},
                        "h": {"driver": "os:path"}}}
    assert untrusted_modules(data) == ["mine.drivers", "mine.factories"]  # os is already imported here
    assert untrusted_modules({"devices": []}) == []
