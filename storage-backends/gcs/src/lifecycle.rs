//! `spillway storage init` for GCS: the bucket, and a lifecycle rule expiring Spillway's
//! objects.
//!
//! The rule is `{"action": {"type": "Delete"}, "condition": {"age": N, "matchesPrefix":
//! [prefix]}}`: Cloud Storage deletes an object under the key prefix once it is N days old
//! (deletion runs asynchronously, usually within a day of the object qualifying). Other rules
//! of the bucket are kept; a previous Spillway rule for the same prefix (a `Delete` rule whose
//! only conditions are an age and exactly this prefix) is replaced.

use http::StatusCode;
use spillway_storage::{InitOptions, StorageError};

use crate::api::{Bucket, JsonApi};

/// Read-modify-write rounds tried when someone else changes the bucket concurrently.
const ROUNDS: usize = 3;

/// The rule Spillway installs.
pub(crate) fn spillway_rule(prefix: &str, days: u32) -> serde_json::Value {
    serde_json::json!({
        "action": { "type": "Delete" },
        "condition": { "age": days, "matchesPrefix": [prefix] },
    })
}

/// Whether `rule` is one Spillway installs for `prefix` (whatever its age).
fn is_spillway_rule(rule: &serde_json::Value, prefix: &str) -> bool {
    let delete = rule.pointer("/action/type").and_then(|t| t.as_str()) == Some("Delete")
        && rule
            .get("action")
            .and_then(|a| a.as_object())
            .is_some_and(|a| a.len() == 1);
    let condition = rule.get("condition").and_then(|c| c.as_object());
    let ours = condition.is_some_and(|c| {
        c.len() == 2
            && c.get("age").is_some_and(|a| a.is_u64())
            && c.get("matchesPrefix") == Some(&serde_json::json!([prefix]))
    });
    delete && ours
}

/// The bucket's rules with Spillway's rule for `prefix` set to `days`; `None` if that is
/// already so.
pub(crate) fn merge_rules(
    existing: &[serde_json::Value],
    prefix: &str,
    days: u32,
) -> Option<Vec<serde_json::Value>> {
    let wanted = spillway_rule(prefix, days);
    let ours: Vec<&serde_json::Value> = existing
        .iter()
        .filter(|r| is_spillway_rule(r, prefix))
        .collect();
    if ours.len() == 1 && ours[0].pointer("/condition/age") == wanted.pointer("/condition/age") {
        return None;
    }
    let mut rules: Vec<serde_json::Value> = existing
        .iter()
        .filter(|r| !is_spillway_rule(r, prefix))
        .cloned()
        .collect();
    rules.push(wanted);
    Some(rules)
}

fn manual_instructions(bucket: &str, prefix: &str, days: u32) -> String {
    let rule = serde_json::json!({ "rule": [spillway_rule(prefix, days)] });
    format!(
        "an administrator can add it to the bucket's lifecycle configuration (merging with \
         existing rules), e.g. `gcloud storage buckets update gs://{bucket} \
         --lifecycle-file=FILE` with FILE holding {rule}"
    )
}

