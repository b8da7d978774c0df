"""The llm-node Pulumi program: what is deployed on a Docker host (see stacks/__main__.py).

Pulumi runs this directory as the program (``runpy.run_path(".")`` in ``stacks/``), which puts
it first on sys.path: its modules traefik.py, prometheus.py, grafana.py, redis.py and the
kubernetes/ package would then shadow the project's packages and the libraries of the same
names. The project's packages are installed (pyproject.toml), so nothing needs this directory
on the path: importing ``stacks`` takes it off, before any module of the program is loaded.
"""

import sys
from pathlib import Path

_PROGRAM_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _PROGRAM_DIR]
