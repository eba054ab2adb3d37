# mailvault: one entry point for people and CI.  Every target installs what it needs.
#   make test   lint + type-check + the whole test suite (against a private Dovecot)
#   make demo   a throwaway Dovecot with generated mail, then fetch -> search -> export
#   make bench  side-by-side benchmarks (see docs/benchmarks.md)

SHELL := /bin/bash
# The platform's Python when there is one: Debian builds it with PGO and LTO, which makes every
# command ~30% faster than an unoptimised build (pyenv's default) of the same version.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := python3-venv dovecot-core dovecot-pop3d notmuch jq
BENCH_PACKAGES := mpop fetchmail getmail6 notmuch maildir-utils time

.PHONY: test demo bench lint typecheck unit system-deps bench-deps clean

$(STAMP): pyproject.toml | system-deps
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

bench-deps: system-deps
	@missing=""; for p in $(BENCH_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check mailvault tests benchmarks
	$(BIN)/ruff format --check mailvault tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy mailvault

# A crash of pytest itself (a native library's SIGSEGV or SIGBUS) is reported last: the test
# that was running and the crashing thread's frames (tests/conftest.py writes them).
CRASH_DIR := build/test-crash
test: $(STAMP) system-deps lint typecheck
	@rm -rf $(CRASH_DIR) && mkdir -p $(CRASH_DIR)
	MAILVAULT_TEST_CRASH_DIR=$(CRASH_DIR) $(BIN)/pytest -q -p no:cacheprovider -p no:faulthandler \
	  || { status=$$?; if [ -s $(CRASH_DIR)/traceback ]; then \
	    echo "== pytest died (exit $$status) while running: $$(cat $(CRASH_DIR)/running)"; \
	    grep -A14 '^Current thread' $(CRASH_DIR)/traceback; fi; exit $$status; }

demo: $(STAMP) system-deps
	$(BIN)/python -m mailvault.testkit.demo

bench: $(STAMP) bench-deps
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
