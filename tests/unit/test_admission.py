"""Which nodes a leader admits: only a host the lab file declares, from its declared address."""

from __future__ import annotations

from labctl.actors.actorsystem import refusal

MEMBERS = {"valvepi": ("10.0.0.12", 1950), "furnacepi": ("10.0.0.13", 0)}


def test_a_declared_host_from_its_declared_address_is_admitted():
    assert refusal(MEMBERS, "valvepi", ("10.0.0.12", 1950)) == ""
    assert refusal(MEMBERS, "furnacepi", ("10.0.0.13", 41234)) == ""   # no port declared: any port


def test_a_host_from_another_address_or_port_is_refused_saying_where_it_is_declared():
    assert refusal(MEMBERS, "valvepi", ("10.0.0.99", 1950)) == \
        "host 'valvepi' is declared at 10.0.0.12:1950, not at 10.0.0.99:1950"
    assert "declared at 10.0.0.12:1950, not at 10.0.0.12:1951" in refusal(MEMBERS, "valvepi", ("10.0.0.12", 1951))


def test_an_undeclared_or_nameless_host_is_refused():
    assert "which the lab file does not declare (furnacepi, valvepi)" in refusal(MEMBERS, "rogue", ("10.0.0.12", 1950))
    assert "does not declare" in refusal(MEMBERS, None, ("10.0.0.12", 1950))
    assert "(none)" in refusal({}, "valvepi", ("10.0.0.12", 1950))
