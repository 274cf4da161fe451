# Two entry points: `make serve` and `make test`. Both set up everything they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: serve test test-reliability lint payloads console-assets model toolchain browser nats \
  bench gpu-check clean

# Debian ships venv support separately (python3-venv); install it when we can.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "python venv support is needed: sudo apt-get install python3-venv" >&2; exit 1; fi; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,build]'
	touch $@

# A C++ compiler is the one thing PyPI cannot provide.
toolchain:
	@command -v c++ >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq g++ make >/dev/null; \
	  else echo "a C++ compiler is needed: sudo apt-get install g++" >&2; exit 1; fi; }

# The fleet's tests start their own NATS server (JetStream): Debian's nats-server.
nats:
	@command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; \
	  else echo "the fleet tests need nats-server: sudo apt-get install nats-server" >&2; exit 1; fi; }

# The console's browser test drives Debian's Chromium: Playwright's own browser download needs
# the internet. Without root or apt the test says it was skipped and why.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	      echo "could not install chromium: the console's browser test will be skipped" >&2; \
	  else echo "no chromium: the console's browser test will be skipped (sudo apt-get install chromium)" >&2; fi; }

# Compiles only when the build cache (~/.cache/switchboard) has no binary for these sources.
payloads: $(INSTALLED) toolchain
	$(BIN)/switchboard build-runners

# The console's chart library (uPlot) from the npm registry, pinned by its sha512.
console-assets: $(INSTALLED)
	@$(BIN)/python -m gateway.console_assets >/dev/null

model: $(INSTALLED)
	$(BIN)/switchboard pull gemma3:270m

serve: payloads console-assets model
	$(BIN)/switchboard serve

lint: $(INSTALLED)
	$(BIN)/ruff check gateway runner tests bench setup.py
	$(BIN)/mypy

test: payloads console-assets model lint browser nats
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# The reliability suite on its own (its fast part also runs in `make test`).
test-reliability: payloads model
	$(BIN)/pytest tests/reliability $(PYTEST_ARGS)

# On a machine with an NVIDIA GPU and nvcc: the cuda variant, then the GPU tests (variant
# choice, NVML against the estimate, one copy per device); figures in docs/gpu-check.md.
gpu-check: payloads model
	@command -v nvcc >/dev/null || { echo "gpu-check needs nvcc (the CUDA toolkit)" >&2; exit 1; }
	$(BIN)/switchboard build-runners --variant cuda
	$(BIN)/pytest tests/gpu -v --gpu-required $(PYTEST_ARGS)

# Peers side by side (about 5 minutes): writes docs/benchmarks.{md,json,png}.
bench: payloads model
	$(BIN)/python -m pip install --quiet -e '.[dev,build,bench]'
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.template_cost

clean:
	rm -rf $(VENV) runner/payloads gateway/ui/vendor build *.egg-info .pytest_cache .mypy_cache .ruff_cache
