# The two set-up commands (see README): `make dev` and `make test`.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: bootstrap dev dev-stop test bench
bootstrap:
	scripts/bootstrap --quantize

dev: bootstrap
	.venv/bin/python scripts/dev.py start

dev-stop:
	.venv/bin/python scripts/dev.py stop

test: bootstrap
	.venv/bin/pytest $(PYTEST_ARGS)

bench: bootstrap
	scripts/bench/run-all
