#!/usr/bin/env bash
# The vgi-rpc 0.52.2 conformance suite (HTTP) against spillway-conformance, the ConformanceService
# worker built on Spillway's server API (conformance/). Run by scripts/test.sh after `cargo test`.
#
#   scripts/test.d/60-conformance.check.sh                    Spillway; fails if a test listed in
#                                                             tests/conformance/expected_pass.txt
#                                                             does not pass
#   scripts/test.d/60-conformance.check.sh --reference        the Python reference worker, same
#                                                             harness (counts only)
#   scripts/test.d/60-conformance.check.sh --update-expected  rewrite expected_pass.txt from a
#                                                             Spillway run
#   ... -- PYTEST-ARGS                                        extra pytest arguments (counts
#                                                             only: no expected-pass gate)
#
# VGI_SERVER_CMD, when set, names the worker to test instead of building target/debug's.
#
# The harness is tests/conformance/conftest.py: it starts the worker once per fixture with the
# fixture's flags and reads PORT:<n>. Deselected: the groups that need a byte-stream transport,
# which an HTTP-only server does not have (TestExternalByteStream, TestAdversarialRawRequestContract),
# and the describe group, whose fixture the harness does not provide (it errors against the
# reference too).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

mode=spillway
pytest_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --reference) mode=reference ;;
    --update-expected) mode=update ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "usage: $0 [--reference|--update-expected] [-- PYTEST-ARGS]" >&2; exit 2 ;;
  esac
  shift
done

DESELECT="not TestExternalByteStream and not TestAdversarialRawRequestContract"
DESELECT+=" and not TestDescribeConformance"

python="$(scripts/vgi-reference.sh python)"
# The suite also needs pytest-timeout (every test carries a timeout marker) and psutil (imported
# by its resource-soak module); the reference venv has neither.
if ! "$python" -c "import pytest_timeout, psutil" >/dev/null 2>&1; then
  echo "installing pytest-timeout and psutil into the reference venv" >&2
  "$python" -m pip install --quiet --disable-pip-version-check "pytest-timeout>=2" "psutil>=5" >&2
fi

if [ "$mode" = reference ]; then
  unset VGI_SERVER_CMD # conftest.py then runs serve_ref.py, the Python reference worker
  label="conformance (python reference)"
elif [ -n "${VGI_SERVER_CMD:-}" ]; then
  export VGI_SERVER_CMD
  label="conformance ($VGI_SERVER_CMD)"
else
  cargo build -p spillway-conformance
  target_dir="${CARGO_TARGET_DIR:-target}"
  case "$target_dir" in
    /*) ;; # an absolute CARGO_TARGET_DIR is used as it is
    *) target_dir="$PWD/$target_dir" ;;
  esac
  export VGI_SERVER_CMD="$target_dir/debug/spillway-conformance"
  label="conformance (spillway)"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
(
  cd tests/conformance
  PYTHONDONTWRITEBYTECODE=1 "$python" -m pytest -p no:cacheprovider -q --timeout 120 \
    --junitxml="$work/results.xml" -k "$DESELECT" test_conformance.py \
    "${pytest_args[@]+"${pytest_args[@]}"}" >"$work/pytest.log" 2>&1
) || status=$?
# pytest exits 1 when some tests failed (the summary below says which, and the expected-pass
# list decides); anything else means the run itself broke.
if [ "$status" -gt 1 ] || [ ! -s "$work/results.xml" ]; then
  cat "$work/pytest.log"
  echo "conformance: pytest did not complete (exit status $status)" >&2
  exit 1
fi
echo "pytest: $(tail -n 1 "$work/pytest.log")"

summarize=("$python" tests/conformance/summarize.py "$work/results.xml" --label "$label")
if [ "${#pytest_args[@]}" -gt 0 ] && [ "$mode" != reference ]; then
  mode=partial # a partial run cannot be held to the full expected list
fi
case "$mode" in
  partial) "${summarize[@]}" ;;
  reference) "${summarize[@]}" ;;
  update) "${summarize[@]}" --expected tests/conformance/expected_pass.txt --write-expected ;;
  spillway) "${summarize[@]}" --expected tests/conformance/expected_pass.txt ;;
esac
