# offrl: every target sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
# This machine's CPU wheel; override for another build, e.g. TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# Inside the repository the dataset store is datasets/ (cards tracked, HDF5 ignored) and the leaderboard is
# evaluation/leaderboard.csv; an installed offrl defaults to ~/.offrl (offrl/shipped.py).
export OFFRL_DATASETS_PATH ?= $(CURDIR)/datasets
export OFFRL_LEADERBOARD ?= $(CURDIR)/evaluation/leaderboard.csv
ENV ?= HalfCheetah-v5
STEPS ?= 300000
SEED ?= 0
# `make collect`: every tier at a size that collects in a few minutes on 2 cores
TRANSITIONS ?= 200000
VERSION ?= 1
# `make train-cql`: the main job. HalfCheetah medium with the CPU-sized config (its time: evaluation/RESULTS.md).
DATASET ?= halfcheetah/medium-v1
CONFIG ?= fast
CQL_STEPS ?= 6000

.PHONY: install test wheel-check test-slow test-faults lint pretrain ship-policies collect datasets train-cql finetune leaderboard bench bench-d3rlpy clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

# The built wheel in a fresh venv outside the repository: README's Python example and a tiny train-cql.
wheel-check: install
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash .ci/wheel_check.sh

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# The kill matrix: every fault point of offrl/faults.py, SIGKILL then the same command again; concurrent writers.
test-faults: install
	$(BIN)/python -m pytest -q -m faults tests/test_faults.py

lint: install
	$(BIN)/ruff check offrl tests

pretrain: install
	$(BIN)/offrl pretrain --env $(ENV) --steps $(STEPS) --seed $(SEED)

ship-policies: install
	$(BIN)/offrl ship-policies --run runs/pretrain/$(ENV)-seed$(SEED)

collect: install
	$(BIN)/offrl collect --env $(ENV) --tier all --transitions $(TRANSITIONS) --seed $(SEED) --version $(VERSION)
	short=$$(echo $(ENV) | sed 's/-v[0-9]*$$//' | tr A-Z a-z); \
	$(BIN)/offrl datasets verify $$(cd $(OFFRL_DATASETS_PATH) && ls $$short/*-v$(VERSION).json | sed 's/\.json$$//')

datasets: install
	$(BIN)/offrl datasets list

train-cql: install
	$(BIN)/offrl train-cql --dataset $(DATASET) --config $(CONFIG) --steps $(CQL_STEPS) --seed $(SEED) --eval-every 1000 \
		--collect-missing --out runs/cql/$(subst /,-,$(DATASET))-$(CONFIG)-seed$(SEED)-$$(date +%Y%m%d-%H%M%S)

# `make finetune`: a short fine-tune of the newest `make train-cql` run (override FROM=RUN_DIR)
ONLINE_STEPS ?= 5000
FROM ?= $$(ls -1dt runs/cql/$(subst /,-,$(DATASET))-$(CONFIG)-seed$(SEED)-* 2>/dev/null | head -n 1)
finetune: install
	@from=$(FROM); if [ -z "$$from" ]; then echo "make finetune: no make train-cql run under runs/cql/; run make train-cql first or pass FROM=RUN_DIR" >&2; exit 2; fi; \
	$(BIN)/offrl finetune --from "$$from" --online-steps $(ONLINE_STEPS) --offline-ratio 0.5 --eval-every 1000

leaderboard: install
	$(BIN)/offrl leaderboard

BENCH_SECONDS ?= 20
BENCH_ROUNDS ?= 3
bench: install
	$(BIN)/python -m benchmarks.bench --seconds $(BENCH_SECONDS)

# d3rlpy pins gymnasium 1.0.0, so it gets its own venv; both benchmarks run in one sitting, alternated
# BENCH_ROUNDS times (rows keep the median; every round in evaluation/bench_rounds.csv).
.venv-d3rlpy/.installed:
	$(PYTHON) -m venv .venv-d3rlpy
	.venv-d3rlpy/bin/pip install --quiet --upgrade pip
	.venv-d3rlpy/bin/pip install --quiet $(TORCH_SPEC)
	.venv-d3rlpy/bin/pip install --quiet d3rlpy==2.8.1 pandas
	touch $@

bench-d3rlpy: install .venv-d3rlpy/.installed
	$(BIN)/python -m benchmarks.bench --seconds $(BENCH_SECONDS) --against-d3rlpy .venv-d3rlpy/bin/python --rounds $(BENCH_ROUNDS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
