"""Clients reach a lab where it listens: a lab bound to another address than 127.0.0.1 is operated
exactly like a local one (its address from the run record, --config, --address or $LABCTL_ADDRESS)."""

from __future__ import annotations

import json

import pytest

from labctl.actors import processes

pytestmark = pytest.mark.integration

ADDRESS = "127.0.0.2"   # loopback too (127/8), but not the address clients used to assume


def test_a_lab_bound_to_another_address_is_operated_like_a_local_one(lab):
    lab.write("""
[devices.valves]
driver = "sim-valves"
[devices.camera]
driver = "sim-camera"
conf = { shape = [64, 64] }
""", bind=ADDRESS)
    result = lab.up()
    assert result.returncode == 0, result.stderr
    status = lab.status()   # no --address: the run record says where it listens
    assert [d["state"] for d in status["devices"]] == ["running", "running"]
    sent = lab.labctl("send", "valves", "OpenValve", "A", "--json")
    assert sent.returncode == 0 and json.loads(sent.stdout)["value"] == "open"
    assert lab.labctl("send", "camera", "Acquire", "--json").returncode == 0
    assert lab.labctl("status", "--address", ADDRESS).returncode == 0
    assert lab.labctl("status", "--config", lab.config).returncode == 0
    # Told to look elsewhere, a client finds nothing there, and says so.
    lab.env["LABCTL_ADDRESS"] = "127.0.0.1"
    wrong = lab.labctl("status")
    assert wrong.returncode == 1 and "no lab is running" in wrong.stderr
    assert lab.labctl("status", "--config", lab.config).returncode == 0     # --config's bind wins, as its port does
    assert lab.labctl("status", "--address", ADDRESS).returncode == 0       # and --address over everything
    del lab.env["LABCTL_ADDRESS"]
    down = lab.labctl("down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert processes.wait_gone(lab.leftovers(), 5.0) == set()
    assert processes.wait_port_free(lab.port, ADDRESS, timeout=5.0)


def test_a_wildcard_address_is_refused_with_the_reason(lab):
    # every actor advertises the address it binds: 0.0.0.0 is one no other host can connect to
    lab.write('[devices.valves]\ndriver = "sim-valves"\n', bind="0.0.0.0")
    up = lab.up()
    assert up.returncode == 1 and "lab.bind: 0.0.0.0 means every interface" in up.stderr, up.stderr
    assert processes.port_is_free(lab.port)
    node = lab.labctl("node", "pi", "--leader", f"127.0.0.1:{lab.port}", "--bind", "0.0.0.0")
    assert node.returncode == 2 and "0.0.0.0 means every interface" in node.stderr, node.stderr
