# reasoning_seg developer entry points. Everything runs inside .venv (see scripts/setup.sh and
# DEVELOPERS.md); `make setup` is idempotent and takes seconds once done.
#
#   make setup   create/refresh .venv, build the ROS interfaces, pip install -e .
#   make test    setup, then lint and the whole test suite
#   make lint    setup, then ruff
#   make demo    setup, then the end-to-end demo into out/demo
#   make benchmark  setup, then every bench/experiments/*.yaml -> out/bench/<name>, bench/results/<name>.md
#   make format  ruff's autofixes and formatter on the Python sources
#   make clean   drop the interface build (ros2_ws/build, install, log) and caches
#   make distclean  clean, and remove .venv too

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Directories that exist in this checkout (an empty bench/ is not tracked by git).
PY_DIRS := $(wildcard src tests bench)
ENV := source scripts/env.sh
PYTEST_ARGS ?=
DEMO_ARGS ?=
EXPERIMENTS ?= $(wildcard bench/experiments/*.yaml)
BENCH_ARGS ?=

.PHONY: help setup test lint format demo benchmark clean distclean

help:
	@sed -n 's/^#   //p' Makefile

setup:
	@bash scripts/setup.sh

lint: setup
	@$(ENV) && ruff check $(PY_DIRS)

test: setup
	@$(ENV) && ruff check $(PY_DIRS)
	@$(ENV) && pytest -q $(PYTEST_ARGS)

demo: setup
	@$(ENV) && python -m reasoning_seg.ros.demo --out out/demo $(DEMO_ARGS)

benchmark: setup
	@$(ENV) && for e in $(EXPERIMENTS); do n=$$(basename $$e .yaml); \
	  python -m reasoning_seg.eval.benchmark $$e --out out/bench/$$n --table bench/results/$$n.md $(BENCH_ARGS); done

format: setup
	@$(ENV) && ruff check --fix $(PY_DIRS) && ruff format $(PY_DIRS)

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log .cache .pytest_cache .ruff_cache
	find src tests $(wildcard bench) -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf .venv
