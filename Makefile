# The two commands of the README:  `make serve`  and  `make test`.
# Each creates .venv on first use from this project's own files.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras to install: dev (CI, developers: training + tests) or postgres (the serving image).
EXTRAS ?= dev
STAMP  := $(VENV)/.installed
# The dev install (CI, developers) takes the exact versions of requirements-dev.lock;
# other extras (the serving image) resolve from pyproject.toml's ranges.
LOCK   := requirements-dev.lock
PIN    := $(if $(filter dev,$(EXTRAS)),-c $(LOCK),)
# ByteTrack's packages, without their opencv-python (docs/inputs.md#linkers).
TRACKING := requirements-tracking.txt
COMMA  := ,

.PHONY: serve test test-runtimes lint venv demo clean lock screenshots

$(STAMP): pyproject.toml $(LOCK) $(TRACKING)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIN) -e '.[$(EXTRAS)]'
	$(if $(filter dev tracking,$(subst $(COMMA), ,$(EXTRAS))),$(BIN)/python -m pip install --quiet --no-deps -r $(TRACKING))
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
	$(MAKE) test-runtimes

# The runtime-dependent tests again under each runtime/precision and as each CPU kind
# (faked flags), so a failure that depends on the machine shows up on any CI machine
# (tests/runtime_matrix.sh, docs/runtimes.md#one-identity-per-model).
test-runtimes: $(STAMP)
	PYTHON=$(BIN)/python bash tests/runtime_matrix.sh

# The viewer's screenshots in docs/img/ (and its browser timings), on the demo home
# (`make serve` builds it; HOME_DIR=... for another); needs the OS Chromium.
HOME_DIR ?= var
screenshots: $(STAMP)
	$(BIN)/polypindex demo --no-serve --home $(HOME_DIR)
	$(BIN)/python -m polypindex.benchmarks.screenshots --home $(HOME_DIR) --out docs/img

# Regenerate requirements-dev.lock from a fresh venv resolved from pyproject.toml alone.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	.lock-venv/bin/python -m pip install --quiet --no-deps -r $(TRACKING)
	{ echo "# pip constraints for 'make venv' with EXTRAS=dev; regenerate with 'make lock'."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf var

# PolypIndex beside Chroma (benchmarks/peers/): Chroma in its own venv, never in .venv;
# JSON to benchmarks/results/peers.json, table in docs/results.md (PEERS_ARGS=... to pass options).
PEERS_VENV ?= var/bench/peers-venv
.PHONY: bench-peers
bench-peers: $(STAMP)
	test -x $(PEERS_VENV)/bin/chroma || { $(PYTHON) -m venv $(PEERS_VENV) && \
	  $(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip && \
	  $(PEERS_VENV)/bin/python -m pip install --quiet 'chromadb==1.5.9'; }
	$(BIN)/python -m polypindex.benchmarks.peers --chroma $(PEERS_VENV)/bin/chroma $(PEERS_ARGS)
