# ganforge developer entry points. Everything runs inside a virtual environment ($(VENV)).
#   make demo   - set up, then train the demo GAN on procedural shapes (CPU, minutes)
#   make test   - set up, then lint (ruff, import contracts) and run the test suite (CI)
#   make test-e2e - the e2e tier: the longest end-to-end scenarios, minutes each
#   make gpu-check - everything only a GPU shows (kernels, speed, train-step MFU), one call
#   make gpu-study - the whole quality study on one GPU, one call (bench/gpu_study.py)
# GPU machines: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.ganforge-installed

.PHONY: install demo test test-e2e lint format clean lock gpu-check gpu-wheels gpu-study \
  gpu-study-data

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

# The e2e tier (@pytest.mark.e2e): scenarios of minutes each that CI's time budget leaves out.
test-e2e: $(STAMP)
	@$(BIN)/pytest -m e2e; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-e2e: pytest collected no tests (broken setup)" >&2; fi; \
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

# GPU check (bench/gpu_check.py): needs only Python, torch and triton; no venv, no install.
# It uses the venv's Python when there is one, else python3. Writes <= 8 JSON files to OUT.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
GPU_WHEELS ?= build/gpu-wheels
GPU_PY ?= 3.12
OUT ?= bench/results/gpu-$(shell date -u +%Y-%m-%d)
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check --out $(OUT) --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)

# The study in one call on one GPU (bench/gpu_study.py): OUT/gpu-study.json and
# OUT/study-report.tar.gz. Needs the wheels (gpu-wheels) and the CIFAR-10 archive in build/
# (gpu-study-data), which travel with the checkout.
CIFAR_ARCHIVE ?= ../shared/datasets/cifar10-jpg.tar.gz
GPU_STUDY_ARGS ?=
gpu-study:
	$(GPU_PYTHON) -m bench.gpu_study --out $(OUT)-study --wheels $(GPU_WHEELS) \
	  --archive build/cifar10-jpg.tar.gz $(GPU_STUDY_ARGS)
gpu-study-data:
	mkdir -p build && cp -n $(CIFAR_ARCHIVE) build/cifar10-jpg.tar.gz

# The wheels the check installs offline where pydantic/PyYAML are missing (3.6 MB for CPython
# $(GPU_PY) on x86-64 Linux), at the versions constraints.txt pins. Run where there is network.
GPU_WHEEL_PKGS := pydantic pydantic_core annotated-types typing-inspection typing_extensions PyYAML \
  webdataset braceexpand
gpu-wheels:
	$(GPU_PYTHON) -m pip download --only-binary=:all: --no-deps --python-version $(GPU_PY) \
	  --platform manylinux2014_x86_64 -d $(GPU_WHEELS) \
	  $$(for p in $(GPU_WHEEL_PKGS); do grep -i "^$$p==" constraints.txt; done)
