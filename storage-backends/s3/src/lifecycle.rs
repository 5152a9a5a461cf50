//! `spillway storage init` for S3: the bucket, and a lifecycle rule for orphaned objects.
//!
//! Externalized objects outlive their presigned URLs and nothing else deletes them, so the
//! bucket needs a lifecycle rule expiring the key prefix; the same rule aborts multipart
//! uploads that never completed (a crashed server cannot abort its own).

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint,
    CreateBucketConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter,
};
use aws_sdk_s3::Client;
use spillway_storage::{InitOptions, StorageError};

use crate::errors::{classify, no_such_bucket, Failure};

/// The id of the lifecycle rule Spillway manages for `key_prefix` (rule ids are at most 255
/// characters; key prefixes at most 512).
pub fn lifecycle_rule_id(key_prefix: &str) -> String {
    let mut id = if key_prefix.is_empty() {
        "spillway-expire-whole-bucket".to_string()
    } else {
        format!("spillway-expire-{key_prefix}")
    };
    id.truncate(255);
    id
}

/// The rule `spillway storage init` installs, or `None` when `opts` ask for no rule.
pub fn lifecycle_rule(key_prefix: &str, opts: &InitOptions) -> Option<LifecycleRule> {
    if opts.expire_after_days == 0 && opts.abort_incomplete_uploads_after_days == 0 {
        return None;
    }
    let mut rule = LifecycleRule::builder()
        .id(lifecycle_rule_id(key_prefix))
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix(key_prefix).build());
    if opts.expire_after_days > 0 {
        rule = rule.expiration(
            LifecycleExpiration::builder()
                .days(opts.expire_after_days.min(i32::MAX as u32) as i32)
                .build(),
        );
    }
    if opts.abort_incomplete_uploads_after_days > 0 {
        rule = rule.abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(
                    opts.abort_incomplete_uploads_after_days
                        .min(i32::MAX as u32) as i32,
                )
                .build(),
        );
    }
    // Only the status is required, and it is set.
    rule.build().ok()
}

pub(crate) async fn init(
    client: &Client,
    bucket: &str,
    region: &str,
    key_prefix: &str,
    opts: &InitOptions,
) -> Result<String, StorageError> {
    let mut report = Vec::new();
    let backend = |op: &str, f: Failure| match f {
        Failure::NoSuchBucket
        | Failure::Other(_)
        | Failure::Unavailable(_)
        | Failure::Throttled(_) => f.into_storage_error(bucket),
        other => StorageError::Backend(format!("s3 {op} {bucket}: {other:?}")),
    };
    let what = format!("s3://{bucket}");
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => report.push(format!("bucket {bucket} exists")),
        Err(e) => match classify("HeadBucket", &what, &e) {
            Failure::NoSuchKey | Failure::NoSuchBucket if opts.create_bucket => {
                let mut create = client.create_bucket().bucket(bucket);
                // us-east-1 is the one region that must not be named as a location constraint.
                if region != "us-east-1" {
                    create = create.create_bucket_configuration(
                        CreateBucketConfiguration::builder()
                            .location_constraint(BucketLocationConstraint::from(region))
                            .build(),
                    );
                }
                match create.send().await {
                    Ok(_) => report.push(format!("created bucket {bucket} in {region}")),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
                    {
                        report.push(format!("bucket {bucket} exists"))
                    }
                    Err(e) => {
                        return Err(backend("CreateBucket", classify("CreateBucket", &what, &e)))
                    }
                }
            }
            Failure::NoSuchKey | Failure::NoSuchBucket => return Err(no_such_bucket(bucket)),
            other => return Err(backend("HeadBucket", other)),
        },
    }

    let Some(rule) = lifecycle_rule(key_prefix, opts) else {
        report.push("no lifecycle rule requested (expiry and abort both 0); existing rules left as they are".into());
        return Ok(report.join("\n"));
    };
    let id = lifecycle_rule_id(key_prefix);
    let existing = match client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => out.rules.unwrap_or_default(),
        Err(e) => match classify("GetBucketLifecycleConfiguration", &what, &e) {
            Failure::Other(m) if m.contains("NoSuchLifecycleConfiguration") => Vec::new(),
            other => return Err(backend("GetBucketLifecycleConfiguration", other)),
        },
    };
    let replaced = existing.iter().any(|r| r.id() == Some(id.as_str()));
    let mut rules: Vec<LifecycleRule> = existing
        .into_iter()
        .filter(|r| r.id() != Some(id.as_str()))
        .collect();
    let kept = rules.len();
    rules.push(rule);
    let config = BucketLifecycleConfiguration::builder()
        .set_rules(Some(rules))
        .build()
        .map_err(|e| StorageError::Backend(format!("lifecycle configuration: {e}")))?;
    client
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(config)
        .send()
        .await
        .map_err(|e| {
            backend(
                "PutBucketLifecycleConfiguration",
                classify("PutBucketLifecycleConfiguration", &what, &e),
            )
        })?;
    let scope = if key_prefix.is_empty() {
        format!("every object in s3://{bucket} (the key prefix is empty)")
    } else {
        format!("objects under s3://{bucket}/{key_prefix}")
    };
    let mut actions = Vec::new();
    if opts.expire_after_days > 0 {
        actions.push(format!(
            "expire {scope} {} day(s) after upload",
            opts.expire_after_days
        ));
    }
    if opts.abort_incomplete_uploads_after_days > 0 {
        actions.push(format!(
            "abort incomplete multipart uploads {} day(s) after they started",
            opts.abort_incomplete_uploads_after_days
        ));
    }
    report.push(format!(
        "{} lifecycle rule {id}: {}; {kept} other rule(s) kept",
        if replaced { "replaced" } else { "installed" },
        actions.join(", ")
    ));
    Ok(report.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_the_options() {
        let opts = InitOptions {
            create_bucket: false,
            expire_after_days: 3,
            abort_incomplete_uploads_after_days: 1,
        };
        let rule = lifecycle_rule("spillway/", &opts).unwrap();
        assert_eq!(rule.id(), Some("spillway-expire-spillway/"));
        assert_eq!(rule.status(), &ExpirationStatus::Enabled);
        assert_eq!(rule.filter().and_then(|f| f.prefix()), Some("spillway/"));
        assert_eq!(rule.expiration().and_then(|e| e.days()), Some(3));
        assert_eq!(
            rule.abort_incomplete_multipart_upload()
                .and_then(|a| a.days_after_initiation()),
            Some(1)
        );
        let only_abort = InitOptions {
            expire_after_days: 0,
            ..opts.clone()
        };
        let rule = lifecycle_rule("", &only_abort).unwrap();
        assert!(rule.expiration().is_none());
        assert_eq!(rule.id(), Some("spillway-expire-whole-bucket"));
        let none = InitOptions {
            expire_after_days: 0,
            abort_incomplete_uploads_after_days: 0,
            ..opts
        };
        assert!(lifecycle_rule("p/", &none).is_none());
        assert_eq!(lifecycle_rule_id(&"a/".repeat(200)).len(), 255);
    }
}
