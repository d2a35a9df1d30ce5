# poolserve: every target sets up .venv itself from nothing but Python 3.11, gcc and pip.
#   make serve      build, install into .venv, start the server on localhost
#   make test       install with the test extra and run the whole suite (and the sanitizer run)
#   make test-asan  the kernel tests against an AddressSanitizer + UBSan build of the kernels
#   make bench      benchmarks; results under bench/results/
#   make bench-kernels  the kernel benchmark alone: C vs ONNX Runtime vs PyTorch vs the memory floor
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard kernels/*.c kernels/*.h kernels/*.inc)
ASAN_LIB := build/asan/libpoolkernels.so
CFLAGS_ASAN := -std=c11 -O1 -g -fno-omit-frame-pointer -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=undefined

.PHONY: venv serve test test-py test-asan bench bench-kernels clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Editable install: the package build compiles the kernels into server/poolserve/ and imports
# resolve there.  Reinstalled whenever the build inputs change.
$(STAMP): $(VENV)/bin/python $(SOURCES)
	$(PIP) install -e '.[server,test]'
	@# PyTorch is an optional cross-check.  The CPU build is pinned by its local version so that
	@# pip takes it from a local wheel directory where one exists and never pulls a CUDA build.
	$(PIP) install 'torch==2.13.0+cpu' 2>/dev/null || echo "note: torch 2.13.0+cpu not available here; torch cross-checks will skip"
	touch $@

venv: $(STAMP)

test: test-py test-asan

test-py: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The same kernel sources, built with sanitizers, loaded in place of the installed library.
# Python itself is not instrumented, so libasan is preloaded; leaks are CPython's, not ours.
$(ASAN_LIB): $(wildcard kernels/*.c kernels/*.h kernels/*.inc)
	mkdir -p $(dir $@)
	gcc $(CFLAGS_ASAN) -shared -fPIC -Ikernels kernels/poolkernels.c -o $@ -lm

test-asan: $(STAMP) $(ASAN_LIB)
	POOLSERVE_KERNEL_LIB=$(abspath $(ASAN_LIB)) \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	HYPOTHESIS_PROFILE=asan \
	$(PY) -m pytest -q -p no:cacheprovider -m kernels tests

serve: $(STAMP)
	$(VENV)/bin/poolserve serve $(SERVE_ARGS)

bench: $(STAMP)
	$(PIP) install -e '.[bench]'
	$(PY) bench/run.py

# The [bench] extra (matplotlib for the chart) once per venv; no rebuild of the kernels.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PIP) install 'matplotlib>=3.8'
	touch $@

# Kernel benchmark (bench/kernels.py): writes bench/results/kernels.{json,md,png}.
# BENCH_ARGS="--quick" for a smoke run, "--only vgg" for some cases.
bench-kernels: $(BENCH_STAMP)
	$(PY) bench/kernels.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info server/poolserve/*.so .hypothesis .pytest_cache
