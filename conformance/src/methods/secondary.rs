//! `conformance.Secondary.v1`, the second protocol every conformance worker hosts: an echo that
//! collides with the primary's by name (routing is by protocol and method), and `fail` /
//! `fail_oversized`, which raise the error code and kind the caller names, with the fixed
//! structured details of the reference (`secondary.py`).

use std::sync::Arc;

use arrow_array::StringArray;
use serde_json::{json, Value};
use spillway::wire::{ErrorCode, RpcError};

use super::Registrar;
use crate::error::Result;
use crate::pyrepr::str_repr;

/// What `echo_string` prepends, so that a mis-routed call is a wrong answer.
pub(crate) const ECHO_PREFIX: &str = "secondary:";

/// The error type the reference's `StatusError` carries on the wire.
const STATUS_ERROR: &str = "StatusError";

/// The protocol's wire name, which the fixed details mention.
const PROTOCOL: &str = "conformance.Secondary.v1";

/// Size of the `ErrorInfo` padding `fail_oversized` carries: over the 4 KiB cap on its own.
const OVERSIZED_PADDING_BYTES: usize = 5000;

/// `RetryInfo(retry_delay_seconds)`: a whole number travels as an integer (`7`, not `7.0`).
fn retry_info(delay: f64) -> Value {
    let value = if delay.fract() == 0.0 && delay.abs() < 9.0e15 {
        json!(delay as i64)
    } else {
        json!(delay)
    };
    json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": value})
}

/// The details every `fail` carries, in wire order: `ErrorInfo`, `RetryInfo` when the delay
/// is positive, then a detail type no client knows (clients must ignore it).
fn fail_details(retry_delay_seconds: f64) -> Vec<Value> {
    let mut details =
        vec![json!({"@type": "vgi_rpc.ErrorInfo", "metadata": {"fixture": PROTOCOL}})];
    if retry_delay_seconds > 0.0 {
        details.push(retry_info(retry_delay_seconds));
    }
    details.push(json!({
        "@type": format!("{PROTOCOL}.Probe"),
        "note": "clients ignore detail types they do not know",
    }));
    details
}

pub(super) fn register(r: Registrar) -> Result<Registrar> {
    r.sync("echo_string", |call| {
        let value = call.string("value")?;
        call.reply(Arc::new(StringArray::from(vec![format!(
            "{ECHO_PREFIX}{value}"
        )])))
    })?
    .sync("fail", |call| {
        let code = call.string("code")?;
        let kind = call.string("kind")?;
        let delay = call.float("retry_delay_seconds")?;
        Err(fail(&code, &kind, delay))
    })?
    .sync("fail_oversized", |_call| {
        // RetryInfo first and small: a server that dropped only the element that does not fit
        // (rather than the whole array, as it must) would turn the error retryable.
        let padding = "x".repeat(OVERSIZED_PADDING_BYTES);
        Err(RpcError::new(
            STATUS_ERROR,
            "conformance.Secondary.v1 fail_oversized: details exceed 4 KiB",
        )
        .with_code(ErrorCode::ResourceExhausted)
        .with_kind("details_oversized")
        .with_details(vec![
            retry_info(1.0),
            json!({"@type": "vgi_rpc.ErrorInfo", "metadata": {"padding": padding}}),
        ]))
    })
}

/// The error `fail(code, kind, delay)` raises: that code and kind with the fixed details, or
/// `INVALID_ARGUMENT` / `invalid_code` with a `BadRequest` naming the field when `code` is not
/// one of the canonical names.
fn fail(code: &str, kind: &str, retry_delay_seconds: f64) -> RpcError {
    let parsed = ErrorCode::parse(code);
    if parsed.as_str() != code {
        return RpcError::new(
            STATUS_ERROR,
            format!("{} is not a canonical error code", str_repr(code)),
        )
        .with_code(ErrorCode::InvalidArgument)
        .with_kind("invalid_code")
        .with_details(vec![json!({
            "@type": "vgi_rpc.BadRequest",
            "field_violations": [
                {"field": "code", "description": "must be a canonical code name"}
            ],
        })]);
    }
    let message = format!("conformance.Secondary.v1 fail: {code} {kind}");
    let error = RpcError::new(STATUS_ERROR, message.trim_end())
        .with_code(parsed)
        .with_details(fail_details(retry_delay_seconds));
    if kind.is_empty() {
        error
    } else {
        error.with_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_raises_the_named_code_and_kind() {
        let e = fail("UNAVAILABLE", "backend_down", 0.0);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.kind.as_deref(), Some("backend_down"));
        assert_eq!(
            e.message,
            "conformance.Secondary.v1 fail: UNAVAILABLE backend_down"
        );
        let e = fail("INTERNAL", "", 2.5);
        assert_eq!(e.kind, None);
        assert_eq!(e.message, "conformance.Secondary.v1 fail: INTERNAL");
        let e = fail("NOT_A_CODE", "x", 1.0);
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(e.kind.as_deref(), Some("invalid_code"));
        assert_eq!(fail("UNKNOWN", "", 0.0).code, ErrorCode::Unknown);
    }

    fn details(e: &RpcError) -> Vec<Value> {
        serde_json::from_str(e.details().unwrap()).unwrap()
    }

    #[test]
    fn fail_carries_the_reference_details_in_order() {
        let d = details(&fail("UNAVAILABLE", "x", 7.0));
        assert_eq!(d.len(), 3);
        assert_eq!(d[0]["@type"], "vgi_rpc.ErrorInfo");
        assert_eq!(d[0]["metadata"]["fixture"], PROTOCOL);
        // A whole delay travels as an integer.
        assert_eq!(
            d[1].to_string(),
            r#"{"@type":"vgi_rpc.RetryInfo","retry_delay_seconds":7}"#
        );
        assert_eq!(d[2]["@type"], "conformance.Secondary.v1.Probe");
        let d = details(&fail("UNAVAILABLE", "x", 0.5));
        assert_eq!(d[1]["retry_delay_seconds"], 0.5);
        // No RetryInfo unless the delay is positive.
        assert_eq!(details(&fail("INTERNAL", "", 0.0)).len(), 2);
        let bad = fail("NOPE", "", 1.0);
        assert_eq!(bad.message, "'NOPE' is not a canonical error code");
        assert_eq!(details(&bad)[0]["field_violations"][0]["field"], "code");
    }
}
