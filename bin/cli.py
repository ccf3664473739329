"""The `labctl` command: bring a lab up and down, look at it, and send its devices messages.

Each subcommand lives in its own module and is imported only when it runs (or shows its own
help), so that `labctl --help` imports click alone and starts at once.
"""

from __future__ import annotations

import click

from .lazygroup import LazyGroup

# name: (the one-line help `labctl --help` lists, "module:attribute" of the command). Each help is the
# first sentence of the command's own docstring; tests/unit/test_cli_imports.py checks that they agree.
COMMANDS = {
    "check": ("Validate a lab file: prints `ok: N devices`, or every problem (exit 1).",
              "labctl.bin.check:check"),
    "up": ("Start the lab described by CONFIG: one supervised process per device.",
           "labctl.bin.lifecycle:up"),
    "down": ("Stop a running lab in order: every device's shutdown, every process gone, the port free.",
             "labctl.bin.lifecycle:down"),
    "node": ('Run host NAME of a multi-host lab: devices whose config says `host = "NAME"` run here.',
             "labctl.bin.lifecycle:node"),
    "status": ("Show every device: driver, host, pid, state, restarts, uptime, last error.",
               "labctl.bin.observe:status"),
    "events": ("Show the lab's lifecycle events: starting, running, crashed, restarting, failed, stopped.",
               "labctl.bin.observe:events"),
    "send": ("Send MESSAGE to DEVICE and print the reply, e.g.",
             "labctl.bin.devices:send"),
    "restart": ("Restart DEVICE's process by hand; clears a failed state (a shared group restarts as one).",
                "labctl.bin.devices:restart"),
    "emulate": ("Serve a KIND instrument emulator on a pseudo-terminal until Ctrl-C or SIGTERM.",
                "labctl.bin.emulate:emulate"),
    "run": ("Run SCRIPT (Python) against a running lab; ARGS after `--` go to the script as `argv`.",
            "labctl.bin.run:run"),
    "repl": ("An interactive Python console on a running lab.",
             "labctl.bin.repl:repl"),
    "import-microscope": ("Write a lab file equivalent to a python-microscope device-server config (CONFIG.py).",
                          "labctl.bin.import_microscope:import_microscope"),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labctl")
def cli() -> None:
    """Supervise laboratory hardware as actors: one TOML file, one process per device.

    Start with `labctl up config/demo.toml`, then in another terminal `labctl status` and
    `labctl send valves OpenValve A`.
    """


def main() -> None:
    """Entry point of the `labctl` console script."""
    cli(prog_name="labctl")


if __name__ == "__main__":
    main()
