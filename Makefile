# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	command -v dot >/dev/null || (apt-get update -qq && apt-get install -y -qq graphviz) || \
		echo "warning: Graphviz not installed: convzoo graph can only write .dot files"
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: install demo test test-all gpu-check
install: $(STAMP)

# Train the fast recipe's model on the embedded CIFAR-10 subset into runs/demo (replacing an earlier demo),
# evaluate it on its validation split, and print the results table.
demo: $(STAMP)
	$(BIN)/convzoo train --recipe fast --out runs/demo --overwrite
	$(BIN)/convzoo eval runs/demo --checkpoint last
	$(BIN)/convzoo compare runs/demo --out runs/demo/compare.png

# A failed test is run once more (pytest-rerunfailures; the summary counts reruns, and it also reruns a
# test whose xdist worker crashed). Workers used to die at random when torch's SIGCHLD handler, still
# holding the pids of DataLoader workers a test had killed, raised in a later test (fixed in StreamLoader).
test: $(STAMP)
	$(BIN)/lint-imports
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q -n 2 --reruns 1 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/lint-imports
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q -n 2 -m '' --reruns 1 $(PYTEST_ARGS)

# On a machine with a CUDA GPU and no network: the CUDA tests, the GPU benchmarks and training runs, on the
# torch installed there (no venv); results in runs/gpu-check.
gpu-check:
	bash scripts/gpu_check.sh runs/gpu-check
