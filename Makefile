# Deep learning on one 12 GB GPU — the commands you need:
#   make test     set everything up (first time only) and run the offline test suite
#   make lab      open JupyterLab on http://127.0.0.1:8888 with a login token
#   make course   run every lesson in full mode and write runs/<time>/report.md  (MODE=smoke for the quick one;
#                 SKIP_GPU=1 to accept that lessons needing a GPU were skipped)
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

# The token travels in the environment (JUPYTER_TOKEN), never on the command line where `ps` shows it to other
# users. The Lab is rooted at the repository (links such as ../course_utils/topics/gpt.py open) and starts in notebooks/.
lab: setup
	@TOKEN=$${JUPYTER_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))')}; \
	echo "JupyterLab: http://127.0.0.1:$(PORT)/lab/tree/notebooks?token=$$TOKEN"; \
	JUPYTER_TOKEN="$$TOKEN" exec $(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) \
	  --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate \
	  --LabApp.extension_manager=readonly \
	  --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# Full mode fails when a lesson could not run for want of a GPU; SKIP_GPU=1 accepts the skip (the report says so).
course: setup
	$(BIN)/course-run --mode $(MODE)$(if $(filter-out 0,$(SKIP_GPU)), --skip-gpu-lessons)

clean:
	rm -rf build runs .pytest_cache
