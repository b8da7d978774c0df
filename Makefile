# The two set-up commands (see README): `make dev` and `make test`; `make unit` is the fast inner loop.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: bootstrap dev dev-stop lint test unit bench
bootstrap:
	scripts/bootstrap --quantize

dev: bootstrap
	.venv/bin/python scripts/dev.py start

dev-stop:
	.venv/bin/python scripts/dev.py stop

# The static checks (ruff, mypy, shellcheck, hadolint, actionlint): scripts/lint.py. `make test`
# runs them too, as tests/test_static_checks.py.
lint: bootstrap
	.venv/bin/python -m scripts.lint

test: bootstrap
	.venv/bin/pytest $(PYTEST_ARGS)

# The gateway's pure parts only (tests/unit): no services, no network, a few seconds.
unit: bootstrap
	.venv/bin/pytest -q tests/unit $(PYTEST_ARGS)

bench: bootstrap
	scripts/bench/run-all