/// Runs `spillway storage init` against the bucket; returns the report.
pub(crate) async fn init(
    api: &JsonApi,
    bucket: &str,
    prefix: &str,
    project: Option<&str>,
    opts: &InitOptions,
) -> Result<String, StorageError> {
    let mut report = Vec::new();
    let days = opts.expire_after_days;
    let not_installed = |report: &mut Vec<String>, why: String| {
        tracing::warn!(bucket, reason = %why, "gcs lifecycle rule not installed");
        report.push(format!(
            "lifecycle rule NOT installed: {why}; {}",
            manual_instructions(bucket, prefix, days)
        ));
    };

    let mut current = match api.get_bucket().await? {
        Bucket::Found(b) => Some(b),
        Bucket::Missing if opts.create_bucket => {
            let project = project.ok_or_else(|| {
                StorageError::Config(format!(
                    "bucket {bucket} does not exist; creating it needs a project \
                     (SPILLWAY_GCS_PROJECT)"
                ))
            })?;
            if api.create_bucket(project).await? {
                report.push(format!("created bucket {bucket} in project {project}"));
            } else {
                report.push(format!("bucket {bucket} already exists"));
            }
            None
        }
        Bucket::Missing => {
            return Err(StorageError::Config(format!(
                "bucket {bucket} does not exist (pass --create-bucket to create it)"
            )))
        }
        // Objects may be usable without bucket-metadata permissions: report, do not fail.
        Bucket::Denied(why) => {
            not_installed(
                &mut report,
                format!("cannot read the bucket's metadata ({why})"),
            );
            return Ok(report.join("\n"));
        }
    };

    if days == 0 {
        report.push("no lifecycle rule requested (expire after 0 days)".into());
        return Ok(report.join("\n"));
    }
    if prefix.is_empty() {
        not_installed(
            &mut report,
            "the key prefix is empty, so the rule would expire every object in the bucket".into(),
        );
        return Ok(report.join("\n"));
    }

    for _ in 0..ROUNDS {
        let bucket_meta = match current.take() {
            Some(b) => b,
            None => match api.get_bucket().await? {
                Bucket::Found(b) => b,
                Bucket::Missing => {
                    return Err(StorageError::Backend(format!(
                        "bucket {bucket} disappeared during init"
                    )))
                }
                Bucket::Denied(why) => {
                    not_installed(
                        &mut report,
                        format!("cannot read the bucket's metadata ({why})"),
                    );
                    return Ok(report.join("\n"));
                }
            },
        };
        let existing: Vec<serde_json::Value> = bucket_meta
            .pointer("/lifecycle/rule")
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default();
        let Some(rules) = merge_rules(&existing, prefix, days) else {
            report.push(format!(
                "lifecycle rule already installed: objects under {prefix:?} are deleted {days} \
                 day(s) after creation"
            ));
            return Ok(report.join("\n"));
        };
        let metageneration = bucket_meta
            .get("metageneration")
            .and_then(|m| m.as_str())
            .unwrap_or("0")
            .to_string();
        let reply = api.set_lifecycle(&metageneration, &rules).await?;
        match reply.status {
            s if s.is_success() => {
                report.push(format!(
                    "lifecycle rule installed: objects under {prefix:?} are deleted {days} day(s) \
                     after creation ({} rule(s) on the bucket)",
                    rules.len()
                ));
                return Ok(report.join("\n"));
            }
            // Changed since we read it: read again and redo the merge.
            StatusCode::PRECONDITION_FAILED => continue,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let err = api.failure("update bucket lifecycle", &reply, None);
                not_installed(&mut report, err.to_string());
                return Ok(report.join("\n"));
            }
            _ => return Err(api.failure("update bucket lifecycle", &reply, None)),
        }
    }
    Err(StorageError::Backend(format!(
        "bucket {bucket}'s metadata kept changing; lifecycle rule not installed, run init again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rule_has_the_documented_shape() {
        assert_eq!(
            spillway_rule("spillway/", 3),
            json!({"action": {"type": "Delete"}, "condition": {"age": 3, "matchesPrefix": ["spillway/"]}})
        );
    }

    #[test]
    fn merging_keeps_other_rules_and_replaces_ours() {
        let other_prefix = spillway_rule("other/", 7);
        let archive = json!({"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"}, "condition": {"age": 30}});
        let narrower = json!({"action": {"type": "Delete"}, "condition": {"age": 1, "matchesPrefix": ["spillway/"], "isLive": false}});
        let existing = vec![
            other_prefix.clone(),
            spillway_rule("spillway/", 7),
            archive.clone(),
            narrower.clone(),
        ];

        let merged = merge_rules(&existing, "spillway/", 1).unwrap();
        assert_eq!(
            merged,
            vec![
                other_prefix.clone(),
                archive.clone(),
                narrower.clone(),
                spillway_rule("spillway/", 1)
            ]
        );
        // Applying it again changes nothing.
        assert_eq!(merge_rules(&merged, "spillway/", 1), None);
        // A different age replaces the rule rather than adding one.
        let changed = merge_rules(&merged, "spillway/", 2).unwrap();
        assert_eq!(changed.len(), 4);
        assert_eq!(changed[3], spillway_rule("spillway/", 2));
        // Duplicates of our rule collapse into one.
        let dup = vec![spillway_rule("spillway/", 1), spillway_rule("spillway/", 1)];
        assert_eq!(
            merge_rules(&dup, "spillway/", 1).unwrap(),
            vec![spillway_rule("spillway/", 1)]
        );
        assert_eq!(
            merge_rules(&[], "p/", 1).unwrap(),
            vec![spillway_rule("p/", 1)]
        );
    }

    #[test]
    fn instructions_carry_the_rule() {
        let text = manual_instructions("b", "p/", 2);
        assert!(text.contains("gs://b"), "{text}");
        assert!(text.contains(r#""matchesPrefix":["p/"]"#), "{text}");
    }
}
