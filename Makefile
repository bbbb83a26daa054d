# The two commands: `make up` runs the whole platform; `make test` runs the tests.
# Both build .venv from uv.lock first, installing uv itself into .tools/ when it is missing.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
PYTEST_ARGS ?=
# Two workers: most tests wait on brokers and child processes, so two share the 2 cores well.
PYTEST_WORKERS ?= 2

.PHONY: up test venv chromium clean lint

up: venv
	$(VENV)/bin/sealguard up

test: venv chromium
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The relay's native data plane (relay/server/_plane.c, _uring.h) is built beside its source with gcc; it is
# rebuilt only when a source is newer. Without it the relay runs its asyncio data plane.
venv: $(VENV)/.synced
	@$(VENV)/bin/python relay/server/build_plane.py >/dev/null

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-groups
	touch $@

# Browser tests need Debian's Chromium; they fail (not skip) without it.
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing chromium from Debian (browser tests)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .tools data/state .pytest_cache
