"""`Call` reaches only what a driver offers clients, and never with arguments past the lab's limit."""

from __future__ import annotations

import pytest

from labctl.actors.errors import UnknownMessage
from labctl.actors.messages import Call


def test_call_is_refused_beyond_the_interface_and_past_the_size_limit(lab, client_for):
    secret = lab.dir / "secret.txt"
    secret.write_text("the lab's secret\n")
    journal = lab.dir / "journal.txt"
    lab.write(f"""
[devices.fcam]
driver = "sim-floating-camera"
uid = "20200910"
[devices.rec]
driver = "labtest_drivers:Recorder"
conf = {{ journal = "{journal}" }}
""", max_argument_bytes=1024)
    assert lab.up().returncode == 0
    pids, before = lab.pids(), journal.read_text()

    leak = lab.labctl("send", "fcam", "Call", "connected_units", f"present_file={secret}")  # a static method
    assert leak.returncode == 1 and "fcam (SimFloatingCamera) has no method 'connected_units'" in leak.stderr
    assert "secret" not in leak.stdout + leak.stderr
    for device, name, args in [("fcam", "count_candidates", [f"present_file={secret}"]),  # a class method
                               ("fcam", "max_exposure_s", []),                             # an attribute
                               ("fcam", "__class__", []), ("fcam", "__reduce__", []),
                               ("fcam", "_do_acquire", []),
                               ("rec", "_do_set", ["A", "true"]), ("rec", "_write", ["pwned"]),
                               ("rec", "shutdown", [])]:
        refused = lab.labctl("send", device, "Call", name, *args)
        assert refused.returncode == 1 and f"has no method {name!r}" in refused.stderr, refused.stderr

    big = lab.labctl("send", "fcam", "Call", "set_exposure", "x" * 2000)
    assert big.returncode == 1
    assert "fcam: arguments of Call 'set_exposure' are 2.0 KiB; the limit is 1 KiB (max_argument_bytes)" in big.stderr
    big = lab.labctl("send", "rec", "OpenValve", "A" * 2000)
    assert big.returncode == 1 and "arguments of OpenValve 'open'" in big.stderr

    assert lab.labctl("send", "fcam", "Call", "get_id").stdout.strip() == "20200910"  # what is offered works
    assert journal.read_text() == before  # no refused call reached the driver
    assert lab.pids() == pids
    handle = client_for(lab).device("fcam")
    assert "connected_units" not in dir(handle) and "get_id" in dir(handle)
    with pytest.raises(AttributeError):
        handle.connected_units
    with pytest.raises(UnknownMessage):
        client_for(lab).send("fcam", Call("__class__"))
