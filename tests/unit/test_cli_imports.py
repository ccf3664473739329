"""The `labctl` command starts at once: `--help` imports no subcommand, and no command that only talks
to a lab (status, send) imports numpy, the lab-file loader or the drivers."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from labctl.bin import cli

LABCTL = [sys.executable, "-m", "labctl.bin.cli"]
HEAVY = ("numpy", "thespian")
NO_LAB_PORT = "1"  # nothing listens on port 1: the command imports what it needs, then fails at connecting

# Runs `labctl ARGS...` inside a fresh interpreter, its output swallowed, then prints what it imported.
PROBE = """
import contextlib, io, json, sys
from labctl.bin import cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        cli.cli.main(sys.argv[1:], prog_name="labctl")
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)))
"""


def modules_loaded_by(*args: str) -> set[str]:
    """Every module a fresh interpreter has imported after running `labctl ARGS...`."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_help_exits_0_and_lists_every_command_with_its_one_line_help():
    result = subprocess.run([*LABCTL, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listing] == sorted(cli.COMMANDS)
    assert any(line.split(None, 1) == ["send", "Send MESSAGE to DEVICE and print the reply, e.g."] for line in listing)


def test_help_imports_no_subcommand_nor_numpy_nor_thespian():
    modules = modules_loaded_by("--help")
    assert heavy(modules) == []
    ours = sorted(m for m in modules if m.startswith("labctl."))
    assert ours == ["labctl.bin", "labctl.bin.cli", "labctl.bin.lazygroup"]


def test_importing_the_cli_and_the_messages_imports_no_numpy():
    # the messages travel in every client; numpy comes only with a reply that holds an array
    code = ("import sys; import labctl.bin.cli, labctl.actors.messages, labctl.bin.formatting; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numpy'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["status", "--port", NO_LAB_PORT],
                                  ["send", "valves", "OpenValve", "A", "--port", NO_LAB_PORT]])
def test_status_and_send_import_only_what_they_need(args):
    modules = modules_loaded_by(*args)
    assert "labctl.actors.client" in modules  # the probe got as far as connecting
    assert not any(m.split(".")[0] == "numpy" for m in modules)
    others = {"labctl.config", "labctl.hardware", "labctl.actors.keeper", "labctl.bin.lifecycle",
              "labctl.bin.check", "labctl.bin.run", "labctl.bin.repl", "labctl.bin.emulate"}
    assert sorted(modules & others) == []


@pytest.mark.parametrize("width", [40, 60, 80])
def test_the_listing_shows_each_commands_own_short_help(width):
    """The one-line helps written in cli.COMMANDS read exactly as the commands' docstrings would."""
    group = cli.cli
    context = click.Context(group, info_name="labctl")
    commands = {name: group.get_command(context, name) for name in cli.COMMANDS}
    assert {name: command.name for name, command in commands.items()} == {name: name for name in cli.COMMANDS}

    def listing(of: click.Group) -> str:
        formatter = click.HelpFormatter(width=width)
        of.format_commands(click.Context(of, info_name="labctl"), formatter)
        return formatter.getvalue()

    assert listing(group) == listing(click.Group("labctl", commands=commands))


def test_a_mistyped_command_is_told_the_close_names():
    result = subprocess.run([*LABCTL, "stauts"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "No such command 'stauts'." in result.stderr and "'status'" in result.stderr


def test_replies_holding_numpy_values_still_print_as_json():
    # formatting looks for numpy only among the loaded modules; a reply with an array has loaded it
    import numpy as np

    from labctl.bin.formatting import jsonable

    assert jsonable({"t": np.float32(1.5), "frame": np.zeros((2, 3), dtype=np.uint16)}) == \
        {"t": 1.5, "frame": {"array": {"shape": [2, 3], "dtype": "uint16"}}}
