#!/usr/bin/env bash
# The project's test command: every test in the workspace, including the interoperability
# tests against the Python reference client (vgi-rpc 0.52.2), which are required here, not
# skipped. The reference is installed into a venv on first use (scripts/vgi-reference.sh).
#
#   ./scripts/test.sh                       all tests
#   ./scripts/test.sh --test python_interop one test target (arguments go to `cargo test`)
#   ./scripts/test.sh -- --nocapture        show the tests' output
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python reference client (vgi-rpc 0.52.2)"
SPILLWAY_VGI_PYTHON="$(scripts/vgi-reference.sh python)"
SPILLWAY_REQUIRE_PYTHON=1
export SPILLWAY_VGI_PYTHON SPILLWAY_REQUIRE_PYTHON
echo "SPILLWAY_VGI_PYTHON=$SPILLWAY_VGI_PYTHON"
echo "SPILLWAY_REQUIRE_PYTHON=$SPILLWAY_REQUIRE_PYTHON"

# --no-fail-fast: report every failing test target, not only the first.
step "cargo test --workspace --no-fail-fast $*"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

if [ "$status" -eq 0 ]; then
  step "all tests passed"
else
  step "TESTS FAILED (cargo test exited with $status)"
fi
exit "$status"
