"""scripts/preflight run as a user runs it, on this machine (testinfra's local:// host).

This machine has no GPU and no Docker daemon on the default socket: the GPU checks and the
Docker check must fail with a clear reason and no traceback, everything else must pass.
A real Docker daemon (started privately when dockerd is installed) makes the Docker check
pass; a fake nvidia-smi injects the old-driver failure."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from scripts import preflight_gpu as gpu
from stacks.config import load_stack_settings
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
PREFLIGHT = ROOT / "scripts" / "preflight"


def run_preflight(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(PREFLIGHT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def results(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return {r["check"]: r for r in json.loads(proc.stdout)}


def valid_here(tmp_path: Path) -> list[str]:
    """This machine as the host, and disk and port arguments that hold here: a little space,
    two free ports. (Without --host, prod would be checked on its own docker_host over SSH.)"""
    return ["--host", "local://", "--disk-path", str(tmp_path), "--disk-gb", "0.01",
            "--ports", f"{free_port()},{free_port()}"]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_prod_stack_gpu_checks_fail_cleanly_without_a_gpu(tmp_path):
    proc = run_preflight("--stack", "prod", "--json", *valid_here(tmp_path))
    got = results(proc)
    assert proc.returncode == 1
    for check in ("nvidia driver", "cuda capability"):
        assert got[check]["status"] == "FAIL"
        assert "nvidia-smi not found: no NVIDIA driver on this host" in got[check]["detail"]
    assert got["nvidia container toolkit"]["status"] == "FAIL"
    assert "install nvidia-container-toolkit" in got["nvidia container toolkit"]["detail"]
    assert got["free disk"]["status"] == "PASS", got["free disk"]
    assert got["host ports free"]["status"] == "PASS", got["host ports free"]


def test_table_is_readable_and_exit_code_follows_failures(tmp_path):
    absent = f"unix://{tmp_path}/absent.sock"
    proc = run_preflight("--stack", "dev", "--docker-host", absent, *valid_here(tmp_path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "llm-node preflight: stack dev, host local://"
    assert lines[2].split() == ["CHECK", "RESULT", "DETAIL"]
    rows = {line[:26].strip(): line[26:].split(None, 1) for line in lines[3:9]}
    assert rows["docker daemon"][0] == "FAIL"
    assert f"Cannot connect to the Docker daemon at {absent}" in rows["docker daemon"][1]
    assert [rows[c][0] for c in ("nvidia driver", "cuda capability", "nvidia container toolkit")] == ["SKIP"] * 3
    assert rows["free disk"][0] == "PASS" and rows["host ports free"][0] == "PASS"
    assert lines[-1] == "1 check(s) failed."


def test_every_check_passes_on_the_cpu_stack_with_a_reachable_daemon(tmp_path, docker_daemon):
    proc = run_preflight("--stack", "dev", "--host", "local://", "--docker-host", docker_daemon.url, "--json",
                         "--disk-gb", "0.01", "--ports", f"{free_port()},{free_port()}")
    got = results(proc)
    assert got["docker daemon"]["status"] == "PASS", got["docker daemon"]
    assert f"data root {docker_daemon.root}" in got["docker daemon"]["detail"]
    # With no --disk-path, free space is measured where Docker keeps its data.
    assert f"free at {docker_daemon.root}" in got["free disk"]["detail"]
    assert proc.returncode == 0, proc.stdout


def test_a_port_in_use_fails_and_names_its_holder(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        other = free_port()
        proc = run_preflight("--json", "--host", "local://", "--ports", f"{other},{port}", "--disk-path", str(tmp_path),
                             "--disk-gb", "0.01")
    check = results(proc)["host ports free"]
    assert check["status"] == "FAIL"
    assert f"in use: {port} (" in check["detail"] and f"pid {os.getpid()}" in check["detail"]
    assert f"{other} (" not in check["detail"]
    assert proc.returncode == 1


def test_too_little_disk_fails(tmp_path):
    proc = run_preflight("--json", "--host", "local://", "--disk-path", str(tmp_path / "not" / "yet"),
                         "--disk-gb", "1e9")
    check = results(proc)["free disk"]
    assert check["status"] == "FAIL"
    assert f"at {tmp_path}/not/yet (on {tmp_path})" in check["detail"]
    assert "needs 1e+09 GB" in check["detail"]


FAKE_NVIDIA_SMI = """#!/bin/sh
# Injected failure: a host whose driver (535, CUDA 12.2) is older than the image needs.
case "$*" in
  *--query-gpu*) echo "0, NVIDIA A10G, 535.104.05, 8.6, 23028" ;;
  -q) printf 'Driver Version : 535.104.05\\nCUDA Version : 12.2\\n' ;;
  *) exit 9 ;;
