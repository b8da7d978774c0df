"""stacks/entrypoints/grafana-start.sh: Grafana's admin password follows the secret file on
every start, not only on the start that created the database.

Grafana applies GF_SECURITY_ADMIN_PASSWORD(__FILE) only when it creates grafana.db, while
the data volume outlives `pulumi destroy` and a re-created stack generates a new password
(issue 11, point 4). Two halves: the program runs the script as the container's entry point
with the password file it uploads (mock runtime), and the script itself, run with `sh`,
resets the password from that file when a database exists. Grafana is not installed here:
a stub `grafana` on PATH records its argv and stdin (it stands in for the absent binary only).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pulumi
import pytest

from stacks import grafana
from stacks.containers import ENTRYPOINTS_PATH
from tests.stacks.mock_runtime import MOCK_SECRET_MARK, Deployment, run_program

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "stacks" / "entrypoints" / "grafana-start.sh"
PASSWORD = "second-password"  # the new stack's password; the database was created with another
OFFICIAL_ENTRY = "/run.sh"  # the official grafana/grafana image's entry point, which the script execs


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pulumi.runtime.test
def test_grafana_starts_through_the_uploaded_script_with_the_uploaded_password_file(stack):
    run = run_program(stack)

    def check(args):
        d, exported_password = args
        assert isinstance(d, Deployment)
        container = d.container("grafana").props
        uploads = {u["file"]: u for u in container["uploads"]}
        script_path = f"{ENTRYPOINTS_PATH}/{SCRIPT.name}"
        # The container starts the script (and nothing else: no command would be its only argument).
        assert container.get("entrypoints") == [script_path], container.get("entrypoints")
        assert not container.get("command"), container.get("command")
        script = uploads[script_path]
        assert script["content"] == SCRIPT.read_text(), "the uploaded script is not stacks/entrypoints/" + SCRIPT.name
        assert script["executable"] is True
        # The script reads the password from the file the program uploads as a secret...
        password_file = d.container("grafana").env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
        assert password_file == grafana.PASSWORD_FILE
        assert password_file in uploads, f"{password_file} is not uploaded"
        assert d.container("grafana").is_secret("uploads")
        # ... and it holds the password the stack exports (the one an operator logs in with).
        assert MOCK_SECRET_MARK in uploads[password_file]["content"]
        assert uploads[password_file]["content"] == exported_password
        # The script looks for grafana.db where the data volume is mounted.
        data_dir = d.container("grafana").env.get("GF_PATHS_DATA", "/var/lib/grafana")  # the image's default
        assert "${GF_PATHS_DATA:-/var/lib/grafana}" in SCRIPT.read_text()
        assert data_dir in [v["containerPath"] for v in container["volumes"]]
    return pulumi.Output.all(run.ready(), run.outputs["grafana_admin_password"]).apply(check)


def _stub_dir(tmp_path: Path, exit_code: int = 0) -> Path:
    """A `grafana` on PATH that appends its argv (one argument a line) and its stdin to files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "grafana"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >"{tmp_path}/argv"\ncat >"{tmp_path}/stdin"\n'
                    f"exit {exit_code}\n")
    stub.chmod(0o755)
    return bin_dir


def _start(tmp_path: Path, *, database: bool, grafana_exit: int = 0) -> subprocess.CompletedProcess[str]:
    """Run the real script with `sh`, as the container would, with Grafana's stub on PATH."""
    data = tmp_path / "data"
    data.mkdir()
    if database:
        (data / "grafana.db").write_bytes(b"SQLite format 3\x00")  # created by an earlier stack
    secret = tmp_path / "grafana_admin_password"
    secret.write_text(PASSWORD)  # as the upload writes it: no trailing newline
    secret.chmod(0o444)
    env = {"PATH": f"{_stub_dir(tmp_path, grafana_exit)}:/usr/bin:/bin", "GF_PATHS_DATA": str(data),
           "GF_SECURITY_ADMIN_PASSWORD__FILE": str(secret)}
    return subprocess.run(["sh", str(SCRIPT), "extra-arg"], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def _exec_attempted(result: subprocess.CompletedProcess[str]) -> bool:
    """The script's last step, `exec /run.sh`, was reached: /run.sh does not exist here, so
    the shell reports it not found (127) instead of starting Grafana."""
    return result.returncode == 127 and OFFICIAL_ENTRY in result.stderr


@pytest.fixture(autouse=True)
def _no_official_entry_point_here():
    if os.path.exists(OFFICIAL_ENTRY):
        pytest.skip(f"{OFFICIAL_ENTRY} exists on this machine: the script would start it")


def test_an_existing_database_gets_the_password_from_the_file(tmp_path):
    result = _start(tmp_path, database=True)
    assert (tmp_path / "argv").exists(), f"grafana was not called: {result.stderr}"
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[0] == "cli", argv
    assert argv[-3:] == ["admin", "reset-admin-password", "--password-from-stdin"], argv
    assert (tmp_path / "stdin").read_text() == PASSWORD
    assert not any(PASSWORD in arg for arg in argv), "the password is in argv (`ps` shows it)"
    assert "Grafana admin password set from" in result.stderr
    assert _exec_attempted(result), (result.returncode, result.stderr)


def test_a_new_database_is_left_to_grafana(tmp_path):
    """Without grafana.db Grafana creates it with GF_SECURITY_ADMIN_PASSWORD__FILE itself."""
    result = _start(tmp_path, database=False)
    assert not (tmp_path / "argv").exists(), "grafana cli ran before Grafana created its database"
    assert _exec_attempted(result), (result.returncode, result.stderr)


def test_a_failed_reset_does_not_start_grafana_with_the_old_password(tmp_path):
    result = _start(tmp_path, database=True, grafana_exit=1)
    assert (tmp_path / "argv").exists()
    assert result.returncode == 1 and OFFICIAL_ENTRY not in result.stderr, (result.returncode, result.stderr)
