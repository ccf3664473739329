"""Re-check tests/MUTATIONS.md: apply each deliberate bug to a scratch copy of the project and see that
the tests listed for it fail. Not collected by pytest; run by hand (about 4 minutes on 2 cores):

    python3 tests/mutations.py            # every mutant
    python3 tests/mutations.py 2 4a 9a    # some, by id
    python3 tests/mutations.py -v 3a      # with the failing tests' output

It makes a git worktree of HEAD and a venv that sees it (both under a temporary folder), copies this
tree's tests/ into it, moves the copy's test ports out of the range a suite in this tree uses (so that
the two can run at once), and removes the worktree at the end. The project itself is never touched.
A mutant whose text is no longer in the source is reported as such: update its edit below.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
C = "tests/integration/test_contracts.py::"
L = "tests/integration/test_lanes.py::"
P = "tests/integration/test_pychron_gateway.py::"
M = "tests/integration/test_microscope.py::"
N = "tests/integration/test_netns.py::"
INFLIGHT = C + "test_a_request_in_a_killed_process_fails_at_once_and_is_never_re_sent"
RESEND_SETUP = [
    ("actors/routing.py", "        self.inflight: dict[str, InFlight] = {}\n",
     "        self.inflight: dict[str, InFlight] = {}\n        self.requests: dict = {}\n        self.resend: dict = {}\n"),
    ("actors/routing.py", "            self.inflight[request.request_id] = InFlight(",
     "            self.requests[request.request_id] = request\n            self.inflight[request.request_id] = InFlight("),
    ("actors/starting.py", "        self.actor.registry.learn_names(unit, message.devices)\n",
     "        self.actor.registry.learn_names(unit, message.devices)\n"
     "        for request, sender in self.actor.router.resend.pop(unit.name, []):\n"
     "            self.actor.router.route(request, sender)\n"),
]
KEEP_FOR_RESEND = ("                del self.inflight[request_id]\n",
                   "                del self.inflight[request_id]\n"
                   "                self.resend.setdefault(unit.name, []).append((self.requests[request_id], "
                   "flight.reply_to))\n")

# (id, what, [(file, text, replacement)], tests that must fail)
MUTANTS = [
    ("1", "no request-id check in the client", [("actors/client.py",
        'while reply is None or getattr(reply, "request_id", None) != request_id:', "while reply is None:")],
     ["tests/unit/test_client_ids.py"]),
    ("2", "the device host sends every reply twice", [("actors/devicehost.py",
        "            self.send(reply_to, reply)\n",
        "            self.send(reply_to, reply)\n            self.send(reply_to, reply)\n")],
     [C + "test_every_request_gets_exactly_one_reply"]),
    ("3a", "in-flight requests of a crashed process never answered (fail_inflight does nothing)", [
        ("actors/routing.py", "connection drop with a request in flight are told the same.\"\"\"\n",
         "connection drop with a request in flight are told the same.\"\"\"\n        return\n")], [INFLIGHT]),
    ("3b", "in-flight requests of a crashed process never answered (process_ended skips fail_inflight)", [
        ("actors/supervisor.py", "        self.router.fail_inflight(unit, cause, pid)\n        self.router.lanes_changed()\n        for name",
         "        self.router.lanes_changed()\n        for name")], [INFLIGHT]),
    ("4a", "in-flight requests re-sent to the new process instead of failed", RESEND_SETUP + [
        ("actors/routing.py", KEEP_FOR_RESEND[0], KEEP_FOR_RESEND[1] + "                continue\n")], [INFLIGHT]),
    ("4b", "in-flight requests failed and also re-sent to the new process", RESEND_SETUP + [
        ("actors/routing.py", *KEEP_FOR_RESEND)], [INFLIGHT]),
    ("5", "linear instead of doubling back-off", [("actors/policy.py", "base * (2 ** max(0, consecutive))",
                                                   "base * (1 + max(0, consecutive))")],
     ["tests/unit/test_restart_core.py", "tests/unit/test_policy.py"]),
    ("6", "no stable_s reset", [("actors/policy.py", "    if ended.ran_s >= sup.stable_s:\n        consecutive = 0\n", "")],
     ["tests/unit/test_restart_core.py"]),
    ("6b", "stable_s reset only after more than stable_s", [("actors/policy.py", "if ended.ran_s >= sup.stable_s:",
                                                             "if ended.ran_s > sup.stable_s:")],
     ["tests/unit/test_restart_core.py"]),
    ("7", "> instead of >= in the intensity check", [("actors/policy.py", "if len(recent) >= max_restarts:",
                                                      "if len(recent) > max_restarts:")],
     ["tests/unit/test_restart_core.py", "tests/unit/test_policy.py"]),
    ("7b", "a restart exactly within_s old leaves the window", [("actors/policy.py", "if now - t <= within_s)",
                                                                 "if now - t < within_s)")],
     ["tests/unit/test_restart_core.py"]),
    ("8a", "[hosts] key path truncated: hosts.pi... -> hosts...", [("config/load.py",
        '            path = f"hosts.{name}"\n', '            path = "hosts"\n')], ["tests/unit/test_config_paths.py"]),
    ("8b", "[hosts] port path truncated: hosts.pi.port -> hosts.port", [("config/load.py",
        'self.problem(f"{path}.port", f"port {port} is out of range',
        'self.problem("hosts.port", f"port {port} is out of range')], ["tests/unit/test_config_paths.py"]),
    ("8c", "[groups] key path truncated: groups.optics... -> groups...", [("config/load.py",
        '            path = f"groups.{name}"\n', '            path = "groups"\n')], ["tests/unit/test_config_paths.py"]),
    ("8d", "[groups] membership path truncated: groups.optics.devices -> groups.devices", [("config/load.py",
        '                    self.problem(f"groups.{group.name}.devices",\n                                 f"no device',
        '                    self.problem("groups.devices",\n                                 f"no device')],
     ["tests/unit/test_config_paths.py"]),
    ("8e", "[emulator] key path truncated: devices.f.emulator.kind -> devices.f.kind", [("config/load.py",
        '        epath = f"{path}.emulator"\n', "        epath = path\n")], ["tests/unit/test_config_paths.py"]),
    ("8f", "[emulator] option path truncated: devices.f.emulator.tau -> emulator.tau", [("config/load.py",
        'self.problem(epath + (f".{key}" if key else ""), problem)',
        'self.problem("emulator" + (f".{key}" if key else ""), problem)')], ["tests/unit/test_config_paths.py"]),
    ("9a", "a group's intensity failure fails only the crashing unit (supervisor.apply)", [("actors/supervisor.py",
        "        for name in decision.fail:\n            other = self.registry[name]\n",
        "        for name in decision.fail:\n            other = self.registry[name]\n"
        "            if other is not unit:\n                continue\n")],
     [C + "test_a_group_that_exceeds_its_intensity_fails_as_a_whole"]),
    ("9b", "a group's intensity failure fails only the crashing unit (policy.decide)", [("actors/policy.py",
        "return Decision(consecutive, times, fail=tuple(targets),",
        "return Decision(consecutive, times, fail=(ended.unit,),")],
     [C + "test_a_group_that_exceeds_its_intensity_fails_as_a_whole", "tests/unit/test_restart_core.py"]),
    ("10", "a request to a device that is not running is dropped instead of answered", [("actors/routing.py",
        '        elif unit.state != "running" or unit.address is None:\n'
        "            self.actor.send(sender, failures.unavailable(request.request_id, name, unit.state, "
        "unit.last_error,\n                                                         type(request).__name__))\n",
        '        elif unit.state != "running" or unit.address is None:\n            pass\n')],
     [C + "test_requests_to_a_failed_restarting_or_stopped_device_are_answered_at_once_with_its_state"]),
    ("11", "`labctl restart` exits 0 whatever state the device ends in", [("bin/devices.py",
        '    if entry.state != "running":\n        fail(f"{device} is', '    if False:\n        fail(f"{device} is')],
     [C + "test_restart_exits_1_when_the_device_does_not_come_back"]),
    ("12", "`up --no-recover` exits 3 (not 1) when the admin dies", [("bin/lifecycle.py",
        '        click.echo(f"error: {exc}", err=True)\n        code = 1\n',
        '        click.echo(f"error: {exc}", err=True)\n        code = 3\n')],
     [C + "test_no_recover_exits_exactly_1_when_the_admin_is_killed"]),
    ("13", "default port 1901 instead of 1900", [("actors/client.py", "DEFAULT_PORT = 1900", "DEFAULT_PORT = 1901")],
     [C + "test_the_lab_is_found_by_port_then_config_then_labctl_port_then_1900"]),
    ("14", "$LABCTL_PORT wins over --config", [("bin/options.py", "    if config_file:\n        return lab_port(config_file)\n",
        '    if config_file and not __import__("os").environ.get("LABCTL_PORT"):\n        return lab_port(config_file)\n')],
     [C + "test_the_lab_is_found_by_port_then_config_then_labctl_port_then_1900"]),
    ("15", "SIGTERM not handled by a foreground `up`", [("actors/keeper.py", "signal.SIGTERM", "signal.SIGUSR2")],
     [C + "test_sigterm_stops_a_foreground_up_cleanly"]),
    ("16", "a lane request whose connection drops is sent again (to the new process)", [("actors/laneclient.py",
        "            return self.why_ended(message, channel.lane.pid, exc)\n",
        "            time.sleep(2.0)\n            return self.request(message, max(1.0, deadline - time.monotonic()))\n")],
     [L + "test_a_request_in_flight_when_its_process_is_killed_fails_fast_and_is_never_resent"]),
    ("17", "a timed-out lane connection is kept and any reply taken", [
        ("actors/laneclient.py", "                if getattr(reply, \"request_id\", None) == message.request_id:\n",
         "                if True:\n"),
        ("actors/laneclient.py", "            channels.pop(key, None)\n            channel.close()  # its late reply",
         "            pass\n            # its late reply")],
     [L + "test_a_late_reply_is_never_taken_for_the_next_request"]),
    ("18", "the TCP lane's MAC is not checked", [("actors/lanewire.py",
        "            if not hmac.compare_digest(mac, self._mac(self.in_tag, self.received, head, data)):",
        "            if False:")],
     ["tests/unit/test_lanewire.py::test_a_changed_pickle_or_a_replayed_message_is_refused"]),
    ("19", "the lane lets in a client that cannot prove the key", [("actors/lanewire.py",
        "    if not hmac.compare_digest(proof, _proof(key, b\"client\", server_nonce, client_nonce)):",
        "    if False:")],
     [L + "test_a_client_without_the_key_is_refused_on_the_lane"]),
    ("20", "the Unix lane does not check its peer's uid", [("actors/lanes.py",
        "        if kind == \"unix\" and conn.uid != os.getuid():", "        if False:")],
     ["tests/unit/test_lanewire.py::test_a_local_process_of_another_uid_is_refused_even_if_it_reaches_the_socket"]),
    ("21", "a frame overwritten while it is copied out of shared memory is returned", [("actors/framering.py",
        "        if start_stamp != ref.seq:", "        if False:")],
     ["tests/unit/test_framering.py::test_a_frame_overwritten_while_it_is_copied_is_refused"]),
    ("22", "frames a stream never got are not counted", [("actors/laneclient.py",
        "                self._lose(item.frame - self.last_frame - 1)", "                pass")],
     [L + "test_a_slow_stream_consumer_is_told_exactly_how_many_frames_it_lost"]),
    ("23", "`up` stops watching its admin while the devices start", [("bin/lifecycle.py",
        "                    keeper.watch_once(0)", "                    pass")],
     ["tests/integration/test_backbone.py::test_foreground_up_whose_admin_hangs_while_it_starts_recovers_and_keeps_running"]),
    ("24", "a valve opens whatever its interlocks say", [("hardware/interfaces.py",
        "        if open_ and open_interlocks:\n", "        if False:\n")],
     [P + "test_every_valve_command_answers_as_pychron_does"]),
    ("25", "valve locks are not kept across restarts", [("actors/devicehost.py",
        "                    self.drivers[name]._restore_locks(locks)", "                    pass")],
     [P + "test_locks_outlive_the_device_and_the_lab_and_refusals_are_events"]),
    ("26", "an interlock on another controller is read as closed", [("hardware/interfaces.py",
        "        return bool(peer._do_get(peer._valve(valve)))", "        return False")],
     [P + "test_interlocks_across_controllers_of_one_process_never_both_pass"]),
    ("27", "the device host sends every lane reply twice", [("actors/lanedesk.py",
        "        conn.send(reply)\n", "        conn.send(reply)\n        conn.send(reply)\n")],
     [L + "test_each_request_on_the_lane_gets_exactly_one_reply"]),
    ("28", "a unit on a member host starts again before its old process is confirmed gone", [("actors/hosts.py",
        "        if unit.stale is not None:  # never two", "        if False:  # never two")],
     [N + "test_a_short_blip_keeps_no_second_copy"]),
    ("29", "a host that stops answering heartbeats is never declared lost", [("actors/hosts.py",
        "            if host.state == JOINED and host.misses >= self.max_misses:", "            if False:")],
     [N + "test_a_host_is_lost_on_its_own_heartbeats_however_slow_its_devices_are"]),
    ("30", "requests in flight on a lost host are not failed when it is declared lost (the one fail_inflight "
           "that serves an ended process and a lost host)", [("actors/supervisor.py",
        "        self.router.fail_inflight(unit, cause, pid)\n        self.router.lanes_changed()\n        for name",
        "        self.router.lanes_changed()\n        for name")],
     [N + "test_a_pulled_link_loses_the_host_fast_and_it_comes_back_without_two_copies"]),
    ("31", "the leader accepts a node whatever host name and address it gives", [("actors/actorsystem.py",
        "            if why:\n                if (name, address)", "            if False:\n                if (name, address)")],
     [N + "test_a_node_posing_as_a_declared_host_is_refused"]),
    ("32", "a node's admin outlives the node", [("actors/actorsystem.py",
        "            if _admin_ends_with.pid:\n", "            if False:\n")],
     [N + "test_a_killed_node_takes_its_processes_with_it_and_comes_back"]),
    ("33", "a member keeps Thespian's periods: it rejoins a restarted leader after minutes", [("actors/actorsystem.py",
        "    convention.CONVENTION_RESTART_PERIOD = CONVENTION_PERIOD\n", "")],
     [N + "test_nodes_rejoin_a_restarted_leader_within_seconds"]),
    ("34", "a host's units are not started when it answers again", [("actors/hosts.py",
        "                self.actor.launch(unit)\n\n    def lose(", "                pass\n\n    def lose(")],
     [N + "test_a_pulled_link_loses_the_host_fast_and_it_comes_back_without_two_copies"]),
    ("35", "`up` does not wait for the declared hosts", [("actors/hosts.py",
        "        self.waited = not self.hosts   # the declared", "        self.waited = True   # the declared")],
     [N + "test_nodes_rejoin_a_restarted_leader_within_seconds"]),
    ("36", "requests to a device on a member host go by its lane, which cannot tell a lost host", [
        ("actors/laneclient.py", "            if kind is None or (lane.member and self.mode == \"auto\" and not self.published_only):",
         "            if kind is None:")],
     [N + "test_a_pulled_link_loses_the_host_fast_and_it_comes_back_without_two_copies"]),
    ("37", "a controller's devices and a stage's axes are not served, so Pyro cannot proxy them", [
        ("actors/pyrofacade.py", "                    desk.daemon.register(part, f\"{name}.{key}\")\n", "")],
     [M + "test_microscopes_own_clients_work_unchanged_against_labctl"]),
    ("38", "a floating microscope unit is opened without its index", [("hardware/microscope_devices.py",
        "        return cls(index=candidate, **conf)", "        return cls(index=0, **conf)")],
     [M + "test_floating_microscope_units_are_resolved_by_uid_and_a_missing_one_fails_alone"]),
    ("39", "a Pyro facade on a network address is allowed without a key", [("config/load.py",
        "        if not loopback and not key_file and not insecure:", "        if False:")],
     [M + "test_a_pyro_facade_off_loopback_needs_a_key_or_an_explicit_insecure"]),
    ("40", "calls through the Pyro facade are not counted as the device's requests", [("actors/devicehost.py",
        "                self.desk.count(device, isinstance(reply, Failure))\n", "                pass\n")],
     [M + "test_microscopes_own_clients_work_unchanged_against_labctl"]),
    ("41", "a gateway's client skips the lanes of member hosts' devices and cannot reach them", [
        ("actors/laneclient.py", " and self.mode == \"auto\" and not self.published_only):", " and self.mode == \"auto\"):")],
     ["tests/integration/test_multihost.py::test_a_gateway_on_the_leader_drives_valves_on_a_member_host"]),
    ("42", "the Pyro daemon is closed before the drivers, using up the stop time with clients connected", [
        ("actors/devicehost.py", "        try:\n            if self.worker is not None:\n                ended = self.worker.stop(",
         "        try:\n            if self.pyro is not None:\n                self.pyro.close()\n"
         "            if self.worker is not None:\n                ended = self.worker.stop(")],
     [M + "test_stopping_with_many_pyro_clients_connected_still_shuts_the_driver_down"]),
    ("44", "Thespian's 20 sends in flight stay: pings to a lost host hold up every other message", [
        ("actors/actorsystem.py", "    asyncTransportBase.MAX_PENDING_TRANSMITS = PENDING_SENDS\n", "")],
     [N + "test_a_long_outage_comes_back_once_and_stalls_nothing_else"]),
]


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, argv)), check=True, capture_output=True, text=True, **kwargs)


def prepare(scratch: Path) -> None:
    """Restore the copy to HEAD plus this tree's tests, on ports of its own."""
    run("git", "-C", scratch, "checkout", "--", ".")
    shutil.copytree(ROOT / "tests", scratch / "tests", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    conftest = scratch / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text().replace("itertools.count(21000 + 400 * _worker)",
                                                     "itertools.count(29000 + 400 * _worker)"))


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    wanted = [a for a in argv if a != "-v"]
    unknown = set(wanted) - {m[0] for m in MUTANTS}
    if unknown:
        print(f"unknown mutant ids: {sorted(unknown)}; known: {[m[0] for m in MUTANTS]}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="labctl-mutants-"))
    scratch, venv = base / "copy", base / "venv"
    run("git", "-C", ROOT, "worktree", "add", "--detach", scratch, "HEAD")
    survived = 0
    try:
        run(sys.executable, "-m", "venv", "--system-site-packages", venv)
        python = venv / "bin" / "python"
        run(python, "-m", "pip", "install", "-q", "--no-deps", "-e", scratch)
        for ident, what, edits, tests in MUTANTS:
            if wanted and ident not in wanted:
                continue
            prepare(scratch)
            missing = [(f, old) for f, old, _ in edits if old not in (scratch / f).read_text()]
            if missing:
                print(f"{ident:>3}  NOT APPLIED  {what}: text not found in {missing[0][0]}: {missing[0][1][:60]!r}")
                survived += 1
                continue
            for file, old, new in edits:
                path = scratch / file
                path.write_text(path.read_text().replace(old, new, 1))
            began = time.monotonic()
            result = subprocess.run([python, "-m", "pytest", "-q", "-x", "-n", "2", "-p", "no:cacheprovider", *tests],
                                    cwd=scratch, capture_output=True, text=True, timeout=900)
            failed = [line.removeprefix("FAILED ") for line in result.stdout.splitlines() if line.startswith("FAILED")]
            verdict = "caught" if result.returncode != 0 else "SURVIVED"
            survived += result.returncode == 0
            print(f"{ident:>3}  {verdict:<11}  {what} ({time.monotonic() - began:.0f} s)")
            for line in failed:
                print(f"       {line[:200]}")
            if verbose:
                print(result.stdout[-6000:])
        prepare(scratch)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch)])
        shutil.rmtree(base, ignore_errors=True)
    print("every mutant was caught" if not survived else f"{survived} mutant(s) not caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
