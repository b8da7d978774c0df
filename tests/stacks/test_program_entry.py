"""The program starts the way Pulumi starts it, in a fresh interpreter.

The language host (pulumi-language-python-exec) changes into stacks/ and calls
``runpy.run_path(".")``, which puts stacks/ first on sys.path, where stacks/traefik.py,
prometheus.py, grafana.py ... would shadow the project's packages of the same names. The
in-process tests (mock_runtime) cannot see that: their interpreter has imported everything
already. Here a new one does what the language host does, with mocks for the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stacks.config import SECRET_KEYS, STACKS_DIR, read_stack_values
from tests.stacks.mock_runtime import engine_config

LANGUAGE_HOST = """
import json, os, runpy, sys
import pulumi

class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return [args.name + "-id", dict(args.inputs)]

    def call(self, args):
        return {}

pulumi.runtime.set_all_config(json.loads(os.environ["PULUMI_CONFIG"]), [])
pulumi.runtime.set_mocks(Mocks(), project="llm-node", stack=sys.argv[1], preview=True)
runpy.run_path(".", run_name="__main__")
print("imported:", sys.modules["traefik"].__file__, sys.modules["prometheus"].__file__)
"""


@pytest.mark.parametrize("stack", ["dev", "k8s-dev"])
def test_program_runs_as_the_language_host_runs_it(stack):
    values = {k: v for k, v in read_stack_values(stack).items() if k not in SECRET_KEYS}
    config, _ = engine_config(values, {})
    env = dict(os.environ, PULUMI_CONFIG=json.dumps(config))
    result = subprocess.run([sys.executable, "-c", LANGUAGE_HOST, stack], cwd=STACKS_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    root = str(STACKS_DIR.parent)
    assert f"imported: {root}/traefik/__init__.py {root}/prometheus/__init__.py" in result.stdout
