# Sourced by scripts/test.sh: LocalStack's S3 in host mode (scripts/localstack.sh, no Docker),
# with presigned-URL signature and expiry checks on, on a free 127.0.0.1 port, for
# storage-backends/s3/tests and tests/s3_*.rs. Stopped when the test command exits.
# Exports SPILLWAY_TEST_S3_ENDPOINT and the AWS settings LocalStack accepts (any access key id,
# secret key "test"); the tests create their own buckets. Instance metadata is disabled so the
# AWS credential and region chains never leave the machine.
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
LOCALSTACK_PORT="$(free_port)"
export LOCALSTACK_PORT
CLEANUP+=("LOCALSTACK_PORT=$LOCALSTACK_PORT scripts/localstack.sh stop")
scripts/localstack.sh start
SPILLWAY_TEST_S3_ENDPOINT="http://127.0.0.1:$LOCALSTACK_PORT"
AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test
AWS_REGION=us-east-1
AWS_EC2_METADATA_DISABLED=true
export SPILLWAY_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_EC2_METADATA_DISABLED
echo "SPILLWAY_TEST_S3_ENDPOINT=$SPILLWAY_TEST_S3_ENDPOINT"
