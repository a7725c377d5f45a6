# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow install bench clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]'
	@command -v java >/dev/null 2>&1 || echo "warning: no java on PATH; caption metrics (pycocoevalcap tokenizer, METEOR) need a Java runtime, e.g. apt-get install default-jre-headless"
	@test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; $$SUDO apt-get install -y -q dataset-fashion-mnist || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null 2>&1 || echo "error: could not install the Debian package dataset-fashion-mnist; the Fashion-MNIST and shapes_detection tasks need it (as root: apt-get install -y dataset-fashion-mnist, or set PALIX_FASHION_MNIST_DIR to a folder with its four .gz files)"
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; $$SUDO apt-get install -y -q chromium chromium-driver || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }; } >/dev/null 2>&1 || echo "error: could not install the Debian packages chromium and chromium-driver; the browser test of palix serve (tests/serve/test_page.py) needs them (as root: apt-get install -y chromium chromium-driver)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

demo: $(STAMP)
	$(VENV)/bin/palix demo

bench: $(STAMP)
	$(PY) -m palix.eval.perf.vit_forward

clean:
	rm -rf $(VENV) build *.egg-info
