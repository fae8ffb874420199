# The README's commands. Each installs what is missing first, so a fresh clone needs nothing else.
VENV ?= .venv
PYTHON ?= python3
DEMO_PREFECT_PORT ?= 4210
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export GX_ANALYTICS_ENABLED := False
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test lint clean-demo

install: $(VENV)/.installed

# constraints.txt pins every transitive version (regenerate with `make lock`).
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	dfdc demo-data data/raw
	# registered the way a user's DFDC chunk is: one .dvc per chunk (then `dvc push` shares them)
	dfdc add-chunk data/raw/dfdc_train_part_*/
	dvc add --quiet data/raw/test_videos data/raw/sample_submission.csv
	# One Prefect server (on PREFECT_HOME's database) for every stage, stopped after: alone, each
	# `dfdc <stage>` starts a temporary server of its own, about 11 s apiece. A PREFECT_API_URL
	# already set is used instead.
	@if [ -n "$$PREFECT_API_URL" ]; then dvc repro; else \
	  trap 'prefect server stop >/dev/null 2>&1' EXIT; \
	  prefect server start --background --port $(DEMO_PREFECT_PORT) >/dev/null && \
	  export PREFECT_API_URL=http://127.0.0.1:$(DEMO_PREFECT_PORT)/api && \
	  prefect server status --wait --timeout 120 >/dev/null && dvc repro; fi
	@echo; echo "metrics:"; cat reports/metrics.json

# tests/browser drive headless Chromium: installed here (Debian, as root) when missing, else they fail
# with the command to run.
test: install
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null; } || \
	  echo "cannot install chromium: browser tests will fail (apt-get install chromium chromium-driver)"
	pytest

lint: install
	ruff check dfdc flows tests

lock: install
	$(BIN)/pip freeze --exclude-editable --exclude dfdc > constraints.txt

clean-demo:
	rm -rf data models dist reports dvc_plots submission.csv dvc.lock mlflow/mlflow.db mlflow/artifacts
