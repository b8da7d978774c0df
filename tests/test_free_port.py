"""tests/support/procs.free_port: ports for the processes the tests start must never collide."""

from tests.support.procs import free_port


def test_free_port_never_hands_out_the_same_port_twice():
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
