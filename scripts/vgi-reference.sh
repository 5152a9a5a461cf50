#!/usr/bin/env bash
# The Python reference implementation of vgi-rpc (0.52.2), for interoperability tests.
#
#   scripts/vgi-reference.sh python    install if needed, then print the venv's python path
#   scripts/vgi-reference.sh install   install if needed (progress on stderr), print nothing
#   scripts/vgi-reference.sh find-python   print the base interpreter a new venv would use
#
# The venv lives under ${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools} and holds
# vgi-rpc[http,external,cli]==0.52.2 (the library and its command line), pytest, and jsonschema
# (for the reference's access-log validator, vgi_rpc.access_log_conformance), from the package
# index pip is configured with.
# vgi-rpc 0.52.2 needs Python >= 3.13: set SPILLWAY_PYTHON to choose the interpreter, otherwise
# the first of python3.14, python3.13, python3 on PATH that is new enough is used, then
# pyenv's installed versions (which are not on PATH unless selected).
# Only the venv's path goes to stdout; everything else goes to stderr.
set -euo pipefail

VGI_RPC_VERSION="0.52.2"
MIN_MINOR=13 # Python 3.13
TOOLS_DIR="${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}"
VENV="$TOOLS_DIR/vgi-rpc-$VGI_RPC_VERSION-venv"

SCRIPT_TAG=vgi-reference
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Print a Python interpreter of at least 3.$MIN_MINOR, or fail with a message saying what to do.
vgi_python() {
  find_python "$MIN_MINOR" SPILLWAY_PYTHON python3.14 python3.13 python3 || {
    say "vgi-rpc $VGI_RPC_VERSION requires it."
    return 1
  }
}

# True if the venv is complete: the pinned vgi-rpc with its http/external extras, pytest and
# the plugins the conformance suite uses (pytest-timeout, psutil), and jsonschema (the access-log
# validator's; a venv made before it was added fails this check and is rebuilt).
venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VGI_RPC_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as md
import sys

assert md.version("vgi-rpc") == sys.argv[1]
import pyarrow  # noqa: F401
import psutil  # noqa: F401
import pytest  # noqa: F401
import pytest_timeout  # noqa: F401
import jsonschema  # noqa: F401
import vgi_rpc.external  # noqa: F401
import vgi_rpc.http  # noqa: F401
import vgi_rpc.cli  # noqa: F401  (the vgi-rpc command line, [cli])
EOF
}

# The packages of the venv, as pip takes them.
PACKAGES=("vgi-rpc[http,external,cli]==$VGI_RPC_VERSION" "pytest>=8" "pytest-timeout>=2" "psutil>=5" "jsonschema>=4")

pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
}

install() {
  venv_ok && return 0
  # A venv made before a package was added gets it in place (pip keeps what is there), so a
  # test using the venv at the same time is not disturbed.
  if [ -x "$VENV/bin/python" ]; then
    say "completing $VENV (${PACKAGES[*]})"
    if pip_install && venv_ok; then
      say "installed."
      return 0
    fi
    say "could not complete it; rebuilding"
  fi
  local py
  py="$(vgi_python)" || exit 1
  say "installing vgi-rpc[http,external,cli]==$VGI_RPC_VERSION, pytest and jsonschema into $VENV"
  say "  with $py ($("$py" -c 'import platform; print(platform.python_version())'))"
  mkdir -p "$TOOLS_DIR"
  # --clear: a venv left half-built by an interrupted install starts over.
  if ! "$py" -m venv --clear "$VENV" >&2; then
    die "'$py -m venv' failed (on Debian/Ubuntu system Pythons, install the python3.X-venv package)"
  fi
  if ! pip_install; then
    die "pip could not install vgi-rpc[http,external,cli]==$VGI_RPC_VERSION (is the package index reachable?)"
  fi
  venv_ok || die "the venv at $VENV is still incomplete after installing; remove it and retry"
  say "installed."
}

case "${1:-}" in
  python)
    install
    echo "$VENV/bin/python"
    ;;
  install) install ;;
  find-python) vgi_python ;;
  *)
    echo "usage: $0 python|install|find-python" >&2
    exit 2
    ;;
esac
