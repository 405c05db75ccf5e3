# Two commands a newcomer needs: `make demo` and `make test`. Each sets up .venv on its own.
SHELL := /bin/bash
PYTHON ?= python3
# PyTorch is installed first and pinned, so pip never pulls a multi-GB CUDA build by accident.
# GPU users: make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_outputs

.PHONY: demo test venv export check-export check-clean lab docs docs-exec readme clean bench

# Installed without byte-compiling: pip would compile all ~190 packages (about 90 of the setup's 150 s), most of which
# are never imported. Python compiles each module on its first import instead and keeps the bytecode, so these
# targets never inherit PYTHONDONTWRITEBYTECODE (set in some containers): with it, every fresh process would compile
# torch again from source (measured: the test suite 709 s instead of 573 s).
unexport PYTHONDONTWRITEBYTECODE
PIP_INSTALL := $(BIN)/python -m pip install -q --no-compile

$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v 'WARNING: Location' || true
	$(PIP_INSTALL) $(TORCH) 2>&1 | grep -v 'WARNING: Location' ; test $${PIPESTATUS[0]} -eq 0
	$(PIP_INSTALL) $(TORCH) -e '.[dev,ptychodus,onnx]' 2>&1 | grep -v 'WARNING: Location' ; test $${PIPESTATUS[0]} -eq 0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ptycho_torch_nb.demo --output_dir $(OUT) --overwrite

export: $(STAMP)
	$(BIN)/nbdev_export

# The package is generated from the notebooks: fail if a fresh export differs from what git holds.
check-export: $(STAMP)
	$(BIN)/nbdev_export
	@git diff --exit-code --stat -- ptycho_torch_nb || { echo "ptycho_torch_nb/ differs from the notebooks: run 'make export' and commit" >&2; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- ptycho_torch_nb); \
	  if [ -n "$$untracked" ]; then echo "exported but not committed: $$untracked" >&2; exit 1; fi

check-clean: $(STAMP)
	$(BIN)/nbdev_clean
	@git diff --exit-code --stat -- nbs || { echo "notebooks are not clean: run nbdev_clean and commit" >&2; exit 1; }

# Two pytest workers (pytest-xdist), one thread each: on two cores 400 s of tests instead of 600 s in one process.
TEST_WORKERS ?= 2
test: check-export check-clean
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest tests -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=15 -ra

# Every benchmark that runs here as it is (hours in all on two CPU cores; RESULTS.md records their runs).
# Not in the list: bench_ptychi.py (needs Pty-chi beside the venv, see its docstring) and gpu_check.py (`make gpu-check`).
BENCHES ?= $(filter-out benchmarks/bench_ptychi.py benchmarks/gpu_check.py,$(wildcard benchmarks/*.py))
bench: $(STAMP)
	for f in $(BENCHES); do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Jupyter refuses to start as root unless told to (containers, cloud shells): pass --allow-root only then.
LAB_FLAGS ?= $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
lab: $(STAMP)
	test -x $(BIN)/jupyter-lab || $(BIN)/python -m pip install -q jupyterlab
	$(BIN)/jupyter lab $(LAB_FLAGS) nbs

docs: $(STAMP)
	$(BIN)/python tools/build_docs.py

docs-exec: $(STAMP)
	$(BIN)/python tools/build_docs.py --offline --execute

readme: $(STAMP)
	$(BIN)/python tools/make_readme.py

clean:
	rm -rf _docs _proc $(OUT) .pytest_cache

# The shipped pretrained model for N=64 (data/pretrained_N64: wts.h5.zip + model_card.json). The shipped one was made
# by this target with the defaults below on a quiet 2-core CPU: 2048 corpus scans, PRETRAIN_BUDGET=6000 s of training
# (23,156 steps, bf16; the run was stopped once and continued with PRETRAIN_FLAGS=--resume), then continued on an
# H200 for 170 s by `benchmarks/gpu_check.py --deadline_s 420 --skip_tests` (4,096 scans, 64 groups a step, label
# weight 1: 6,556 steps), as its card's command and init_from say. On a GPU raise the budget and the corpus
# (PRETRAIN_SCANS). It refuses to replace an existing model: add
# PRETRAIN_FLAGS=--overwrite (or --resume to continue from its checkpoints).
PRETRAINED ?= data/pretrained_N64
PRETRAIN_BUDGET ?= 6000
PRETRAIN_SCANS ?= 2048
PRETRAIN_FLAGS ?=
.PHONY: pretrained
pretrained: $(STAMP)
	$(BIN)/ptycho-torch-pretrain --output_dir $(PRETRAINED) --N 64 --n_scans $(PRETRAIN_SCANS) --positions 64 \
	  --time_budget $(PRETRAIN_BUDGET) --batch_size 16 --learning_rate 5e-4 --n_filters_scale 1 --seed 0 \
	  --checkpoint_every 100 $(PRETRAIN_FLAGS)

# On a GPU (issue 16's check, one call, 7 minutes by default): pretraining throughput against a plain CNN, the
# zero-shot rate, then the shipped recipe pretrained for the time left on a larger corpus, scored zero-shot beside the
# shipped model. `make gpu-check GPU_OUT=DIR`; on a lent device machine: python3 benchmarks/gpu_check.py --out $$OUT.
GPU_OUT ?= gpu_check_out
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --out $(GPU_OUT)
