"""`labctl up`, `labctl down` and `labctl node`: starting a lab (or one host of it) and stopping it."""

from __future__ import annotations

import os
import sys
import time

import attrs
import click

from labctl.actors import labkey, processes
from labctl.actors.errors import LabError

from . import formatting
from .check import load_lab
from .options import SETTLED, fail, lab_options, resolve_port

STATUS_EVERY_S = 0.25   # while a lab of more than LARGE_LAB devices starts, look at its status this often
LARGE_LAB = 50


@click.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--detach", is_flag=True, help="Return once every device runs or failed; the lab keeps running "
                                             "(exit 0 if all run, 1 otherwise). Stop it with `labctl down`.")
@click.option("--no-recover", is_flag=True, help="If the lab's admin dies, stop and exit non-zero instead of "
                                                 "starting the lab again.")
@click.option("--port", type=click.IntRange(1, 65535), help="Override [lab].port.")
@click.option("--new-key", is_flag=True, help="Make a new lab key (rotate it): clients and member hosts holding "
                                              "the old one are refused from now on. Default: keep the key of an "
                                              "earlier start on this port, or make one.")
def up(config_file: str, detach: bool, no_recover: bool, port: int | None, new_key: bool) -> None:
    """Start the lab described by CONFIG: one supervised process per device.

    In the foreground it runs until Ctrl-C or SIGTERM, then stops every device (each driver's
    shutdown), every process of the lab, and frees the port.
    """
    from labctl.actors.keeper import Keeper

    lab = load_lab(config_file)
    if port is not None:
        lab = attrs.evolve(lab, port=port)
    if detach:
        _up_detached(lab, not no_recover, new_key)
        return
    keeper = Keeper(lab, recover=not no_recover, new_key=new_key)

    def started() -> None:
        try:
            status = wait_for_devices(lab.port, keeper)
        except LabError as exc:
            # The lab stopped answering while it started: its admin died, or hangs (SIGSTOP). The
            # watch that follows finds which, kills a hung admin and recovers the lab (or, with
            # --no-recover, says so and exits 1); ending `up` here would leave nobody in charge.
            click.echo(f"warning: the lab stopped answering while its devices started ({exc}); its keeper "
                       "is taking over", err=True)
            return
        click.echo(formatting.status_table(status))
        click.echo(f"lab {lab.name} is up on {lab.bind}:{lab.port}; logs in {lab.log_dir}; its key in "
                   f"{labkey.path_for(lab.port)}. Ctrl-C stops it.")

    run_in_foreground(keeper, started, f"lab {lab.name}")


def run_in_foreground(guard, started, what: str) -> None:
    """Start a keeper (or node), report, watch until Ctrl-C/SIGTERM, stop it; exit 1 on a lab error."""
    from labctl.actors.keeper import install_stop_signals

    install_stop_signals(guard)
    code = 0
    try:
        guard.start()
        started()
        guard.watch()
    except LabError as exc:  # AdminLost (--no-recover) among them
        click.echo(f"error: {exc}", err=True)
        code = 1
    finally:
        elapsed = guard.stop()
    click.echo(f"{what} stopped in {elapsed:.2f} s", err=True)
    sys.exit(code)


def _up_detached(lab, recover: bool, new_key: bool) -> None:
    from labctl.actors.keeper import AdminLost, Keeper, install_stop_signals

    from labctl.actors.actorsystem import keep_out_of_children

    read_end, write_end = os.pipe()
    keep_out_of_children(read_end, write_end)
    pid = os.fork()
    if pid == 0:  # the keeper: a daemon in its own session, with no terminal
        os.close(read_end)
        os.setsid()
        _detach_stdio(lab.log_dir)
        keeper = Keeper(lab, recover=recover, detached=True, new_key=new_key)
        install_stop_signals(keeper)
        code = 0
        try:
            keeper.start()
            os.write(write_end, b"ok\n")
            os.close(write_end)
            keeper.watch()
        except AdminLost as exc:
            keeper.log.error("%s", exc)
            code = 3
        except BaseException as exc:  # the daemon must report, clean up and exit, whatever happened
            try:
                os.write(write_end, f"error: {exc}\n".encode())
            except OSError:
                pass
            keeper.log.exception("keeper failed")
            code = 1
        finally:
            keeper.stop()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    if not answer.startswith("ok"):
        fail(answer.strip().removeprefix("error: ") or "the lab's keeper died while starting the lab; see "
             f"{lab.log_dir}/lab.log")
    try:
        status = wait_for_devices(lab.port, None, keeper_pid=pid)
    except LabError as exc:
        fail(str(exc))
    click.echo(formatting.status_table(status))
    click.echo(f"lab {lab.name} is up on {lab.bind}:{lab.port} (keeper pid {pid}, key in "
               f"{labkey.path_for(lab.port)}); stop it with: labctl down --port {lab.port}")
    sys.exit(0 if all(d.state == "running" for d in status.devices) else 1)


