"""One home for running the node as local processes (scripts/devnode): the same paths for
the shell scripts and Python, the dev stack's engine settings for the tests, and no
imports from tests/ in what users run."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
from pathlib import Path

import pytest

from scripts.devnode import paths
from scripts.devnode.engine import local_engine_spec
from stacks.config import load_stack_specs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["LLM_NODE_CACHE", "ENGINE_VENV", "QUANTIZE_VENV", "TINY_MODEL_DIR"])
def test_the_shell_scripts_and_python_agree_on_the_paths(name, tmp_path):
    python = {"LLM_NODE_CACHE": paths.CACHE, "ENGINE_VENV": paths.ENGINE_VENV,
              "QUANTIZE_VENV": paths.QUANTIZE_VENV, "TINY_MODEL_DIR": paths.TINY_MODEL_DIR}
    env = {"HOME": str(Path.home()), "PATH": "/usr/bin:/bin"}
    shell = subprocess.run(["bash", "-c", f'source scripts/lib/env.sh; printf %s "${name}"'], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert Path(shell) == python[name]


def test_the_test_engine_runs_the_dev_stacks_engine_settings():
    dev, _ = load_stack_specs("dev")
    local = local_engine_spec(8123, lora_modules={"tiny-lora": "/adapters/tiny-lora"})
    location = {"model", "host", "port", "lora_modules"}
    differing = {f.name for f in dataclasses.fields(dev) if getattr(dev, f.name) != getattr(local, f.name)}
    assert differing <= location, f"the local engine restates dev settings: {differing - location}"
    assert local.max_num_seqs == dev.max_num_seqs


def test_nothing_users_run_imports_the_test_suite():
    offenders = []
    for path in (ROOT / "scripts").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert offenders == []
