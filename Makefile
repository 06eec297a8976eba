# Every target sets itself up: a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Demo values for the secrets dev reads from the environment (never used outside the sandbox).
DEMO_ENV := GAMEPULSE_DEV_DB_CONNECTION='Host=db.dev.local;Database=gamepulse;Username=demo;Password=demo-only' \
            GAMEPULSE_DEV_SLACK_WEBHOOK='https://hooks.slack.example/services/DEMO/ONLY'

.PHONY: install demo test bench lint clean sandbox-stop

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,sandbox]'
	touch $(STAMP)

demo: install
	$(BIN)/orchestrator sandbox start
	$(DEMO_ENV) $(BIN)/orchestrator --sandbox apply dev --yes
	$(BIN)/orchestrator --sandbox status dev
	@echo
	@echo "== applying dev again: nothing should change =="
	$(DEMO_ENV) $(BIN)/orchestrator --sandbox apply dev --yes
	$(BIN)/orchestrator --sandbox outputs dev
	@echo
	@echo "The sandbox keeps running for you to explore (orchestrator --sandbox plan dev, ...);"
	@echo "'make sandbox-stop' stops it."

sandbox-stop: install
	$(BIN)/orchestrator sandbox stop

test: install
	$(BIN)/python -m pytest -n 2 -q

bench: install
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .orchestrator build *.egg-info
