# Two commands on a fresh machine:  make train   |   make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ./data
export DATA_DIR

.PHONY: train test test-fast lint format install clean-logs tensorboard

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

## make train [ARGS="optimizer=sgd model.num_layers=4"]: train the default ViT (or with overrides)
train: install
	mkdir -p $(DATA_DIR)
	@echo "make train: the study's ViT for trainer.max_epochs epochs (10 unless ARGS say otherwise: over an hour on a CPU)."
	@echo "  train.py says below how many epochs, and after its first steps how long they take on this machine."
	@echo "  A first result in about a minute: $(PY) train.py debug=fast"
	$(PY) train.py $(ARGS)

## make test [ARGS="-k attention"]: run the test suite on the real data in $(DATA_DIR)
test: install
	$(PY) -m pytest $(ARGS)

## make test-fast: the unit tests only (no train.py subprocess: those are marked slow), about 2 minutes
test-fast: install
	$(PY) -m pytest -m "not slow" $(ARGS)

## make lint: ruff lint + format check (what CI runs before the tests); make format fixes what it can
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

tensorboard: install
	$(VENV)/bin/tensorboard --logdir logs

clean-logs:
	rm -rf logs

## make bench: the paired CPU benchmarks of bench/ (tens of minutes on 2 cores); JSON lines to $(BENCH_OUT)
BENCH_OUT ?= logs/bench/results.jsonl
.PHONY: bench gpu-prep
bench: install
	$(PY) bench/cpu_step.py --repeats 5 --out $(BENCH_OUT)
	$(PY) bench/cpu_threads.py --repeats 4 --steps 8 --out $(BENCH_OUT)
	$(PY) bench/attention.py --out $(BENCH_OUT)
	$(PY) bench/vit_vs_timm.py --out $(BENCH_OUT)
	$(PY) bench/trainer_overhead.py --case vit --out $(BENCH_OUT)
	$(PY) bench/trainer_overhead.py --case vit --tiny --repeats 40 --warmup 5 --rounds 6 --threads 1 --out $(BENCH_OUT)
	$(PY) bench/startup.py --out $(BENCH_OUT)
	$(PY) bench/trainer_overhead.py --case lstm --repeats 6 --out $(BENCH_OUT)
	$(PY) bench/data_throughput.py --out $(BENCH_OUT)
	$(PY) bench/memory.py --out $(BENCH_OUT)
	$(PY) bench/inspection.py --layers 2 --repeats 5 --out $(BENCH_OUT)
	$(PY) bench/side_by_side.py --steps 10 --repeats 3 --out $(BENCH_OUT)
	$(PY) bench/optimizers.py --workload vit --repeats 3 --out $(BENCH_OUT)
	$(PY) bench/optimizers.py --workload lstm --repeats 3 --out $(BENCH_OUT)

## make gpu-prep: what bench/gpu_check.sh needs on a GPU machine without network (.gpu/, .whl/)
SHARED ?= ../shared
gpu-prep:
	mkdir -p .gpu .whl
	install -m 0644 $(SHARED)/data/cifar10-jpeg.tar.gz $(SHARED)/tools/cifar10_jpeg_to_batches.py .gpu/
	rm -rf .gpu/wikitext-2 .gpu/gpt2-tokenizer && cp -r $(SHARED)/data/wikitext-2 $(SHARED)/data/gpt2-tokenizer .gpu/
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl hydra-core==1.3.2 omegaconf==2.3.0 hydra-joblib-launcher==1.2.0 joblib==1.4.2
	$(PYTHON) -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only on PyPI
