"""scripts/bootstrap installs Debian packages as root, or through sudo as a user.

GitHub's hosted runners (the GitOps workflow's test and up jobs) run as a user with
password-less sudo; apt-get without sudo fails there. The test runs the installer function
as an unprivileged user with stand-in `sudo` and `apt-get` programs that record their calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RECORDER = """#!/bin/sh
echo "$(basename "$0") uid=$(id -u) $*" >> "{log}"
if [ "$(basename "$0")" = sudo ]; then
  [ "$1" = -n ] && shift
  exec env "$@"  # sudo's VAR=value arguments, then the command
fi
exit 0
"""


@pytest.fixture
def stand_ins():
    work = Path(tempfile.mkdtemp(prefix="llmnode-bootstrap-"))  # readable by the test user, unlike tmp_path
    bin_dir = work / "bin"
    bin_dir.mkdir()
    log = work / "calls.log"
    log.touch()
    for program in ("sudo", "apt-get"):
        path = bin_dir / program
        path.write_text(RECORDER.format(log=log))
        path.chmod(0o755)
    shutil.copy(ROOT / "scripts" / "lib" / "env.sh", work / "env.sh")
    for path in (work, log, work / "env.sh"):
        path.chmod(0o777 if path == log else 0o755)
    yield work, log
    shutil.rmtree(work, ignore_errors=True)


def _run_apt_install(work: Path, as_user: bool) -> subprocess.CompletedProcess:
    script = f'set -eu; source {work}/env.sh; apt_install debootstrap docker.io'
    env = {"PATH": f"{work}/bin:/usr/bin:/bin", "HOME": str(work)}
    argv = ["bash", "-c", script]
    if as_user:
        argv = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "nobody", "--", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_apt_install_goes_through_sudo_for_a_user(stand_ins):
    work, log = stand_ins
    result = _run_apt_install(work, as_user=True)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    sudo_calls = [c for c in calls if c.startswith("sudo")]
    assert len(sudo_calls) == 2 and all(" -n " in c for c in sudo_calls), calls  # never prompts
    assert any("apt-get update" in c for c in sudo_calls), calls
    assert any("install -y -qq --no-install-recommends debootstrap docker.io" in c for c in sudo_calls), calls


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as root")
def test_apt_install_runs_apt_directly_as_root(stand_ins):
    work, log = stand_ins
    result = _run_apt_install(work, as_user=False)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert not [c for c in calls if c.startswith("sudo")], calls
    assert [c for c in calls if c.startswith("apt-get uid=0 install")], calls
