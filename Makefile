# Chatlink tasks. `make help` lists them. Every target creates .venv and installs pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install lock run test test-fast bench bench-instructions bench-analytics ledger lint fmt migrate rollback api-key revoke-key rotate-secrets config replay-dead user

help: ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned requirements

# pip-compile with this machine's pip configuration switched off, so the lock names only the public index.
PIP_COMPILE = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
	/tmp/chatlink-piptools/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links

lock: ## re-pin requirements.txt / requirements-dev.txt (with hashes) from requirements.in / requirements-dev.in
	rm -rf /tmp/chatlink-piptools && $(PYTHON) -m venv /tmp/chatlink-piptools
	/tmp/chatlink-piptools/bin/pip install --quiet pip-tools==7.6.2
	$(PIP_COMPILE) -o requirements.txt requirements.in
	$(PIP_COMPILE) -o requirements-dev.txt requirements-dev.in

run: install ## serve on http://127.0.0.1:PORT (default 8000) under gunicorn (finds or starts PostgreSQL and Redis, migrates)
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

test: install ## run the test suite against real PostgreSQL and Redis (and gunicorn, and Chromium when installed)
	$(PY) -m pytest -m "not chaos"

test-fast: install ## the tests that need no live gunicorn and no browser
	$(PY) -m pytest -m "not live and not chaos"

bench: install ## benchmark redirects and link creation with wrk (own database and Redis prefix; ~1 min)
	$(PY) -m tests.bench.run

bench-instructions: install ## instructions per cached redirect (callgrind), BEFORE=<revision> against this tree (~10 min)
	$(PY) -m tests.bench.instructions

bench-analytics: install ## analytics at 10 million clicks: stats, link list and CSV export through gunicorn (~10 min)
	$(PY) -m tests.bench.analytics

ledger: install ## the click ledger: every X-Click-Id a client got is stored once, through restarts
	$(PY) -m pytest -q -s tests/test_ledger.py

.PHONY: chaos
chaos: install ## every fault of issue 10 under load through gunicorn; the ledger and /health per fault (~3 min)
	$(PY) -m pytest -q -s -rxX -m chaos tests/chaos

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

fmt: install ## ruff: fix what it can and format
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

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

rotate-secrets: install ## re-encrypt stored webhook secrets and WhatsApp tokens with the first key of SECRETS_KEY
	@$(PY) -m service.cli rotate-secrets

config: install ## print the effective settings (secrets masked) and where each came from (default/profile/environment)
	@$(PY) -m service.cli config

replay-dead: install ## move dead-lettered clicks (stream <KEY_PREFIX>clicks:dead, SPOOL_DIR/dead) back onto the click stream
	$(PY) -m service.cli replay-dead

user: install ## add EMAIL=<address> to ACCOUNT=<name> (owner; ROLE=member); pipe the password on stdin or get a set-password link
	@test -n "$(EMAIL)" -a -n "$(ACCOUNT)" || { echo "usage: make user EMAIL=<address> ACCOUNT=<name> [ROLE=member] [< password file]" >&2; exit 2; }
	@$(PY) -m service.cli user "$(EMAIL)" "$(ACCOUNT)" --role "$(or $(ROLE),owner)"
