#!/usr/bin/env bash
# A Google Cloud Storage emulator for developing and testing the gcs backend: the PyPI package
# gcp-storage-emulator, in memory, on 127.0.0.1.
#
#   scripts/gcs-emulator.sh start [BUCKET...]   install if needed, start, create the buckets
#                                               (default: one bucket, spillway-dev)
#   scripts/gcs-emulator.sh stop                stop the emulator this script started
#   scripts/gcs-emulator.sh env                 print the settings that point spillway at it:
#                                               eval "$(scripts/gcs-emulator.sh env)"
#
# The port is $SPILLWAY_GCS_EMULATOR_PORT (default 9023). State (venv, log, pid file) lives
# under ${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}; the pid file is per port, so the
# test command's emulator (scripts/test.d/30-gcs-emulator.env.sh, on a free port) and a
# developer's one do not stop each other. $SPILLWAY_GCS_EMULATOR_LOG overrides the log file
# (default gcs-emulator-PORT.log there).
#
# The emulator needs Python >= 3.10: set SPILLWAY_PYTHON, or the first of python3.13 ...
# python3.10, python3 on PATH that is new enough is used, then pyenv's installed versions.
#
# Fidelity patches. Spillway starts the emulator through a small launcher that makes object
# downloads carry the headers real Cloud Storage sends and the emulator leaves out:
# `Content-Encoding` (the stored encoding: Spillway's clients decode zstd objects by it),
# `x-goog-generation`, `x-goog-metageneration`, `x-goog-stored-content-length`,
# `x-goog-stored-content-encoding` (the google-cloud-storage crate requires the generation on
# every read) and `Accept-Ranges: bytes`; and it builds resumable-upload session URLs with the
# port it listens on when the request's Host header has none (the client library sends the
# host without the port, and the emulator would otherwise send uploads to port 80).
# Known limits that remain (covered by unit tests instead): it never checks signed-URL
# signatures or expiry, answers 501 to HEAD on the XML API, ignores suffix ranges, ignores
# ifGenerationMatch/ifMetagenerationMatch, and serves one request at a time.
set -euo pipefail

EMULATOR_VERSION="2026.7.19"
MIN_MINOR=10 # Python 3.10
TOOLS_DIR="${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}"
VENV="$TOOLS_DIR/gcp-storage-emulator-$EMULATOR_VERSION-venv"
PORT="${SPILLWAY_GCS_EMULATOR_PORT:-9023}"
PIDFILE="$TOOLS_DIR/gcs-emulator-$PORT.pid"
LOG="${SPILLWAY_GCS_EMULATOR_LOG:-$TOOLS_DIR/gcs-emulator-$PORT.log}"
LAUNCHER="$VENV/spillway_gcs_emulator.py"

SCRIPT_TAG=gcs-emulator
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$EMULATOR_VERSION" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as md
import sys

assert md.version("gcp-storage-emulator") == sys.argv[1]
import gcp_storage_emulator.server  # noqa: F401
EOF
}

install() {
  if ! venv_ok; then
    local py
    py="$(find_python "$MIN_MINOR" SPILLWAY_PYTHON python3.13 python3.12 python3.11 python3.10 python3)" ||
      exit 1
    say "installing gcp-storage-emulator==$EMULATOR_VERSION into $VENV (with $py)"
    mkdir -p "$TOOLS_DIR"
    "$py" -m venv --clear "$VENV" >&2 || die "'$py -m venv' failed (Debian: install python3.X-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "gcp-storage-emulator==$EMULATOR_VERSION" >&2 ||
      die "pip could not install gcp-storage-emulator==$EMULATOR_VERSION (is the package index reachable?)"
    venv_ok || die "the venv at $VENV is incomplete after installing; remove it and retry"
  fi
  write_launcher
}

