# ddc-testbed. `make demo` runs the main job; `make test` runs every test.
# Both work as root on a fresh Debian 12 machine: they install what they need.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DDC    := $(VENV)/bin/ddc
RACK   ?= examples/paced-rack.yaml

.PHONY: all deps venv plugin demo test unit vm lint bench clean

all: deps

deps: venv
	scripts/install-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@dpkg-query -W -f='$${Status}' python3-venv libvirt-dev pkg-config 2>/dev/null | grep -c "ok installed" | grep -q 3 \
	  || scripts/install-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

plugin: deps
	$(MAKE) -C qemu_devices

CAMPAIGN ?= examples/latency-sweep.yaml
RESULTS  ?= results/$(basename $(notdir $(CAMPAIGN)))

# The main job: image, testbed, campaign, report. The testbed is brought down
# at the end whatever happened; the results stay in $(RESULTS).
demo: deps plugin
	$(DDC) image build
	$(DDC) up $(RACK)
	$(DDC) run $(CAMPAIGN) --out $(RESULTS); rc=$$?; \
	  $(DDC) report $(RESULTS) && $(DDC) results $(RESULTS) --csv $(RESULTS)/runs.csv; rc2=$$?; \
	  $(DDC) down $(RACK); [ $$rc -eq 0 ] && [ $$rc2 -eq 0 ]
	@echo "report: $(RESULTS)/report/report.html (and report.md); table: $(RESULTS)/runs.csv"

lint: venv
	$(VENV)/bin/ruff check orchestrator tests bench
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest -q -m "not vm" tests

vm: deps plugin
	$(PY) -m pytest -q -m vm tests

test: deps plugin lint
	$(PY) -m pytest -ra tests

bench: deps plugin
	$(PY) bench/provision.py
	$(PY) bench/campaign_overhead.py

clean:
	rm -rf $(VENV) qemu_devices/build .pytest_cache .mypy_cache .ruff_cache
