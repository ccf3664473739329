"""Shared fixtures: labs on free ports, each checked afterwards for leaked processes and a bound port."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from labctl.actors import processes

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = Path(__file__).resolve().parent / "drivers"
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_ports = itertools.count(21000 + 400 * _worker)


def free_port() -> int:
    """A port below the ephemeral range (where actors' own ports come from) that nothing holds."""
    for port in _ports:
        if processes.port_is_free(port) and not processes.port_listeners(port):
            return port
    raise RuntimeError("no free port")


def wait_for_text(path: Path, text: str, timeout: float = 10.0) -> None:
    """Wait until a driver's journal file contains `text` (generous: to catch hangs only)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never said {text!r}")
        time.sleep(0.01)


def processes_with_token(token: str) -> list[int]:
    """Live processes whose environment carries `token` (every process a test's lab forked)."""
    needle = f"LABCTL_TEST_TOKEN={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0") and processes.is_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Lab:
    """A test's lab: a config on a free port, run through the real `labctl` command."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.env = {**os.environ, "LABCTL_RUN_DIR": str(tmp_path / "run"), "LABCTL_TEST_TOKEN": self.token,
                    "PYTHONPATH": os.pathsep.join([str(DRIVERS), os.environ.get("PYTHONPATH", "")]),
                    "LABCTL_PORT": str(self.port)}
        self.env.pop("PYTEST_XDIST_WORKER", None)
        self.config = tmp_path / "lab.toml"
        self.log_dir = tmp_path / "logs"

    def write(self, body: str, name: str = "test", **lab: object) -> Path:
        """Write the lab file: a [lab] table on this lab's port, then `body`."""
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lab.items())
        self.config.write_text(f'[lab]\nname = "{name}"\nport = {self.port}\nlog_dir = "{self.log_dir}"\n{extra}\n'
                               + textwrap.dedent(body))
        return self.config

    @staticmethod
    def labctl_argv() -> list[str]:
        return [sys.executable, "-m", "labctl.bin.cli"]

    def labctl(self, *args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        """Run `labctl ARGS` and return what it did."""
        result = subprocess.run([sys.executable, "-m", "labctl.bin.cli", *map(str, args)], cwd=self.dir,
                                env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"labctl {' '.join(map(str, args))} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        """Start `labctl ARGS` in the background (a foreground `up`)."""
        return subprocess.Popen([sys.executable, "-m", "labctl.bin.cli", *map(str, args)], cwd=self.dir,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def popen_python(self, code: str, *argv: str) -> subprocess.Popen:
        """A Python process with this lab's environment (its argv shows `argv`)."""
        return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=self.dir, env=self.env)

    def up_in_foreground(self) -> tuple[subprocess.Popen, Path]:
        """`labctl up` in the foreground, and the file its stderr goes to: a file, not a pipe, since
        nothing reads a pipe while the test runs and the lab's processes inherit up's descriptors."""
        said = self.dir / "up.err"
        with said.open("w") as err:
            proc = subprocess.Popen([*self.labctl_argv(), "up", str(self.config)], cwd=self.dir, env=self.env,
                                    stdout=subprocess.DEVNULL, stderr=err)
        return proc, said

    def up(self, *extra: str) -> subprocess.CompletedProcess:
        return self.labctl("up", self.config, "--detach", *extra)

    def status(self) -> dict:
        result = self.labctl("status", "--json", check=True)
        return json.loads(result.stdout)

    def device(self, name: str) -> dict:
        return next(d for d in self.status()["devices"] if d["name"] == name)

    def pids(self) -> dict[str, int]:
        return {d["name"]: d["pid"] for d in self.status()["devices"]}

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition") -> dict:
        """Poll the lab's status until `predicate(status)` holds; generous, to catch hangs only."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.labctl("status", "--json")  # the lab may not be up yet: keep asking
            status = json.loads(result.stdout) if result.returncode == 0 else {"devices": []}
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; status: {json.dumps(status, indent=1)}")
            time.sleep(0.05)

    @contextlib.contextmanager
    def node(self, name: str, port: int):
        """`labctl node NAME` joining this lab on loopback; afterwards stopped by SIGTERM (exit 0
        expected after a clean run), killed if need be, and its port checked free."""
        proc = self.popen("node", name, "--leader", f"127.0.0.1:{self.port}", "--port", port)
        try:
            yield proc
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert processes.wait_port_free(port, timeout=5.0)

    def record(self, port: int | None = None, timeout: float = 20.0) -> dict:
        """The run record of the lab (or node) on `port`, once written."""
        path = self.dir / "run" / f"lab-{port or self.port}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no run record {path} after {timeout:g} s")
            time.sleep(0.05)
        return json.loads(path.read_text())

    @property
    def key_file(self) -> Path:
        """Where `labctl up` keeps this lab's key."""
        return self.dir / "run" / f"lab-{self.port}.key"

    def leftovers(self) -> list[int]:
        return processes_with_token(self.token)


@pytest.fixture
def lab(tmp_path):
    """A lab on a free port; after the test: `labctl down`, then no process of it left, port free."""
    lab = Lab(tmp_path)
    yield lab
    lab.labctl("down", "--port", lab.port, timeout=60)
    left = processes.wait_gone(lab.leftovers(), timeout=5.0)
    port_free = processes.wait_port_free(lab.port, timeout=5.0)
    if left:
        details = {pid: processes.cmdline(pid) for pid in left}
        processes.kill_all(left)
        pytest.fail(f"lab processes left behind: {details}")
    if not port_free:
        pytest.fail(f"port {lab.port} still bound by {processes.port_listeners(lab.port)}")


@pytest.fixture
def client_for():
    """connect() to a lab from this process; closes every client after the test."""
    from labctl.actors.client import connect

    clients = []

    def make(lab: Lab, **kwargs):
        kwargs.setdefault("key_file", lab.key_file)
        client = connect(lab.port, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
