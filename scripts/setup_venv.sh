#!/usr/bin/env bash
# Create .venv (once) and install internalrl into it. torch is pinned to 2.13.0 (the CPU build
# these machines carry); an unpinned torch would pull several GB of CUDA packages. Ray (the
# `ray` extra) comes along so that the tests run a tiny experiment matrix on a local Ray cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.internalrl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup_venv.sh -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,ant,ray]"
  touch "$stamp"
fi
