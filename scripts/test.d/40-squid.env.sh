# Sourced by scripts/test.sh: squid, a real forward proxy, for tests/client_proxy.rs (the
# client's HTTP_PROXY/NO_PROXY handling); each test starts its own on a free 127.0.0.1 port
# with a config of its own. .ci/run installs the Debian package when it is missing. Exports
# SPILLWAY_TEST_SQUID (the binary); without it the proxy tests fail (SPILLWAY_REQUIRE_SERVERS=1).
SCRIPT_TAG=squid
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
SPILLWAY_TEST_SQUID="$(command -v squid || true)"
if [ -z "$SPILLWAY_TEST_SQUID" ] && [ -x /usr/sbin/squid ]; then
  SPILLWAY_TEST_SQUID=/usr/sbin/squid
fi
if [ -n "$SPILLWAY_TEST_SQUID" ]; then
  export SPILLWAY_TEST_SQUID
  echo "SPILLWAY_TEST_SQUID=$SPILLWAY_TEST_SQUID"
else
  say "squid not found (apt-get install squid): the proxy tests will fail"
fi
