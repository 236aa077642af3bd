# Two commands for a fresh machine (see README.md):
#   make demo   replays the bundled sample over OpenIGTLink, segments it live, writes a Slicer scene
#   make test   runs the whole test suite (CI calls exactly this through .ci/run)
# Each sets up what it needs: a virtual environment in .venv with torch pinned to the CPU build first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nerveseg-installed
# Debian packages the tests use as real peers: the OpenIGTLink C++ reference implementation and its examples, and
# PostgreSQL's server (the annotation store's team engine; the tests start a throwaway cluster of their own).
TEST_DEBS := libopenigtlink-dev openigtlink-examples cmake g++ make postgresql

.PHONY: demo test setup test-debs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned first: a bare 'torch' requirement would pull several GB of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[standalone,train,test,team]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nerveseg demo

test-debs:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for test peers:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test: $(STAMP) test-debs
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) nerveseg-demo .pytest_cache
