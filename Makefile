# `make demo`: set up .venv, make the demo shards, train a tiny model on CPU, generate from it.
# `make test`: set up .venv with the dev extras, lint, run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev
DEMO_DATA := data/demo/manifest.json

.PHONY: demo test lint clean-demo

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Installs are pinned to launch/constraints.txt: the environment the tests ran in is the one the image ships.
$(BASE): requirements.txt setup.py launch/constraints.txt | $(PY)
	$(PIP) install -e . -c launch/constraints.txt
	touch $@

$(DEV): requirements.txt setup.py launch/constraints.txt | $(PY)
	$(PIP) install -e '.[dev,sagemaker]' -c launch/constraints.txt
	touch $(BASE) $@

$(DEMO_DATA): tools/make_demo_data.py | $(BASE)
	$(PY) tools/make_demo_data.py --out data/demo

demo: $(BASE) $(DEMO_DATA)
	$(VENV)/bin/open-vlm train --config configs/demo.yaml
	$(VENV)/bin/open-vlm generate --checkpoint runs/demo/tiny-paligemma --image data/demo/examples/*.jpg

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(DEV) lint
	$(PY) -m pytest -q

clean-demo:
	rm -rf data/demo runs/demo
