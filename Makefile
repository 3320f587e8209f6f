# Two entry points for a fresh machine: `make demo` (train the default model) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench

# CPU torch 2.13.0 first: an unpinned torch would pull a multi-GB CUDA build. The distribution was renamed
# largo -> largo-train: an old editable install of this checkout would shadow the package, so it goes.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) show largo 2>/dev/null | grep -qx "Editable project location: $(CURDIR)" && $(PIP) uninstall -y -q largo || true
	$(PIP) install -q -e ".[data,test]"

demo: install
	largo plan text_tiny
	largo train text_tiny --overwrite
	largo generate runs/text_tiny --prompt "def " --max-new-tokens 120

test: install
	$(PYTHON) -m pytest -rs --durations=25

# Peers (transformers, accelerate, Lightning) come from the bench extra; torch is pinned to the installed
# version in the same pip call so no peer can swap it. Extra options: make bench BENCH_ARGS="--quick".
BENCH_ARGS ?=
bench: install
	$(PIP) install -q -e ".[bench]" "torch==$$($(PYTHON) -c 'import torch; print(torch.__version__.split("+")[0])')"
	$(PYTHON) benchmarks/run.py $(BENCH_ARGS)