# The launcher: patches download responses (see the header of this file), then runs the
# emulator in memory and creates the buckets named on its command line.
write_launcher() {
  cat >"$LAUNCHER.tmp" <<'EOF'
"""gcp-storage-emulator with the download headers real Cloud Storage sends (Spillway tests)."""
import logging
import sys
import threading

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects

_original_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _original_download(request, response, storage, *args, **kwargs)
    if int(response.status) not in (200, 206):
        return
    try:
        obj = storage.get_file_obj(
            request.params["bucket_name"], request.params["object_id"]
        )
    except NotFound:
        return
    encoding = obj.get("contentEncoding") or ""
    if encoding:
        response["Content-Encoding"] = encoding
    response["x-goog-stored-content-encoding"] = encoding or "identity"
    response["x-goog-stored-content-length"] = str(obj.get("size") or 0)
    response["x-goog-generation"] = str(obj.get("generation") or 1)
    response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)
    response["Accept-Ranges"] = "bytes"


# The client library sends `Host: 127.0.0.1` without the port (right for Google's frontends),
# and the emulator builds resumable-upload session URLs from the Host header: fall back to the
# address it listens on when the header has no port.
_original_request_init = server.Request.__init__


def request_init(self, request_handler, method):
    _original_request_init(self, request_handler, method)
    host = request_handler.headers.get("Host") or ""
    if ":" not in host.rsplit("]", 1)[-1]:
        address = request_handler.server.server_address
        self._base_url = "http://{}:{}".format(address[0], address[1])
        self._full_url = self._base_url + self._path


server.Request.__init__ = request_init

# objects.get calls download by name; the route table holds the function itself.
objects.download = download
server.HANDLERS = tuple(
    (regex, {m: (download if f is _original_download else f) for m, f in handlers.items()})
    for regex, handlers in server.HANDLERS
)


def main():
    host, port, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    srv = server.create_server(host, port, in_memory=True)
    srv.start()
    storage = srv._storage
    for name in names:
        buckets.create_bucket(name, storage)
    print("gcs emulator ready on http://{}:{}".format(host, port), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
EOF
  mv "$LAUNCHER.tmp" "$LAUNCHER"
}

# ready: the emulator answers its health endpoint with "OK".
ready() {
  "$VENV/bin/python" - "$PORT" >/dev/null 2>&1 <<'EOF'
import sys
import urllib.request

with urllib.request.urlopen("http://127.0.0.1:%d/" % int(sys.argv[1]), timeout=1) as r:
    sys.exit(0 if r.read() == b"OK" else 1)
EOF
}

case "${1:-}" in
  start)
    shift
    [ "$#" -gt 0 ] || set -- spillway-dev
    install
    stop_pidfile "$PIDFILE" 5
    # Something else answering on the port would pass the readiness check below.
    if "$VENV/bin/python" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$PORT" 2>/dev/null; then
      die "port $PORT is already in use (set SPILLWAY_GCS_EMULATOR_PORT)"
    fi
    mkdir -p "$TOOLS_DIR"
    nohup "$VENV/bin/python" "$LAUNCHER" 127.0.0.1 "$PORT" "$@" >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    if ! wait_for "$(cat "$PIDFILE")" 30 ready; then
      tail -20 "$LOG" >&2 || true
      stop_pidfile "$PIDFILE" 5
      die "the emulator did not start (log: $LOG)"
    fi
    say "ready on http://127.0.0.1:$PORT (buckets: ${*:-none}; log: $LOG)"
    ;;
  stop) stop_pidfile "$PIDFILE" 5 ;;
  env)
    cat <<EOF
export SPILLWAY_STORAGE=gcs
export SPILLWAY_BUCKET=spillway-dev
export SPILLWAY_GCS_ENDPOINT=http://127.0.0.1:$PORT
export SPILLWAY_GCS_ANONYMOUS=true
# URLs are signed with a throwaway key Google publishes for signing tests (the emulator does
# not check signatures); use a real service-account key against real Cloud Storage.
export SPILLWAY_GCS_CREDENTIALS_FILE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/storage-backends/gcs/tests/data/test_service_account.not-a-test.json
EOF
    ;;
  *)
    echo "usage: $0 start [BUCKET...]|stop|env" >&2
    exit 2
    ;;
esac
