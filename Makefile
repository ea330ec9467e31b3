# Two commands do everything on a fresh machine (each sets up what it needs first):
#   make bench   - the main job: benchmark + validation table on whatever device is present
#   make test    - the test suite (what CI runs through .ci/run)
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
# Without a GPU take the CPU build that lies on this machine's disk; an unpinned torch would pull
# several GB of CUDA wheels. With a GPU, any torch >= 2.11 (the package's own requirement).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH   ?= $(if $(HAS_GPU),torch>=2.11,torch==2.13.0)
EXT_SRC := $(shell find csrc python -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
PYTEST_ARGS ?=
BENCH_ARGS  ?= $(if $(HAS_GPU),,--quick)

.PHONY: venv test bench validate ctest clean

venv: $(VENV)/.ext

$(VENV)/.deps: requirements-dev.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH)"
	$(VPY) -m pip install -q -r requirements-dev.txt "$(TORCH)"
	# xlstm's own vanilla sLSTM (tests/test_slstm.py compares against it) is pure PyTorch; its
	# declared requirements (transformers, ...) are ~60 packages that test never uses.
	$(VPY) -m pip install -q --no-deps xlstm==2.0.5
	touch $@

# The package in editable mode; builds the C++/CUDA extension ahead of time (with this venv's
# torch, hence --no-build-isolation) and again when its sources or build steps change; the check
# after it fails unless that prebuilt extension loads. A user's `pip install .` builds it on first
# use instead (README, "Install").
$(VENV)/.ext: $(VENV)/.deps setup.py pyproject.toml rnnkernels/backends/build_spec.py $(EXT_SRC)
	RNNKERNELS_REQUIRE_EXT=1 $(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	RNNKERNELS_NO_JIT=1 $(VPY) -c "import rnnkernels, rnnkernels.backends.compiled as e; i = e.build_info(); assert i, e.ERROR; print('rnnkernels', rnnkernels.__version__, '| extension built by', i['built_by'], 'for torch', i['torch'], '| ISA', i['isa'])"
	touch $@

test: venv
	$(VPY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(VPY) -m bench.run $(BENCH_ARGS)

validate: venv
	$(VPY) -m bench.run --validate

ctest:
	bash .ci/compile_cuda.sh

clean:
	rm -rf build dist *.egg-info rnnkernels/*.so rnnkernels/_build_info.json .pytest_cache
