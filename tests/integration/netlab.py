"""A lab spread over Linux network namespaces: a leader and member hosts, each in its own namespace
with its own address, joined by a bridge in a hub namespace (a switch). Links can be pulled."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from labctl.actors import processes

from ..conftest import Lab, _worker

_subnets = itertools.count(10 + 40 * _worker)
_ids = itertools.count()


def ip(*args: str) -> None:
    """Run `ip ARGS` (as root), failing loudly."""
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def netns_available() -> str:
    """'' if this machine can make network namespaces here, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"lcprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    return ""


class NetLab(Lab):
    """A test's lab whose leader and member hosts each run in their own network namespace."""

    def __init__(self, tmp_path: Path, members: tuple[str, ...] = ("a", "b")) -> None:
        super().__init__(tmp_path)
        self.tag = f"lc{_worker}x{next(_ids)}x{os.getpid() % 10000}"
        self.subnet = f"10.231.{next(_subnets) % 250}"
        self.namespaces: dict[str, str] = {}   # host -> namespace
        self.addresses: dict[str, str] = {}    # host -> address
        self.hub = f"{self.tag}hub"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ports: dict[str, int] = {}
        ip("netns", "add", self.hub)
        self.namespaces["hub"] = self.hub
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for index, host in enumerate(("leader", *members), start=1):
            self.add_host(host, index)
        self.address = self.addresses["leader"]
        self.env["LABCTL_ADDRESS"] = self.address

    def add_host(self, host: str, index: int) -> None:
        """A namespace for `host` at SUBNET.index, cabled to the hub's bridge."""
        ns, port = f"{self.tag}{host}", f"p{index}"
        ip("netns", "add", ns)
        ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{self.subnet}.{index}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        self.namespaces[host], self.addresses[host] = ns, f"{self.subnet}.{index}"
        self.hub_ports = getattr(self, "hub_ports", {})
        self.hub_ports[host] = port

    def link(self, host: str, up: bool) -> None:
        """Plug or pull `host`'s cable at the switch."""
        ip("-n", self.hub, "link", "set", self.hub_ports[host], "up" if up else "down")

    def in_ns(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[host]]

    def hosts_toml(self, members: tuple[str, ...] = ("a", "b")) -> str:
        """[hosts.X] tables for the member hosts, each with its address and node port."""
        return "".join(f'[hosts.{host}]\naddress = "{self.addresses[host]}"\nport = {self.node_port(host)}\n'
                       for host in members)

    def node_port(self, host: str) -> int:
        if host not in self.node_ports:
            from ..conftest import free_port
            self.node_ports[host] = free_port()
        return self.node_ports[host]

    # -- running things in the namespaces ---------------------------------------------------

    def labctl(self, *args: str, timeout: float = 60, check: bool = False, host: str = "leader"):
        result = subprocess.run([*self.in_ns(host), sys.executable, "-m", "labctl.bin.cli", *map(str, args)],
                                cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"labctl {' '.join(map(str, args))} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *args: str, host: str = "leader") -> subprocess.Popen:
        """`labctl ARGS` in the background in `host`'s namespace; its output goes to `.log_path`."""
        path = self.dir / f"{host}-{next(_ids)}.out"
        with path.open("w") as log:
            proc = subprocess.Popen([*self.in_ns(host), sys.executable, "-m", "labctl.bin.cli", *map(str, args)],
                                    cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.log_path = path
        return proc

    def start_node(self, host: str, *, bind: str | None = None, key_file: str | None = None,
                   name: str | None = None, ns_host: str | None = None) -> subprocess.Popen:
        """`labctl node` for `host` in its namespace (or pose as `name` from `ns_host`'s)."""
        node = self.popen("node", name or host, "--leader", f"{self.address}:{self.port}",
                          "--port", self.node_port(host), "--bind", bind or self.addresses[ns_host or host],
                          "--key-file", key_file or self.key_file, "--log-dir", self.dir / f"logs-{host}",
                          host=ns_host or host)
        self.nodes[host] = node
        return node

    def stop_node(self, host: str) -> None:
        node = self.nodes.pop(host)
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.labctl("events", "--json", check=True).stdout.splitlines()]

    def wait_event(self, predicate, timeout: float = 20.0, what: str = "event") -> dict:
        """The first event for which `predicate(event)` holds, waiting for it (generously)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:g} s; events: {self.events()[-20:]}")
            time.sleep(0.1)

    def port_free_in(self, host: str, port: int) -> bool:
        probe = ("import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                 f"s.bind(('{self.addresses[host]}', {port}))")
        return subprocess.run([*self.in_ns(host), sys.executable, "-c", probe], capture_output=True,
                              timeout=30).returncode == 0

    def close(self) -> list[str]:
        """Stop the lab and every node, check nothing is left, remove the namespaces; the problems."""
        problems = []
        try:
            self.labctl("down", "--port", self.port, timeout=60)
        except subprocess.TimeoutExpired:
            problems.append("labctl down hung")
        for host in list(self.nodes):
            self.stop_node(host)
        left = processes.wait_gone(self.leftovers(), timeout=5.0)
        if left:
            problems.append(f"lab processes left behind: { {pid: processes.cmdline(pid) for pid in left} }")
            processes.kill_all(left)
        ports = [("leader", self.port)] + [(h, p) for h, p in self.node_ports.items() if h in self.addresses]
        for host, port in ports:
            if not self.port_free_in(host, port):
                problems.append(f"port {port} still bound on {host}")
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        return problems


class TwoCopies:
    """Samples, every 10 ms, the live processes that opened a Recorder device (its journal's "open
    PID" lines): `most` is the largest number seen alive at once."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                lines = self.journal.read_text().splitlines()
            except OSError:
                continue
            pids = {int(line.split()[1]) for line in lines if line.startswith("open ")}
            self.most = max(self.most, sum(processes.is_alive(pid) for pid in pids))
            self.samples += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.most
