# The two commands of the README: `make sweep` and `make test`.
# Each creates .venv if needed, installs the package with its test extras,
# provisions Fashion-MNIST, then runs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data sweep test test-cluster test-fast clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Fashion-MNIST: Debian's package when apt is there, else torchvision's download.
data: $(STAMP)
	@if [ ! -d $(FMNIST_DEB_DIR) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "apt could not install dataset-fashion-mnist; trying torchvision's download"; \
	fi
	$(PY) -m orchestrator.data.provision

sweep: setup
	$(PY) -m orchestrator.sweep $(ARGS)

# Tests run in TEST_WORKERS pytest-xdist processes (0: one process), each with its own temp dirs and caches
# (tests/conftest.py); the end-to-end tests mostly wait on process start-up, so two overlap well on 2 cores.
# tests/conftest.py schedules them: the tests on the session's Ray all on one worker (one session Ray, not two),
# every other test, slow ones first, to whichever worker is free.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist load

# pytest exits 5 when it collects no test: that is a failure with its own message.
# The multi-node tests (marker `cluster`, minutes each) are left to `make test-cluster`, which CI runs too.
test: setup
	@$(PY) -m pytest $(XDIST) -m "not cluster" $(PYTEST_ARGS); code=$$?; \
	if [ $$code = 5 ]; then echo "error: pytest collected no tests"; fi; exit $$code

test-cluster: setup
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf runs mlflow.db mlruns .pytest_cache
