# Two commands on a fresh machine:  make train   |   make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ./data
export DATA_DIR

.PHONY: train test install clean-logs tensorboard

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

## make train [ARGS="optimizer=sgd model.num_layers=4"]: train the default ViT (or with overrides)
train: install
	mkdir -p $(DATA_DIR)
	$(PY) train.py $(ARGS)

## make test [ARGS="-k attention"]: run the test suite on the real data in $(DATA_DIR)
test: install
	$(PY) -m pytest $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir logs

clean-logs:
	rm -rf logs
