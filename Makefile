# Deep learning on one 12 GB GPU — the commands you need:
#   make test     set everything up (first time only) and run the offline test suite
#   make doctor   check this machine in seconds (GPU, driver, PyTorch, disk, hub token); paste its block in bug reports
#   make lab      open JupyterLab on http://127.0.0.1:8888 with a login token
#   make fetch LESSONS="05 06"   download ahead what those lessons need (resumes, checks hashes; UNGATED=1: no
#                 gated models); they then run offline. LESSONS=week4 for a week, LESSONS=all for the whole course
#   make course   run every lesson in full mode and write runs/<time>/report.md  (MODE=smoke for the quick one;
#                 SKIP_GPU=1 to accept that lessons needing a GPU were skipped)
#   make translations            build notebooks-fr/, notebooks-zh-Hant/, notebooks-ja/ from translations/
#   make lab LANG=ja             the Lab on the lessons in Japanese (LANG=fr, zh-Hant, ja; built first)
#   make course LANG=fr          run the lessons in French (built first; MODE and SKIP_GPU as above)
#   make rapids   optional: RAPIDS (cudf.pandas, cuml.accel) in .venv-rapids for lesson 17 (NVIDIA GPU, ~5 GB)
#   make demo    the course's web demo (lesson 12) on http://127.0.0.1:7860, login printed at start (SMOKE=1: tiny models)
#   make llamacpp  optional: compile llama-cpp-python into .venv for lesson 12's GGUF comparison (~45 min on 2 busy cores)
#   make engines  lesson 13: DDP, FSDP, ZeRO-2, ZeRO-3 on 2 processes (CPUs: gloo, ~1 min); fails if a loss curve strays
#   make check-copies  check every `# Copied from <source>` block against its source (fix-copies rewrites them)
#   make canary   the lessons in smoke mode against the newest releases of the packages, in .venv-canary (~20 min)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := dl12gb
MODE ?= full
PORT ?= 8888
# LANG is also the locale variable (LANG=C.UTF-8...): it names a course language only when it is one of these,
# and then the commands below run with the locale C.UTF-8 (LANG=ja is no locale).
COURSE_LANGS := fr zh-Hant ja
COURSE_LANG := $(filter $(COURSE_LANGS),$(LANG))
NB_DIR := $(if $(COURSE_LANG),notebooks-$(COURSE_LANG),notebooks)
ifneq ($(COURSE_LANG),)
override LANG := C.UTF-8
endif

.PHONY: setup test unit notebooks lab course bench clean help translations rapids demo llamacpp engines check-copies fix-copies canary doctor fetch
help:
	@sed -n '2,/^[^#]/{/^#/p}' Makefile

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Deep learning on 12 GB (.venv)" >/dev/null
	@touch $(STAMP)
	@echo "setup done: $(VENV) with the pinned packages and the '$(KERNEL)' Jupyter kernel"

setup: $(STAMP)

# The copy check (every `# Copied from` block matches its source), unit tests, then every lesson in smoke mode
# (tests/test_notebooks.py) on two workers (pytest-xdist; each has its own home and caches, see conftest.py), then
# one lesson through nbval.
test: setup
	$(BIN)/python -m course_utils.runner.copies check
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup
	SMOKE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax notebooks/01_sklearn_basics.ipynb

check-copies: setup
	$(BIN)/python -m course_utils.runner.copies check

fix-copies: setup
	$(BIN)/python -m course_utils.runner.copies fix

# The course doctor (course_utils/doctor.py): a block to paste into a bug report, one sentence per problem. Without
# `setup` on purpose: it must run when an install half-failed. Exit 1 only when no lesson can run at all.
doctor:
	@test -x $(BIN)/python || { echo "doctor: there is no $(VENV) yet: run \`make setup\` first"; exit 1; }
	@$(BIN)/python -m course_utils.doctor

unit: setup
	$(BIN)/python -m pytest -q -m "not notebook"

# The token travels in the environment (JUPYTER_TOKEN), never on the command line where `ps` shows it to other
# users. The Lab is rooted at the repository (links such as ../course_utils/topics/gpt.py open) and starts in notebooks/.
lab: setup $(if $(COURSE_LANG),translations)
	@TOKEN=$${JUPYTER_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(24))')}; \
	echo "JupyterLab: http://127.0.0.1:$(PORT)/lab/tree/$(NB_DIR)?token=$$TOKEN"; \
	JUPYTER_TOKEN="$$TOKEN" exec $(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) \
	  --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate \
	  --LabApp.extension_manager=readonly \
	  --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(NB_DIR) $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# Full mode fails when a lesson could not run for want of a GPU; SKIP_GPU=1 accepts the skip (the report says so).
