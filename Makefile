# The two commands a newcomer needs: `make demo` and `make test`. Each builds the virtual
# environment from uv.lock first when it is missing or older than the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.synced-$(UV_VERSION)
DEMO_PATH ?= demo-workspace
DEMO_ROUNDS ?= 5
# Bytecode is precompiled at install. Measured on 2 cores with uv's cache warm: the venv
# builds in 39 s with it, 6 s without; but then Python compiles on first import instead (the
# stack's imports: 16.3 s against 8.5 s precompiled), and where PYTHONDONTWRITEBYTECODE is set
# (common in CI and container images, and in our sessions here) it compiles on every start of
# every process, 8 s each time: a test run starts dozens. 33 s once is the cheaper bet.
UV_SYNC_FLAGS ?= --compile-bytecode
# the first build downloads about 225 packages (900 MB) unless uv's cache has them
FIRST_BUILD := about 1 minute with a warm cache, a few more to download

.PHONY: demo test test-fast test-slow test-all bench bench-labels bench-simulate lint clean venv labelstudio

$(STAMP): uv.lock pyproject.toml
	@set -e; started=$$(date +%s); \
	if [ -x $(BIN)/python ]; then \
		echo "updating $(VENV) from uv.lock"; \
	else \
		echo "building $(VENV) from uv.lock (first time: $(FIRST_BUILD))"; \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
			echo "alloop needs Python 3.11: '$(PYTHON)' is not (try: make $(MAKECMDGOALS) PYTHON=python3.11)" >&2; \
			exit 1; }; \
		echo "  creating $(VENV) with $$($(PYTHON) --version)"; \
		$(PYTHON) -m venv $(VENV); \
	fi; \
	if [ ! -x $(BIN)/uv ]; then \
		echo "  installing uv $(UV_VERSION)"; \
		$(BIN)/python -m pip install -qq --disable-pip-version-check "uv==$(UV_VERSION)"; \
	fi; \
	echo "  installing the locked packages$(if $(findstring compile,$(UV_SYNC_FLAGS)), and compiling their bytecode,) (uv sync --frozen)"; \
	UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --frozen --quiet $(UV_SYNC_FLAGS) --python $(BIN)/python; \
	touch $@; \
	echo "  $(VENV) ready in $$(( $$(date +%s) - started )) s"

venv: $(STAMP)

# A real Label Studio for the tests and benchmarks that talk to one (tests/labelstudio_server.py):
# its own virtual environment, since it pins its own Django stack and must never enter uv.lock,
# and a data folder migrated once (`label-studio version` applies the migrations and exits,
# offline) that every server start copies: healthy in seconds instead of 30 s of migrations.
# XDG_CONFIG_HOME: it writes a user_id file there, which stays out of the home folder.
LS_VERSION := 1.23.2
LS_DIR := .labelstudio
LS_STAMP := $(LS_DIR)/.built-$(LS_VERSION)
LS_OFFLINE_ENV := SENTRY_DSN= FRONTEND_SENTRY_DSN= LATEST_VERSION_CHECK=false \
	COLLECT_ANALYTICS=false CONVERTER_DOWNLOAD_RESOURCES=false

$(LS_STAMP): | $(STAMP)
	@set -e; started=$$(date +%s); \
	rm -rf $(LS_DIR)/venv $(LS_DIR)/template $(LS_DIR)/template.partial; \
	echo "building $(LS_DIR)/venv with label-studio==$(LS_VERSION) (uv pip install, bytecode compiled)"; \
	$(BIN)/uv venv --quiet --python $(BIN)/python $(LS_DIR)/venv; \
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(LS_DIR)/venv/bin/python \
		"label-studio==$(LS_VERSION)"; \
	installed=$$(date +%s); \
	echo "  migrating the template data folder $(LS_DIR)/template (log: $(LS_DIR)/migrate.log)"; \
	mkdir -p $(LS_DIR)/template.partial; \
	if ! env $(LS_OFFLINE_ENV) LABEL_STUDIO_BASE_DATA_DIR="$(abspath $(LS_DIR))/template.partial" \
			XDG_CONFIG_HOME="$(abspath $(LS_DIR))/config" $(LS_DIR)/venv/bin/label-studio version >$(LS_DIR)/migrate.log 2>&1; then \
		tail -n 20 $(LS_DIR)/migrate.log >&2; exit 1; \
	fi; \
	mv $(LS_DIR)/template.partial $(LS_DIR)/template; \
	touch $@; \
	echo "  $(LS_DIR) ready in $$(( $$(date +%s) - started )) s" \
		"(install $$(( installed - started )) s, migrations $$(( $$(date +%s) - installed )) s)"

labelstudio: $(LS_STAMP)

demo: $(STAMP)
	$(BIN)/alloop demo --rounds $(DEMO_ROUNDS) --path $(DEMO_PATH) --force

# CI's command: every test not marked slow (the lanes: unit, contract, property, flow); the
# Label Studio tests need its server, built once here (about a minute) like the venv
test: $(STAMP) $(LS_STAMP)
	$(BIN)/pytest

# an engineer's own loop: unit, contract and property tests; no workspace, round or command
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not flow"

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

test-all: $(STAMP) $(LS_STAMP)
	$(BIN)/pytest -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/python bench/round.py

# label efficiency against random and scikit-activeml on ../shared/data (45 min on 2 cores);
# results in a new temporary folder. To update the committed table:
#   make bench-labels BENCH_ARGS="--report bench/label_efficiency.md"
# (more: --jobs 1, -S section.key=value, --datasets a,b; see the script's --help)
BENCH_ARGS ?=
bench-labels: $(STAMP)
	$(BIN)/python bench/label_efficiency.py $(BENCH_ARGS)

# issue 5's letter campaign timed: 30 rounds of 50, 10 seeds, two strategies
bench-simulate: $(STAMP)
	$(BIN)/python bench/simulate_speed.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check flows tasks tests bench
	$(BIN)/ruff format --check flows tasks tests bench

clean:
	rm -rf $(VENV) $(DEMO_PATH) .pytest_cache
