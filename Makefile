# Chatlink tasks. `make help` lists them. Every target creates .venv and installs pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install run test bench ledger lint migrate rollback api-key revoke-key

help: ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned requirements

run: install ## serve on http://127.0.0.1:PORT (default 8000) under gunicorn (finds or starts PostgreSQL and Redis, migrates)
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

test: install ## run the test suite against real PostgreSQL and Redis
	$(PY) -m pytest

bench: install ## benchmark redirects and link creation with wrk (own database and Redis prefix; ~1 min)
	$(PY) -m tests.bench.run

ledger: install ## the click ledger: every X-Click-Id a client got is stored once, through restarts
	$(PY) -m pytest -q -s tests/test_ledger.py

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

migrate: install ## apply pending migrations
	$(PY) -m service.cli migrate

rollback: install ## revert the latest migration
	$(PY) -m service.cli rollback

api-key: install ## print a new API key for ACCOUNT=<name> (creates the account)
	@test -n "$(ACCOUNT)" || { echo "usage: make api-key ACCOUNT=<name>" >&2; exit 2; }
	@$(PY) -m service.cli api-key "$(ACCOUNT)"

revoke-key: install ## revoke the key with KEY_PREFIX=<public id or key>
	@test -n "$(KEY_PREFIX)" || { echo "usage: make revoke-key KEY_PREFIX=<prefix>" >&2; exit 2; }
	@$(PY) -m service.cli revoke-key "$(KEY_PREFIX)"