def _detach_stdio(log_dir: str) -> None:
    os.makedirs(log_dir, exist_ok=True)
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(os.path.join(log_dir, "keeper.out"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(devnull)
    os.close(out)


def wait_for_devices(port: int, keeper, timeout: float = 120.0, keeper_pid: int = 0):
    """Show a progress bar until every device runs or failed (or the foreground `keeper` is told to
    stop); returns the final status. LabError("... stopped while starting") at once if the detached
    keeper `keeper_pid` ends meanwhile (`labctl down` from elsewhere), however far the wait got."""

    def stopped() -> bool:
        return bool(keeper_pid) and not processes.is_alive(keeper_pid)

    from labctl.actors.client import connect

    # A short timeout: a lab that vanishes mid-request is seen at once. Not open_client: a lab that
    # does not answer raises LabError here, for the caller to hand over to the keeper's watch.
    client = connect(port, timeout=2.0)
    try:
        status = None
        with click.progressbar(length=0, label="starting devices", file=sys.stderr) as bar:
            done, since, deadline = 0, 0, time.monotonic() + timeout
            while time.monotonic() < deadline and not (keeper is not None and keeper.stop_requested):
                if keeper is not None:
                    keeper.watch_once(0)  # a foreground keeper keeps watching the lab's admin meanwhile
                try:
                    status = client.status()
                    bar.length = len(status.devices)
                    settled = sum(d.state in SETTLED for d in status.devices)
                    bar.update(settled - done)
                    done = settled
                    if settled >= len(status.devices):
                        break
                    # Wait for the next event, but look at the whole status at most a few times a
                    # second: a large lab starts with a burst of events, and a status per event would
                    # make start-up quadratic in the number of devices.
                    look_again = time.monotonic() + STATUS_EVERY_S
                    since = client.events(since, wait_s=0.5).last_seq
                    while len(status.devices) > LARGE_LAB and (left := look_again - time.monotonic()) > 0:
                        since = client.events(since, wait_s=left).last_seq
                except LabError:
                    if keeper_pid:  # a lab that stops answers so as it goes: see whether its keeper ends
                        processes.wait_gone([keeper_pid], 5.0)
                    if not stopped():
                        raise
                if stopped():
                    break
        if keeper_pid and status is not None and any(d.state == "stopped" for d in status.devices):
            processes.wait_gone([keeper_pid], 5.0)  # devices stopped by a `down`: its keeper is ending
        if stopped():
            raise LabError(f"the lab on port {port} was stopped while starting")
        return status
    finally:
        client.close()


def one_address(value: str) -> str:
    """--bind: one IPv4 address of this machine, not a wildcard that no other host can connect to."""
    from labctl.config.load import address_problem

    problem = address_problem(value)
    if problem:
        raise click.BadParameter(problem)
    return value


@click.command()
@lab_options
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the lab to stop.")
def down(port: int | None, config_file: str | None, timeout: float) -> None:
    """Stop a running lab in order: every device's shutdown, every process gone, the port free."""
    from labctl.actors.client import default_address
    from labctl.actors.stopping import shutdown_lab

    port = resolve_port(port, config_file)
    began = time.monotonic()
    try:
        name = shutdown_lab(port, default_address(port), timeout=timeout)
    except LabError as exc:
        fail(str(exc))
    if name is None:
        click.echo(f"no lab is running on port {port}")
    else:
        click.echo(f"lab {name} on port {port} stopped in {time.monotonic() - began:.2f} s")


@click.command()
@click.argument("name")
@click.option("--leader", required=True, metavar="HOST:PORT",
              help="Address and admin port of the lab's leader (where `labctl up` runs).")
@click.option("--port", type=click.IntRange(1, 65535), default=1950, show_default=True,
              help="Admin port of this host.")
@click.option("--bind", default="127.0.0.1", show_default=True, callback=lambda ctx, param, value: one_address(value),
              help="The address this host listens on and advertises: the leader must reach it, and its lab file "
                   "must declare it as this host's [hosts.NAME] address.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where this host's logs go [default: ./logs/node-NAME].")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="The lab's key file, copied from the leader's run folder (lab-PORT.key) as one copies an SSH "
                   "key [default: $LABCTL_KEY_FILE, else the key of the leader's port kept on this machine].")
def node(name: str, leader: str, port: int, bind: str, log_dir: str | None, key_file: str | None) -> None:
    """Run host NAME of a multi-host lab: devices whose config says `host = "NAME"` run here.

    It joins the leader's lab and runs until Ctrl-C or SIGTERM, then stops every process it
    started; killed, it takes them with it. The leader accepts it only as a host its lab file
    declares, from that host's declared address (--bind), and only with the lab key: every packet
    between the lab's hosts carries a MAC under it. Give this host a copy of the key file (see the
    README's threat model).
    """
    from labctl.actors.node import Node

    address, _, leader_port = leader.rpartition(":")
    if not address or not leader_port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {leader!r}", param_hint="--leader")
    key = None  # without a key file: the leader's key on this machine, read once the leader answers
    if key_file or os.environ.get(labkey.KEY_FILE_ENV):
        try:
            key = labkey.for_lab(int(leader_port), key_file)
        except LabError as exc:
            fail(str(exc))
    guard = Node(name, (address, int(leader_port)), port, bind, log_dir or os.path.join("logs", f"node-{name}"), key)

    def started() -> None:
        click.echo(f"host {name} is up on {bind}:{port}, joining the lab at {leader}; Ctrl-C stops it.")

    if not processes.port_answers(int(leader_port), address):
        click.echo(f"waiting for the lab at {leader} to answer ...", err=True)
    run_in_foreground(guard, started, f"host {name}")
