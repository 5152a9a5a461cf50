# Shell helpers shared by scripts/*.sh and scripts/test.d/*.sh. Sourced, never run; each
# script sources it relative to its own location, e.g.
#
#   SCRIPT_TAG=localstack
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# SCRIPT_TAG prefixes every message (`localstack: ...`); messages go to stderr, so a script's
# stdout stays what it prints on purpose (a path, shell exports).

say() { echo "${SCRIPT_TAG:-spillway}: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# python_new_enough PY MIN: true if PY runs and is Python >= 3.MIN. (A pyenv shim for a version
# that is not selected is on PATH but fails to run: it is not new enough.)
python_new_enough() {
  "$1" -c "import sys; sys.exit(sys.version_info < (3, $2))" >/dev/null 2>&1
}

# find_python MIN VAR CANDIDATE...: print a Python >= 3.MIN, or say what to do and fail.
# $VAR (e.g. SPILLWAY_PYTHON), when set, is the only choice: it must be new enough. Otherwise
# the first CANDIDATE (python3.13, python3, ...) on PATH that is new enough, then pyenv's
# installed versions, newest first (they are not on PATH unless selected).
find_python() {
  local min="$1" var="$2" cand root
  shift 2
  local chosen="${!var:-}"
  if [ -n "$chosen" ]; then
    python_new_enough "$chosen" "$min" && { echo "$chosen"; return 0; }
    say "$var=$chosen is not a working Python >= 3.$min"
    return 1
  fi
  for cand in "$@"; do
    if command -v "$cand" >/dev/null 2>&1 && python_new_enough "$cand" "$min"; then
      command -v "$cand"
      return 0
    fi
  done
  root="${PYENV_ROOT:-$HOME/.pyenv}"
  if [ -d "$root/versions" ]; then
    while IFS= read -r cand; do
      if [ -x "$cand" ] && python_new_enough "$cand" "$min"; then
        echo "$cand"
        return 0
      fi
    done < <(printf '%s\n' "$root"/versions/3.*/bin/python3 | sort -V -r)
  fi
  say "no Python >= 3.$min found"
  say "  looked for: \$$var, $* on PATH, $root/versions/3.*"
  say "  install one (e.g. 'pyenv install 3.$min'), or point $var at one."
  return 1
}

# free_port: print a 127.0.0.1 TCP port that was free a moment ago (the OS picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for PID SECONDS COMMAND...: run COMMAND every 0.1 s until it succeeds; fail when the
# process PID exits first or SECONDS pass.
wait_for() {
  local pid="$1" seconds="$2" tries
  shift 2
  for ((tries = seconds * 10; tries > 0; tries--)); do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || {
      say "the process $pid exited during startup"
      return 1
    }
    sleep 0.1
  done
  say "timed out after ${seconds}s"
  return 1
}

# stop_pidfile FILE SECONDS: stop the process whose id is in FILE (only that one: TERM, then
# KILL after SECONDS), then remove FILE. Nothing to do without the file.
stop_pidfile() {
  local file="$1" seconds="$2" pid tries
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((tries = seconds * 10; tries > 0; tries--)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$file"
}
