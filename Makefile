# The two set-up commands (see README): `make dev` and `make test`; `make unit` is the fast inner loop.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: bootstrap dev dev-stop test unit bench
bootstrap:
	scripts/bootstrap --quantize

dev: bootstrap
	.venv/bin/python scripts/dev.py start

dev-stop:
	.venv/bin/python scripts/dev.py stop

test: bootstrap
	.venv/bin/pytest $(PYTEST_ARGS)

# The gateway's pure parts only (tests/unit): no services, no network, a few seconds.
unit: bootstrap
	.venv/bin/pytest -q tests/unit $(PYTEST_ARGS)

bench: bootstrap
	scripts/bench/run-all
