# The two commands of the README:  `make serve`  and  `make test`.
# Each creates .venv on first use from this project's own files.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras to install: dev (CI, developers: training + tests) or postgres (the serving image).
EXTRAS ?= dev
STAMP  := $(VENV)/.installed

.PHONY: serve test lint venv demo clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

# Synthetic procedures -> demo model (built once) -> index -> API on 127.0.0.1:8000.
serve: $(STAMP)
	$(BIN)/polypindex demo --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy polypindex
	$(BIN)/hadolint Dockerfile

test: $(STAMP)
	$(MAKE) lint
	$(BIN)/python -m pytest

clean:
	rm -rf var
