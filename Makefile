# Deep learning on one 12 GB GPU — the commands you need:
#   make test     set everything up (first time only) and run the offline test suite
#   make lab      open JupyterLab on http://127.0.0.1:8888 with a login token
#   make course   run every lesson in full mode and write runs/<time>/report.md  (MODE=smoke for the quick one)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := dl12gb
MODE ?= full
PORT ?= 8888

.PHONY: setup test unit notebooks lab course bench clean help
help:
	@sed -n '2,5p' Makefile

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Deep learning on 12 GB (.venv)" >/dev/null
	@touch $(STAMP)
	@echo "setup done: $(VENV) with the pinned packages and the '$(KERNEL)' Jupyter kernel"

setup: $(STAMP)

# Unit tests, then every lesson in smoke mode (tests/test_notebooks.py), then one lesson through nbval.
test: setup
	$(BIN)/python -m pytest -q
	SMOKE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax notebooks/01_sklearn_basics.ipynb

unit: setup
	$(BIN)/python -m pytest -q -m "not notebook"

lab: setup
	@TOKEN=$${JUPYTER_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))')}; \
	echo "JupyterLab: http://127.0.0.1:$(PORT)/lab?token=$$TOKEN"; \
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) --IdentityProvider.token="$$TOKEN" \
	  --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate \
	  --LabApp.extension_manager=readonly \
	  --notebook-dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

course: setup
	$(BIN)/course-run --mode $(MODE)

clean:
	rm -rf build runs .pytest_cache
