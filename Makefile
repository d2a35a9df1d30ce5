# poolserve: every target sets up .venv itself from nothing but Python 3.11, gcc and pip.
#   make serve      build, install into .venv, start the server on localhost
#   make test       install with the test extra and run the whole suite (and the ISA and sanitizer runs)
#   make test-isa   the kernel tests again with the AVX-512/AVX2 paths capped below the CPU's level
#   make test-asan  the kernel tests against an AddressSanitizer + UBSan build of the kernels
#   make bench      benchmarks; results under bench/results/ (bench-policy: auto's backend table;
#                   bench-service: latency vs tensor size, unary vs chunked vs echo;
#                   bench-targets: issue 8's service targets against a bare echo)
#   make bench-kernels  the kernel benchmark alone: C vs ONNX Runtime vs PyTorch vs the memory floor
#   make bench-onnx the ONNX backend's overhead over a bare session.run
#   make protos     regenerate the committed gRPC stubs (client/poolclient/_proto) from protos/
#   make soak       a minute of steady load against a real server: no error, no memory growth
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard kernels/*.c kernels/*.h kernels/*.inc)
ASAN_LIB := build/asan/libpoolkernels.so
CFLAGS_ASAN := -std=c11 -O1 -g -fno-omit-frame-pointer -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=undefined -DPOOL_NO_CLONES

.PHONY: venv serve test test-py test-isa test-asan soak bench bench-policy bench-service bench-kernels bench-onnx bench-targets protos clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Editable install: the package build compiles the kernels into server/poolserve/ and imports
# resolve there.  Reinstalled whenever the build inputs change.
$(STAMP): $(VENV)/bin/python $(SOURCES)
	$(PIP) install -e '.[server,test,loadtest]'
	@# PyTorch is an optional cross-check.  The CPU build is pinned by its local version so that
	@# pip takes it from a local wheel directory where one exists and never pulls a CUDA build.
	$(PIP) install 'torch==2.13.0+cpu' 2>/dev/null || echo "note: torch 2.13.0+cpu not available here; torch cross-checks will skip"
	touch $@

venv: $(STAMP)

test: test-py test-isa test-asan

test-py: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The kernel tests again with the hand-written paths capped below this CPU's level
# (POOLSERVE_KERNEL_ISA), so that one machine checks every form it can run -- AVX-512, AVX2 and
# plain C -- against the generic path; test-py ran them at the CPU's own level.
test-isa: $(STAMP)
	@for level in $$($(PY) -c 'from poolserve.backends._kernels import ISA_LEVELS, isa; print(*ISA_LEVELS[:ISA_LEVELS.index(isa())] if isa() in ISA_LEVELS else [])'); do \
	  echo "kernel tests with POOLSERVE_KERNEL_ISA=$$level"; \
	  POOLSERVE_KERNEL_ISA=$$level $(PY) -m pytest -q -p no:cacheprovider -m kernels tests || exit 1; \
	done

# The same kernel sources, built with sanitizers, loaded in place of the installed library.
# Python itself is not instrumented, so libasan is preloaded; leaks are CPython's, not ours.
# POOL_NO_CLONES builds only the baseline-ISA code, so this run also covers the path that CPUs
# without AVX2 take (the installed library picks the widest clone this CPU has).
$(ASAN_LIB): $(wildcard kernels/*.c kernels/*.h kernels/*.inc)
	mkdir -p $(dir $@)
	gcc $(CFLAGS_ASAN) -shared -fPIC -Ikernels kernels/poolkernels.c -o $@ -lm

test-asan: $(STAMP) $(ASAN_LIB)
	POOLSERVE_KERNEL_LIB=$(abspath $(ASAN_LIB)) \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PY) -m pytest -q -p no:cacheprovider -m kernels tests

# `make test` runs the same test for a few seconds (POOLSERVE_SOAK_SECONDS defaults to 6).
SOAK_SECONDS ?= 60
soak: $(STAMP)
	POOLSERVE_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s -p no:cacheprovider -m soak tests

# 127.0.0.1:50051, metrics on 127.0.0.1:9464; SERVE_ARGS adds flags (see `poolserve serve --help`)
serve: $(STAMP)
	$(VENV)/bin/poolserve serve $(SERVE_ARGS)

# The stubs are committed (the client must not need grpcio-tools); tests/test_protos.py fails
# when they differ from what this generates.
protos: $(STAMP)
	$(PY) protos/generate.py

# Every benchmark, one after another; each writes its own results under bench/results/.
# bench-policy rewrites auto's table from this machine's measurements.
bench: bench-kernels bench-onnx bench-policy bench-service bench-targets


# The ONNX backend's per-call overhead over a bare InferenceSession.run (bench/results/onnx_overhead.json)
bench-onnx: $(STAMP)
	$(PY) bench/onnx_overhead.py $(BENCH_ARGS)

# The [bench] extra (matplotlib for the chart) once per venv; no rebuild of the kernels.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PIP) install 'matplotlib>=3.8'
	touch $@

# Kernel benchmark (bench/kernels.py): writes bench/results/kernels.{json,md,png}.
# BENCH_ARGS="--quick" for a smoke run, "--only vgg" for some cases.
bench-kernels: $(BENCH_STAMP)
	$(PY) bench/kernels.py $(BENCH_ARGS)

# auto's backend table: every backend timed per mode, window, dtype and size bucket; writes
# server/poolserve/backend_policy.json (loaded by the server) and bench/results/ (about 2 minutes)
bench-policy: $(STAMP)
	$(PY) bench/backend_policy.py $(BENCH_ARGS)

# latency vs tensor size, 4 KiB-256 MiB: Pool vs PoolChunked vs a bare echo, one run (a few minutes);
# bench/results/service_sizes.{json,png}; it prints the client's chunk threshold
bench-service: $(BENCH_STAMP)
	$(PY) bench/service_sizes.py $(BENCH_ARGS)

# issue 8's service targets, each against the bare echo in the same run (about 3 minutes):
# bench/results/service_targets/
bench-targets: $(STAMP)
	bench/service_targets.sh

clean:
	rm -rf $(VENV) build dist *.egg-info server/poolserve/*.so .hypothesis .pytest_cache
