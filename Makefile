# Every target creates .venv when missing, installs everything (dev, ray and s3 extras: the default
# test tier runs a local Ray cluster and a moto S3 server), then runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.layerloop-installed
# The editable install is a link tree (setuptools' editable_mode=strict): build/__editable__.*/layerloop/
# holds a link per module file, so static tools (pyright, an editor's go-to-definition) find the file behind
# every `layerloop.<package>.<module>` import. A module added or removed needs a re-link: `modules` checks.
EDITABLE := --config-settings editable_mode=strict
MODULES := $(VENV)/.layerloop-modules
# CPU machines: the plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_CPU_PIN ?= torch==2.13.0

.PHONY: demo test test-all ui bench system-deps clean modules

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q "$(TORCH_CPU_PIN)"; fi
	$(PY) -m pip install -q -e '.[dev,ray,s3]' $(EDITABLE)
	find flows tasks models storage layerloop -name '*.py' -o -name '*.safetensors' -o -name '*.json' | sort > $(MODULES)
	touch $(STAMP)

modules: $(STAMP)
	@find flows tasks models storage layerloop -name '*.py' -o -name '*.safetensors' -o -name '*.json' | sort | cmp -s - $(MODULES) || { \
		echo "re-linking the editable install (modules added or removed)"; \
		$(PY) -m pip install -q --no-deps -e . $(EDITABLE) && \
		find flows tasks models storage layerloop -name '*.py' -o -name '*.safetensors' -o -name '*.json' | sort > $(MODULES); }

# PostgreSQL server binaries (integration tests) and Chromium (report browser check).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium >/dev/null; \
	fi

demo: modules
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/layerloop demo

test: modules system-deps
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest

test-all: modules system-deps
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(PY) -m pytest -m ''

ui: modules
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_API_URL=http://127.0.0.1:4200/api $(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

bench: modules
	for b in storage judge learning overhead scale; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build demo-store .demo
