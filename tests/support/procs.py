"""Start, wait for and stop the real processes the tests talk to (scripts/devnode/processes.py:
one implementation for the tests, the benchmarks and the dev node)."""

from scripts.devnode.processes import ManagedProcess, free_port, http_ok, port_open

__all__ = ["ManagedProcess", "free_port", "http_ok", "port_open"]
