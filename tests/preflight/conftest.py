"""A private, real Docker daemon for the preflight's Docker check (when dockerd is installed).

It listens on its own socket with its own data root, touches no iptables and no bridge,
and is stopped after the module: the machine's default socket stays as it was.
"""

from __future__ import annotations

import pytest

from tests.support.dockerd import private_dockerd


@pytest.fixture(scope="module")
def docker_daemon(log_dir):
    with private_dockerd(log_dir, "preflight") as daemon:
        yield daemon
