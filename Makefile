# aguante — the two commands of the README, and what serves them.
# `make demo` runs the whole system on simulated machines; `make test` installs and runs the checks.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests and the demo need: command to look for = package that brings it.
DEBS   := influxd=influxdb mosquitto=mosquitto openssl=openssl chromium=chromium pdftoppm=poppler-utils

.PHONY: demo test lint typecheck unit bench soak dashboards system-deps venv clean

demo: system-deps venv
	$(BIN)/python scripts/demo.py

test: system-deps venv lint typecheck
	$(BIN)/pytest -W error

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -W error -m "not integration"

bench: system-deps venv
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian packages: nodejs npm (Node-RED, the benchmark's peer)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }
	$(BIN)/python benchmarks/run.py

# 30 minutes of faults against the collector and its disk buffer, then an account of every
# reading; shorter with e.g. `make soak SOAK_ARGS="--minutes 5"`.
soak: system-deps venv
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

# The Grafana dashboards committed under dashboards/grafana/, rebuilt in each language after a
# change to dashboards/grafana.py or its texts (a test fails while they are stale).
dashboards: venv
	for lang in es pt-BR en; do $(BIN)/aguante dashboards build --lang $$lang --out dashboards/grafana/$$lang; done

# Installs from the distribution only what is missing, so a machine that has it all is untouched.
system-deps:
	@missing=""; for pair in $(DEBS); do cmd=$${pair%%=*}; pkg=$${pair#*=}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; done; \
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .demo .mypy_cache .pytest_cache .ruff_cache *.egg-info
