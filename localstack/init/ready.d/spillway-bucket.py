# LocalStack init hook (ready stage): creates Spillway's bucket and the lifecycle rule that
# `spillway storage init` would install. LocalStack runs .py hooks inside its own Python process
# (boto3 is part of it); the settings come from the container's environment:
#   SPILLWAY_BUCKET (spillway), SPILLWAY_KEY_PREFIX (spillway/),
#   SPILLWAY_EXPIRE_AFTER_DAYS (1), SPILLWAY_ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS (1),
#   SPILLWAY_HOOK_ENDPOINT (http://127.0.0.1:4566, where LocalStack listens inside the container).
import os

import boto3


def spillway_init():
    bucket = os.environ.get("SPILLWAY_BUCKET", "spillway")
    prefix = os.environ.get("SPILLWAY_KEY_PREFIX", "spillway/")
    expire_days = int(os.environ.get("SPILLWAY_EXPIRE_AFTER_DAYS", "1"))
    abort_days = int(os.environ.get("SPILLWAY_ABORT_INCOMPLETE_UPLOADS_AFTER_DAYS", "1"))
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ.get("SPILLWAY_HOOK_ENDPOINT", "http://127.0.0.1:4566"),
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    # The same rule as `spillway storage init`: same id, so either can replace the other.
    rule = {
        "ID": f"spillway-expire-{prefix}" if prefix else "spillway-expire-whole-bucket",
        "Status": "Enabled",
        "Filter": {"Prefix": prefix},
    }
    if expire_days > 0:
        rule["Expiration"] = {"Days": expire_days}
    if abort_days > 0:
        rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": abort_days}
    if expire_days > 0 or abort_days > 0:
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration={"Rules": [rule]}
        )
    print(f"spillway: bucket {bucket} ready, lifecycle rule {rule['ID']} installed")


# LocalStack exec()s hooks without __name__ == "__main__".
spillway_init()
