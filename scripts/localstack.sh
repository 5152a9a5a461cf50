#!/usr/bin/env bash
# LocalStack's S3 in host mode (no Docker), with presigned-URL signature and expiry checks ON.
# The S3 backend's tests run against it (scripts/test.d/20-localstack.env.sh).
#
#   scripts/localstack.sh start   install if needed, start on 127.0.0.1:$LOCALSTACK_PORT, wait until ready
#   scripts/localstack.sh stop    stop the instance this script started (by its pid file)
#   scripts/localstack.sh env     print the client settings as shell exports
#
# LocalStack validates SigV4 signatures against the secret key "test" (any access key id), and
# needs path-style addressing on 127.0.0.1. State (venv, log, pid file) lives under
# ${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}; LOCALSTACK_PORT defaults to 4566.
# The venv holds localstack-core, pinned with localstack/host-constraints.txt, installed by pip
# from the package index it is configured with; it needs a Python >= 3.12 (PATH or pyenv, or
# SPILLWAY_PYTHON).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}"
PORT="${LOCALSTACK_PORT:-4566}"
VERSION="2026.3.0"
VENV="$TOOLS_DIR/localstack-$VERSION-venv"
PIDFILE="$TOOLS_DIR/localstack-$PORT.pid"
LOG="$TOOLS_DIR/localstack-$PORT.log"
# LocalStack's own directories (state, temp files, init hooks) for this instance only.
FS_ROOT="$TOOLS_DIR/localstack-$PORT-fs"
MIN_MINOR=12
SCRIPT_TAG=localstack
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import localstack.runtime.main, service_identity, OpenSSL, cbor2" >/dev/null 2>&1
}

install() {
  venv_ok && return 0
  local py
  py="$(find_python "$MIN_MINOR" SPILLWAY_PYTHON python3.13 python3.12 python3.14 python3)" ||
    die "localstack-core $VERSION needs a Python >= 3.$MIN_MINOR"
  mkdir -p "$TOOLS_DIR"
  say "installing localstack-core $VERSION into $VENV (with $py)"
  "$py" -m venv --clear "$VENV" >&2 || die "'$py -m venv' failed"
  # The constraints pin every dependency to versions this LocalStack release works with; the
  # gateway's TLS stack (pyopenssl, service_identity) and cbor2 are needed but not declared.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "localstack-core[base-runtime]==$VERSION" cbor2 pyopenssl cryptography service_identity \
    -c "$ROOT/localstack/host-constraints.txt" >&2 ||
    die "pip could not install localstack-core $VERSION (is the package index reachable?)"
  venv_ok || die "the venv at $VENV is incomplete after installing; remove it and retry"
}

# Stops the instance of this port (by its pid file, only that process).
stop() { stop_pidfile "$PIDFILE" 10; }

ready() {
  "$VENV/bin/python" - "http://127.0.0.1:$PORT/_localstack/health" >/dev/null 2>&1 <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if json.load(r).get("services", {}).get("s3") in ("running", "available") else 1)
PY
}

start() {
  install
  stop
  mkdir -p "$TOOLS_DIR"
  rm -rf "$FS_ROOT"
  mkdir -p "$FS_ROOT"
  # S3_SKIP_SIGNATURE_VALIDATION=0: presigned URLs are checked (signature and expiry), as on
  # AWS. DNS_ADDRESS=0: no DNS server. Telemetry off: no traffic beyond loopback.
  # OVERRIDE_IN_DOCKER=0 + FILESYSTEM_ROOT: inside a container (a CI machine may be one)
  # LocalStack would otherwise use /var/lib/localstack and /etc/localstack/init, shared with
  # any other instance.
  OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$FS_ROOT" \
    GATEWAY_LISTEN="127.0.0.1:$PORT" SERVICES=s3 EAGER_SERVICE_LOADING=1 PERSISTENCE=0 \
    S3_SKIP_SIGNATURE_VALIDATION=0 LOCALSTACK_TELEMETRY_DISABLED=1 DISABLE_EVENTS=1 DNS_ADDRESS=0 \
    SKIP_SSL_CERT_DOWNLOAD=1 LOCALSTACK_HOST="127.0.0.1:$PORT" \
    nohup "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  # A bounded poll: the gateway takes a few seconds to come up.
  if wait_for "$(cat "$PIDFILE")" 60 ready; then
    say "s3 ready on http://127.0.0.1:$PORT (log: $LOG)"
    return 0
  fi
  tail -n 30 "$LOG" >&2
  stop
  die "localstack did not become ready within 60 s"
}

case "${1:-}" in
  start) start ;;
  stop)
    stop
    rm -rf "$FS_ROOT"
    ;;
  env)
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_REGION=us-east-1"
    echo "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true"
    ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