esac
"""


def fake_nvidia_smi(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_old_driver_fails_with_the_minimum_and_the_fix(tmp_path):
    proc = run_preflight("--stack", "prod", "--json", "--cuda-version", "12.8", *valid_here(tmp_path),
                         env=fake_nvidia_smi(tmp_path))
    got = results(proc)
    driver = got["nvidia driver"]
    assert driver["status"] == "FAIL"
    assert "driver 535.104.05 supports CUDA 12.2, too old: CUDA 12.8 needs driver >= 570.26" in driver["detail"]
    assert "Update the host's NVIDIA driver" in driver["detail"]
    assert "[--cuda-version]" in driver["detail"]
    assert got["cuda capability"]["status"] == "PASS", got["cuda capability"]
    assert "NVIDIA A10G 8.6" in got["cuda capability"]["detail"]
    assert proc.returncode == 1


def test_the_stack_file_decides_image_quantization_and_ports(tmp_path):
    """Without flags, prod's own settings: its pinned vLLM image (so its CUDA), its quantization,
    its published ports."""
    settings = load_stack_settings("prod")
    image = settings.images["vllm_gpu"]
    cuda = gpu.image_cuda_from_tag(image)
    proc = run_preflight("--stack", "prod", "--json", "--host", "local://", "--disk-path", str(tmp_path),
                         "--disk-gb", "0.01", env=fake_nvidia_smi(tmp_path))
    got = results(proc)
    needed = f"CUDA {gpu.fmt(cuda)} needs driver >= {gpu.min_driver_for(cuda, wsl=False)}"
    assert needed in got["nvidia driver"]["detail"]
    assert f"[{image} (tag)]" in got["nvidia driver"]["detail"]
    assert f"with {settings.engine.spec.quantization} needs" in got["cuda capability"]["detail"]
    ports = [settings.edge.http_port, settings.edge.https_port, settings.edge.ops_port]
    assert ", ".join(map(str, ports)) in got["host ports free"]["detail"]


def test_unreachable_ssh_host_is_one_clear_failure():
    proc = run_preflight("--host", "ssh://nobody@127.0.0.1:1", "--json")
    got = results(proc)
    assert list(got) == ["host reachable"]
    assert got["host reachable"]["status"] == "FAIL"
    detail = got["host reachable"]["detail"]
    assert "ssh://nobody@127.0.0.1:1" in detail
    assert "Connection refused" in detail and "CommandResult(" not in detail  # ssh's own words
    assert proc.returncode == 1


def test_bad_arguments_are_a_usage_error():
    proc = run_preflight("--ports", "80,https")
    assert proc.returncode == 2
    assert "--ports: '80,https' is not a comma-separated list of numbers" in proc.stderr
    unknown = run_preflight("--stack", "staging")
    assert unknown.returncode == 2 and "invalid choice: 'staging'" in unknown.stderr


def test_a_stack_wanting_more_gpus_than_the_host_has_fails(tmp_path):
    """prod with two replicas on GPUs 0 and 1; the (injected) host has only GPU 0."""
    proc = run_preflight("--stack", "prod", "--json", "--cuda-version", "12.2", "--gpu-ids", "0,1",
                         *valid_here(tmp_path), env=fake_nvidia_smi(tmp_path))
    got = results(proc)
    assert got["nvidia driver"]["status"] == "PASS", got["nvidia driver"]
    check = got["cuda capability"]
    assert check["status"] == "FAIL"
    assert "the stack runs its engines on GPUs 0, 1; this host has GPU(s) 0" in check["detail"]
