# effconv: `make test` and `make bench` do all set-up on a fresh machine:
# a .venv with the pinned requirements, an editable install, and an in-place
# (incremental) build of effconv._C.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')
EXT_STAMP := $(VENV)/.stamp-ext
PYTEST_ARGS ?=

.PHONY: all build test bench aot clean

all: build

$(VENV)/.stamp-deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.stamp-install: $(VENV)/.stamp-deps setup.py
	EFFCONV_NO_EXTENSION=1 $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

# Builds CPU kernels always and CUDA C++ kernels when torch has CUDA and nvcc
# exists (EFFCONV_SKIP_CUDA=1 skips them; EFFCONV_CUDA_ARCHS="8.0;9.0").
# ptxas -v register/spill reports appear in this output.
$(EXT_STAMP): $(VENV)/.stamp-install $(SOURCES)
	MAX_JOBS=$$(nproc) $(PY) setup.py build_ext --inplace
	touch $@

build: $(EXT_STAMP)

test: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: build
	$(PY) -m pytest bench $(PYTEST_ARGS)

aot: build
	$(PY) -m effconv.kernels.aot

clean:
	rm -rf build effconv/_C*.so $(EXT_STAMP)
