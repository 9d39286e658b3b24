# clinseg: `make run` starts the app on the bundled demo case, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: install run test bench bench-all bench-data system-deps clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch first, pinned: any other pair drags in multi-GB builds (see DESIGN.md)
	$(PIP) install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Data and programs the tests read from Debian: the Colin27/AAL templates and headless Chromium.
system-deps:
	@if [ ! -f /usr/share/mricron/templates/ch2.nii.gz ] || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: run 'sudo apt-get install mricron-data chromium chromium-driver' for the template and browser tests"; \
	  fi; \
	fi

run: install
	$(VENV)/bin/streamlit run app/main.py --server.address $(HOST) --server.port $(PORT) \
	  --server.headless true --browser.gatherUsageStats false -- --demo

# the suite also reads one dev-set image (stardist's nuclei, tests/test_reading_zoom.py)
test: bench-data
	$(PY) -m pytest

bench-data: install system-deps
	$(PY) bench/devdata.py --install

bench: bench-data
	@for b in bench/accuracy.py bench/latency.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# every benchmark (about an hour on 2 cores: volume and adapter training dominate)
bench-all: bench-data
	@for b in bench/accuracy.py bench/latency.py bench/prompts.py bench/gaze.py bench/text.py bench/rt.py \
	  bench/volume.py bench/adapter.py bench/batch.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .bench-data
