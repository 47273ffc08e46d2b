# The two commands: `make run` starts the whole service, `make test` runs every check.
# Both create or reuse .venv and install the pinned dependencies themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit install bench clean flower

$(STAMP): pyproject.toml constraints.txt scripts/ensure-system-libs scripts/ensure-chromium
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@sh scripts/ensure-system-libs
	@sh scripts/ensure-chromium
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m devstack.run

# Flower (Celery's monitor) on the broker the service uses: REDIS_URL if set, else the one
# the running `make run` wrote to .devstack/redis-url, else the service's default.
FLOWER_ADDRESS ?= 127.0.0.1
FLOWER_PORT ?= 5555
flower: install
	@broker="$${REDIS_URL:-$$(cat .devstack/redis-url 2>/dev/null)}"; \
	broker="$${broker:-redis://127.0.0.1:6379/0}"; \
	echo "flower: http://$(FLOWER_ADDRESS):$(FLOWER_PORT), broker $$broker" \
		| sed -E 's#//[^@/]*@#//***@#'; \
	REDIS_URL="$$broker" exec $(VENV)/bin/celery -A workers flower \
		--address=$(FLOWER_ADDRESS) --port=$(FLOWER_PORT)

test: install lint typecheck
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

typecheck: install
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict deploy/healthcheck.py deploy/ecs/render.py

unit: install
	$(VENV)/bin/pytest tests/unit

bench: install
	@set -e; for script in bench/[!_]*.py; do \
		[ -e "$$script" ] || { echo "no benchmarks yet"; break; }; \
		echo "== $$script"; $(PY) "$$script"; \
	done

clean:
	rm -rf .devstack .mypy_cache .ruff_cache .pytest_cache
