# The two commands a newcomer needs: `make up` (install, then run the whole gateway with the
# built-in mock provider) and `make test` (install, then pass the tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: up serve test lint format install clean bench bench-smoke soak

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

up: $(STAMP)  ## the gateway on http://127.0.0.1:8080 with every provider routed to the mock
	$(BIN)/aigw up --demo

serve: $(STAMP)  ## the gateway with the real providers of config/gateway.yaml
	$(BIN)/aigw up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)  ## the benchmark: gateway vs plain Envoy, LiteLLM, Portkey (needs wrk; 15-30 min)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-smoke: $(STAMP)  ## ~15 s of the benchmark (envoy, floor, gateway), to check that it runs
	$(BIN)/python -m bench --smoke

soak: $(STAMP)  ## extproc's memory over 10 minutes of load (needs wrk)
	$(BIN)/python -m bench soak

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .aigw .pytest_cache .ruff_cache *.egg-info
