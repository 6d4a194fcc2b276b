# reverie: `make run` trains an agent, `make test` runs the tests. Both set up
# .venv and install whatever is missing (Debian packages for headless MuJoCo
# rendering included) on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0
RUN_ARGS ?=
# pytest-xdist workers for `make test`: one per core of the 2-core CI machine (a sequential run kept one core
# busy; the tests now take ~10 instead of ~13 minutes). The torchrun tests (marker `serial`) start processes of their own; they
# run alone afterwards, as they always ran, because one of them once aborted at exit while sharing the cores.
TEST_WORKERS ?= 2
# The robot runtime alone (`pip install .`: onnxruntime, numpy, pyzmq, Hydra; no torch).
ROBOT_VENV := .venv-robot
ROBOT_PY := $(ROBOT_VENV)/bin/python
ROBOT_STAMP := $(ROBOT_VENV)/.installed

# `make typecheck`: mypy over the packages, as the `reverie` package they install as (pyproject.toml, [tool.mypy]).
TYPECHECK_ROOT := build/typecheck/reverie
PACKAGES := agent world_model realtime envs cli configs

.PHONY: run test test-robot lint typecheck format clean-venv system-deps

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: an unpinned torch pulls CUDA wheels.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[full,test]"
	touch $(STAMP)

$(ROBOT_STAMP): pyproject.toml
	test -x $(ROBOT_PY) || $(PYTHON) -m venv $(ROBOT_VENV)
	$(ROBOT_PY) -m pip install --quiet --upgrade pip
	$(ROBOT_PY) -m pip install --quiet ".[test-robot]"
	touch $(ROBOT_STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: $(STAMP)
	$(VENV)/bin/reverie run $(RUN_ARGS)

test: $(STAMP) test-robot
	$(VENV)/bin/ruff check .
	@$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest -q --timeout=900 -n $(TEST_WORKERS) -m "not serial"
	$(PY) -m pytest -q --timeout=900 -m serial

# The robot-side tests (modules marked `robot`) in the robot-only install, as a robot computer has it.
test-robot: $(ROBOT_STAMP)
	# The code as it is now (the stamp tracks only the dependencies), installed as a robot would: not editable.
	$(ROBOT_PY) -m pip install --quiet --no-deps --force-reinstall .
	@if $(ROBOT_PY) -c "import torch" 2>/dev/null; then echo "$(ROBOT_VENV) has torch: the robot install must not pull it in"; exit 1; fi
	$(ROBOT_PY) -m pytest -q -m robot --timeout=300 -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	@$(MAKE) --no-print-directory typecheck

# Each code folder linked as reverie/<folder> (mypy does not read setuptools' package-dir), then mypy.
typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK_ROOT) && for p in $(PACKAGES); do ln -sfn ../../../$$p $(TYPECHECK_ROOT)/$$p; done
	$(PY) -m mypy

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV) $(ROBOT_VENV)
