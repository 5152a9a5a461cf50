#!/usr/bin/env bash
# The project's test command: every test in the workspace, against real servers.
#
#   ./scripts/test.sh                                   all tests
#   ./scripts/test.sh --test servers python_interop::   one module of one test binary (the root
#                                                       tests are the binaries integration, servers
#                                                       and fetch_metrics; arguments go to `cargo test`)
#   ./scripts/test.sh -- --nocapture                    show the tests' output
#
# Each suite's setup lives in scripts/test.d/, run in name order:
#   NN-name.env.sh    sourced before `cargo test`: installs and starts a server (LocalStack,
#                     a GCS emulator, ...) and exports what the tests need; it may append a
#                     command to CLEANUP, run when this script exits, whatever happens.
#   NN-name.check.sh  run after `cargo test` (test suites that are not cargo tests).
# Tests that need a server are required here, not skipped (SPILLWAY_REQUIRE_SERVERS=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

CLEANUP=()
cleanup() {
  local c
  for c in "${CLEANUP[@]+"${CLEANUP[@]}"}"; do eval "$c" || true; done
}
trap cleanup EXIT

export SPILLWAY_REQUIRE_SERVERS=1
for env_script in scripts/test.d/*.env.sh; do
  [ -e "$env_script" ] || continue
  step "setup: $env_script"
  # shellcheck source=/dev/null
  . "$env_script"
done

# --no-fail-fast: report every failing test target, not only the first.
step "cargo test --workspace --no-fail-fast $*"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

if [ "$#" -eq 0 ]; then
  for check in scripts/test.d/*.check.sh; do
    [ -e "$check" ] || continue
    step "check: $check"
    bash "$check" || status=$?
  done
fi

if [ "$status" -eq 0 ]; then
  step "all tests passed"
else
  step "TESTS FAILED (exit status $status)"
fi
exit "$status"
