"""`labctl status` and `labctl events`: looking at a running lab."""

from __future__ import annotations

import json
import time

import click

from labctl.actors.errors import LabError

from . import formatting
from .options import fail, lab_options, open_client, resolve_port


@click.command()
@lab_options
@click.option("--json", "as_json", is_flag=True, help='Print {"lab", "port", "devices": [...]} as JSON.')
def status(port: int | None, config_file: str | None, as_json: bool) -> None:
    """Show every device: driver, host, pid, state, restarts, uptime, last error."""
    port = resolve_port(port, config_file)
    with open_client(port) as client:
        try:
            lab_status = client.status()
        except LabError as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(lab_status.as_json()))
    else:
        click.echo(formatting.status_table(lab_status))


@click.command()
@lab_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing events as they happen (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: seq, time, device, kind, detail.")
def events(port: int | None, config_file: str | None, follow: bool, as_json: bool) -> None:
    """Show the lab's lifecycle events: starting, running, crashed, restarting, failed, stopped."""
    port = resolve_port(port, config_file)

    def show(event) -> None:
        if as_json:
            click.echo(json.dumps(event.as_json()))
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
            click.echo(f"{stamp} {event.text()}")

    with open_client(port) as client:
        try:
            batch = client.events()
            for event in batch.events:
                show(event)
            if follow:
                for event in client.follow(since=batch.last_seq):
                    show(event)
        except KeyboardInterrupt:
            pass
        except LabError as exc:
            fail(str(exc))
