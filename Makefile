# ganforge developer entry points. Everything runs inside a virtual environment ($(VENV)).
#   make demo   - set up, then train the demo GAN on the embedded CIFAR-10 subset (CPU, minutes)
#   make test   - set up, then lint (ruff, import contracts) and run the whole test suite
# GPU machines: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.ganforge-installed

.PHONY: install demo test lint format clean lock

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned: a bare `torch` requirement may pull a multi-GB CUDA build on CPU hosts
	$(BIN)/pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# constraints.txt pins every other package to the set CI last passed with (`make lock`)
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ganforge demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/lint_imports.py

# pytest exit code 5 (no tests collected) fails the target like any other failure.
test: lint
	@$(BIN)/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (broken setup)" >&2; fi; \
	exit $$rc

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin constraints.txt to what the venv holds now (after changing pyproject's dependencies).
# torch and triton stay out: the CPU and CUDA builds differ, and TORCH_VERSION pins torch.
lock: $(STAMP)
	@echo "# Pinned versions of ganforge's dependencies (make lock); torch is pinned by TORCH_VERSION." > constraints.txt
	$(BIN)/pip freeze --exclude-editable | grep -v -E '^(torch|triton|nvidia-[a-z0-9-]+|pip|setuptools|wheel)==' >> constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
