# Thin wrappers around keel.py, which needs nothing but Python 3.11.
.PHONY: up test lint ci
up:
	python3 keel.py up
test:
	python3 keel.py test
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
ci:
	bash .ci/run
