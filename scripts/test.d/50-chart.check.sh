#!/usr/bin/env bash
# The Helm chart tests (tests/chart): lint charts/spillway strictly, render it with the
# defaults and every charts/spillway/ci/*.yaml, validate each manifest against the Kubernetes
# schemas, and check what matters in them. Run by scripts/test.sh after `cargo test`.
#
# Needs no helm binary and no cluster: helm-python-sdk embeds Helm 4 and kubernetes-validate
# ships the schemas. Both, with pytest, are installed at the versions pinned in
# tests/chart/requirements.txt into a venv under ${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}
# (from the package index pip is configured with), with a Python >= 3.10: $SPILLWAY_CHART_PYTHON,
# else the first new enough python3.X / python3 on PATH, else pyenv's installed versions.
#
#   scripts/test.d/50-chart.check.sh [PYTEST ARGS...]    e.g. -k s3 -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

REQUIREMENTS=tests/chart/requirements.txt
TOOLS_DIR="${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}"
MIN_MINOR=10 # helm-python-sdk needs Python >= 3.10

SCRIPT_TAG=chart-tests
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

PY="$(find_python "$MIN_MINOR" SPILLWAY_CHART_PYTHON python3 python3.13 python3.12 python3.11 python3.10)" ||
  die "the chart tests need a Python >= 3.$MIN_MINOR"
PY_VERSION="$("$PY" -c 'import platform; print(platform.python_version())')"
# The venv is keyed by the pins and the interpreter: changing either builds a fresh one.
KEY="$( (cat "$REQUIREMENTS"; echo "$PY_VERSION") | sha256sum | cut -c1-12)"
VENV="$TOOLS_DIR/chart-tests-$KEY-venv"
MARKER="$VENV/.spillway-installed"

if [ ! -f "$MARKER" ] || [ ! -x "$VENV/bin/python" ]; then
  say "installing $(grep -cv '^\s*\(#\|$\)' "$REQUIREMENTS") pinned packages into $VENV (Python $PY_VERSION)"
  mkdir -p "$TOOLS_DIR"
  # --clear: a venv left half-built by an interrupted install starts over.
  "$PY" -m venv --clear "$VENV" >&2 ||
    die "'$PY -m venv' failed (on Debian/Ubuntu system Pythons, install the python3.X-venv package)"
  # Binary wheels only: helm-python-sdk's source build would need Go.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    -r "$REQUIREMENTS" >&2 ||
    die "pip could not install $REQUIREMENTS (is the package index reachable? is there a wheel for this platform?)"
  "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, pytest, yaml' ||
    die "the venv at $VENV is incomplete after installing; remove it and retry"
  touch "$MARKER"
fi
"$VENV/bin/python" -c 'import helm_python as h; print("chart-tests: Helm", h.helm_sdk_version(), "via helm-python-sdk", h.__version__)' >&2

status=0
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m pytest tests/chart "$@" || status=$?
case "$status" in
  0) ;;
  5) die "pytest collected no tests in tests/chart" ;;
  *) die "chart tests failed (pytest exit status $status)" ;;
esac
