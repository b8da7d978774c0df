"""stacks/jobs.py's DockerJobHistory against a real (private) Docker daemon: the program
learns how each one-shot job's container ended, so a failed job runs again on the next
`pulumi up` and a job that succeeded does not."""

from __future__ import annotations

import subprocess

import pytest

from stacks.jobs import FIRST_RUN, LABEL_RUN, DockerJobHistory
from tests.support.dockerd import private_dockerd, shell_image


@pytest.fixture(scope="module")
def daemon(log_dir):
    with private_dockerd(log_dir, "job-history") as started:
        shell_image(started)
        yield started


def _finished_job(daemon, name: str, exit_code: int, run_label: str) -> str:
    cid = subprocess.run(["docker", "-H", daemon.url, "create", "--name", name, "--network", "none",
                          "--label", f"{LABEL_RUN}={run_label}", "llm-node-test/shell:1.0",
                          "/bin/sh", "-c", f"exit {exit_code}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["docker", "-H", daemon.url, "start", "-a", name], capture_output=True)
    return cid


def test_a_job_that_exited_non_zero_gets_a_new_run_label(daemon):
    cid = _finished_job(daemon, "node-gateway-migrate-failed", 3, FIRST_RUN)
    history = DockerJobHistory(daemon.url)
    previous = history.previous_run("node-gateway-migrate-failed")
    assert previous is not None and previous.exit_code == 3 and not previous.running
    assert history.run_label("node-gateway-migrate-failed") == f"retry-{cid[:12]}"


def test_a_job_that_succeeded_keeps_its_label(daemon):
    _finished_job(daemon, "node-gateway-migrate-ok", 0, "retry-0123456789ab")
    assert DockerJobHistory(daemon.url).run_label("node-gateway-migrate-ok") == "retry-0123456789ab"


def test_no_container_and_no_daemon_mean_a_first_run(daemon, tmp_path):
    assert DockerJobHistory(daemon.url).run_label("never-ran") == FIRST_RUN
    unreachable = DockerJobHistory(f"unix://{tmp_path}/nothing.sock")
    assert unreachable.run_label("node-gateway-migrate") == FIRST_RUN
