"""`labctl check CONFIG`, and reading a lab file for the commands that start a lab."""

from __future__ import annotations

import sys

import click


def load_lab(path: str):
    """The validated lab at `path` (with a note on stderr if it listens beyond loopback), or its problems
    on stderr and exit 1."""
    # labctl.config imports the driver registry: only the commands that read a lab file pay for it
    from labctl.config import ConfigError, load
    from labctl.config.imports import IMPORT_TIMEOUT_S
    from labctl.config.load import bind_note

    try:
        # driver modules outside labctl are imported in child processes first, so that one that exits,
        # crashes or hangs at import is reported as a problem instead of ending (or hanging) this command
        lab = load(path, import_timeout=IMPORT_TIMEOUT_S)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    note = bind_note(lab)
    if note:
        click.echo(f"note: {note}", err=True)
    return lab


@click.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
def check(config_file: str) -> None:
    """Validate a lab file: prints `ok: N devices`, or every problem (exit 1)."""
    lab = load_lab(config_file)
    click.echo(f"ok: {len(lab.devices)} devices")
