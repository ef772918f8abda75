# The two commands a newcomer needs: `make demo` and `make test`. Each builds the virtual
# environment from uv.lock first when it is missing or older than the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.synced-$(UV_VERSION)
DEMO_PATH ?= demo-workspace
DEMO_ROUNDS ?= 5

.PHONY: demo test test-slow test-all bench bench-labels bench-simulate lint clean venv

$(STAMP): uv.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv sync --frozen --compile-bytecode --python $(BIN)/python
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/alloop demo --rounds $(DEMO_ROUNDS) --path $(DEMO_PATH) --force

test: $(STAMP)
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

test-all: $(STAMP)
	$(BIN)/pytest -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/python bench/round.py

# label efficiency against random and scikit-activeml on ../shared/data (45 min on 2 cores)
bench-labels: $(STAMP)
	$(BIN)/python bench/label_efficiency.py

# issue 5's letter campaign timed: 30 rounds of 50, 10 seeds, two strategies
bench-simulate: $(STAMP)
	$(BIN)/python bench/simulate_speed.py

lint: $(STAMP)
	$(BIN)/ruff check flows tasks tests bench
	$(BIN)/ruff format --check flows tasks tests bench

clean:
	rm -rf $(VENV) $(DEMO_PATH) .pytest_cache
