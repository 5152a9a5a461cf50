# Sourced by scripts/test.sh: a GCS emulator (gcp-storage-emulator, see scripts/gcs-emulator.sh)
# on a free 127.0.0.1 port, for storage-backends/gcs/tests and tests/gcs_*.rs.
# Exports SPILLWAY_TEST_GCS_ENDPOINT and SPILLWAY_TEST_GCS_BUCKET; the emulator is stopped
# when the test command exits.
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
SPILLWAY_GCS_EMULATOR_PORT="$(free_port)"
SPILLWAY_GCS_EMULATOR_LOG="${SPILLWAY_TOOLS_DIR:-$HOME/.cache/spillway-tools}/gcs-emulator-test.log"
export SPILLWAY_GCS_EMULATOR_PORT SPILLWAY_GCS_EMULATOR_LOG
CLEANUP+=("SPILLWAY_GCS_EMULATOR_PORT=$SPILLWAY_GCS_EMULATOR_PORT scripts/gcs-emulator.sh stop")
scripts/gcs-emulator.sh start spillway-test
SPILLWAY_TEST_GCS_ENDPOINT="http://127.0.0.1:$SPILLWAY_GCS_EMULATOR_PORT"
SPILLWAY_TEST_GCS_BUCKET="spillway-test"
export SPILLWAY_TEST_GCS_ENDPOINT SPILLWAY_TEST_GCS_BUCKET
echo "SPILLWAY_TEST_GCS_ENDPOINT=$SPILLWAY_TEST_GCS_ENDPOINT SPILLWAY_TEST_GCS_BUCKET=$SPILLWAY_TEST_GCS_BUCKET"
