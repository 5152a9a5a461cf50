# Sourced by scripts/test.sh: a real OTLP receiver for tests/otel.rs, oteltest's `otelsink`
# (pinned), in a venv of its own under ${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}.
# Each test starts its own receiver (tests/python/otel_sink.py, on an ephemeral port). Exports
# SPILLWAY_OTEL_SINK_PYTHON (the venv's python); without it the OpenTelemetry tests fail
# (SPILLWAY_REQUIRE_SERVERS=1).
SCRIPT_TAG=otel-sink
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
OTELTEST_VERSION="0.49.0"
otel_sink_venv="${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}/oteltest-$OTELTEST_VERSION-venv"
otel_sink_ok() {
  "$otel_sink_venv/bin/python" -c 'import oteltest.sink' >/dev/null 2>&1 &&
    [ "$("$otel_sink_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("oteltest"))' 2>/dev/null)" = "$OTELTEST_VERSION" ]
}
if ! otel_sink_ok; then
  # oteltest needs Python >= 3.10.
  otel_sink_py="$(find_python 10 SPILLWAY_PYTHON python3.14 python3.13 python3 || true)"
  if [ -n "$otel_sink_py" ]; then
    say "installing oteltest==$OTELTEST_VERSION into $otel_sink_venv"
    mkdir -p "$(dirname "$otel_sink_venv")"
    "$otel_sink_py" -m venv --clear "$otel_sink_venv" >&2 &&
      "$otel_sink_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "oteltest==$OTELTEST_VERSION" >&2 ||
      say "could not install oteltest==$OTELTEST_VERSION (is the package index reachable?)"
  fi
fi
if otel_sink_ok; then
  SPILLWAY_OTEL_SINK_PYTHON="$otel_sink_venv/bin/python"
  export SPILLWAY_OTEL_SINK_PYTHON
  echo "SPILLWAY_OTEL_SINK_PYTHON=$SPILLWAY_OTEL_SINK_PYTHON"
else
  say "no otelsink: the OpenTelemetry tests will fail"
fi