course: setup $(if $(COURSE_LANG),translations)
	$(BIN)/course-run --mode $(MODE)$(if $(COURSE_LANG), --notebooks $(NB_DIR))$(if $(filter-out 0,$(SKIP_GPU)), --skip-gpu-lessons)

# The translated lessons, built from notebooks/ and translations/<lang>/ (never edit notebooks-<lang>/ by hand).
# With LANG=fr|zh-Hant|ja only that language; otherwise all of them.
translations: setup
	$(BIN)/python -m course_utils.i18n build$(if $(COURSE_LANG), --lang $(COURSE_LANG))

# Optional (lesson 17): RAPIDS in its own venv, .venv-rapids: ~5 GB of CUDA 12 wheels, for an NVIDIA GPU with a CUDA 12
# driver. Its own venv because cudf-cu12 26.10 needs pandas < 3.1 (the course pins 3.1.1); the lesson runs the same
# script with .venv-rapids/bin/python on the CPU and on the GPU, so both runs use the same library versions.
RAPIDS_VENV := .venv-rapids
rapids:
	@test -x $(RAPIDS_VENV)/bin/python || $(PYTHON) -m venv $(RAPIDS_VENV)
	$(RAPIDS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(RAPIDS_VENV)/bin/python -m pip install --quiet cudf-cu12==26.10.2 cuml-cu12==26.10.0 pandas==3.0.6 \
	  scikit-learn==1.9.1 numpy==2.4.6 pyarrow==26.0.1
	$(RAPIDS_VENV)/bin/python -c "import cudf, cuml; print('RAPIDS', cudf.__version__, cuml.__version__, 'in $(RAPIDS_VENV)')"

# The course's web demo (lesson 12): Gradio on FastAPI, bound to 127.0.0.1. The password is printed at start (or taken
# from DEMO_PASSWORD in the environment), never passed on the command line. SMOKE=1 serves the tiny offline models.
DEMO_PORT ?= 7860
demo: setup
	DEMO_PORT=$(DEMO_PORT) $(BIN)/python -m course_utils.demo

# Optional (lesson 12): llama-cpp-python compiles llama.cpp from source with gcc and cmake (measured: 44 min on a busy
# 2-core machine, the build niced; minutes on 8+ cores), too slow for `make setup`. The source release also holds llama.cpp's GGUF converter
# and its gguf-py, unpacked into .venv/src for lesson 12's export; sentencepiece is what the converter imports besides.
# Neither changes a version the course pins (they add diskcache and sentencepiece).
LLAMACPP_VERSION := 0.3.36
LLAMACPP_SRC := $(VENV)/src/llama_cpp_python-$(LLAMACPP_VERSION)
llamacpp: setup
	mkdir -p $(VENV)/src
	$(BIN)/python -m pip download --quiet --no-binary :all: --no-deps llama-cpp-python==$(LLAMACPP_VERSION) -d $(VENV)/src
	tar -xzf $(LLAMACPP_SRC).tar.gz -C $(VENV)/src $(notdir $(LLAMACPP_SRC))/vendor/llama.cpp/convert_hf_to_gguf.py \
	  $(notdir $(LLAMACPP_SRC))/vendor/llama.cpp/conversion $(notdir $(LLAMACPP_SRC))/vendor/llama.cpp/gguf-py/gguf
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install $(LLAMACPP_SRC).tar.gz sentencepiece==0.2.3
	$(BIN)/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"

# Download ahead (datasets/assets.toml, course_utils/assets.py): hub files at the pinned commits, plain files checked
# against the lock's checksums; an interrupted download continues where it stopped when run again.
fetch: setup
	@test -n "$(LESSONS)" || { echo 'fetch: say which lessons, e.g. make fetch LESSONS="05 06" (or LESSONS=all)'; exit 1; }
	$(BIN)/python -m course_utils.assets fetch $(LESSONS)$(if $(filter-out 0,$(UNGATED)), --ungated)

engines: setup
	$(BIN)/python -m course_utils.topics.multigpu

# Drift canary: a venv of its own (.venv-canary) with the newest release of every package in requirements.txt
# (unpinned), the course package without dependencies, then every lesson in smoke mode there, offline. It writes
# build/canary/canary.md (versions; per lesson pass/fail and the first error). Never touches .venv or the pins.
# LESSONS="05 07" for some lessons; CANARY_ARGS=--reuse to keep the venv already built.
canary:
	PYTHONPATH=. $(PYTHON) -m course_utils.runner.canary $(CANARY_ARGS) $(LESSONS)

clean:
	rm -rf build runs .pytest_cache
