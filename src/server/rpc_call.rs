//! Which RPC an HTTP request is, and the per-RPC metrics.
//!
//! Every call route (`{prefix}/{protocol}/{method}`, `.../init`, `.../exchange` and the
//! upload-URL route) is one HTTP turn of an RPC: a unary call, or one step of a stream.
//! [`classify`] names it from the matched route template and the hosted protocols, so that
//! only names this server hosts become metric labels: a client can put anything in a path,
//! and a label set it controls would grow without bound.

use std::sync::Arc;
use std::time::Duration;

use super::protocol::{Method, Protocol};
use super::state::AppState;
use crate::wire::http;

/// The label value of a protocol or method this server does not host.
pub(crate) const UNKNOWN: &str = "unknown";

/// Unary call or stream step, as the reference's `method_type` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MethodType {
    /// One request, one result.
    Unary,
    /// One HTTP turn (`/init` or `/exchange`) of a producer or exchange stream.
    Stream,
}

impl MethodType {
    /// `unary` or `stream`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MethodType::Unary => "unary",
            MethodType::Stream => "stream",
        }
    }
}

/// Which stream turn a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// A unary call (or a stream method called at the unary route, which fails).
    Call,
    /// `/init`: the stream starts.
    Init,
    /// `/exchange`: a continuation, an exchange turn or a cancel.
    Exchange,
}

/// The RPC an HTTP request is, by hosted names only.
#[derive(Debug, Clone)]
pub(crate) struct RpcCall {
    /// The hosted protocol, `None` when the path names another.
    pub(crate) protocol: Option<Arc<Protocol>>,
    /// The method name when the protocol hosts it (or the upload-URL method).
    pub(crate) method: Option<String>,
    pub(crate) method_type: MethodType,
}

impl RpcCall {
    /// The `protocol` label: the hosted name, or [`UNKNOWN`].
    pub(crate) fn protocol_label(&self) -> String {
        self.protocol
            .as_ref()
            .map(|p| p.name().to_string())
            .unwrap_or_else(|| UNKNOWN.to_string())
    }

    /// The `method` label: the hosted name, or [`UNKNOWN`].
    pub(crate) fn method_label(&self) -> String {
        self.method.clone().unwrap_or_else(|| UNKNOWN.to_string())
    }
}

/// Names the RPC of a request from its matched `route` template (prefix included) and its
/// `path`; `None` for requests that are not calls (health, storage, 404s, flat routes).
pub(crate) fn classify(st: &AppState, route: &str, path: &str) -> Option<RpcCall> {
    // The template carries the prefix; the path may not (a nested router strips it), so the
    // names are read from the path's end.
    let template = route.strip_prefix(st.config.prefix.as_str())?;
    let upload = format!("/{}/init", http::UPLOAD_METHOD);
    if template == upload {
        let protocol = st.protocols.get(&st.primary_protocol).cloned();
        return Some(RpcCall {
            method: protocol.as_ref().map(|_| http::UPLOAD_METHOD.to_string()),
            protocol,
            method_type: MethodType::Unary,
        });
    }
    let turn = match template {
        "/{protocol}/{method}" => Turn::Call,
        "/{protocol}/{method}/init" => Turn::Init,
        "/{protocol}/{method}/exchange" => Turn::Exchange,
        _ => return None,
    };
    let mut segments = path.rsplit('/');
    if turn != Turn::Call {
        segments.next()?;
    }
    let (method_name, protocol_name) = (segments.next()?, segments.next()?);
    // A percent-encoded name is never decoded into a hosted one (see `request::route`).
    let protocol = (!path.contains('%'))
        .then(|| st.protocols.get(protocol_name))
        .flatten()
        .cloned();
    let method = protocol.as_ref().and_then(|p| p.method(method_name));
    let method_type = match (turn, method) {
        (Turn::Init | Turn::Exchange, _) | (Turn::Call, Some(Method::Stream(_))) => {
            MethodType::Stream
        }
        _ => MethodType::Unary,
    };
    let method = method.map(|_| method_name.to_string());
    Some(RpcCall {
        protocol,
        method,
        method_type,
    })
}

/// Records one RPC turn: `spillway_rpc_calls_total{protocol,method,method_type,status}` and
/// `spillway_rpc_duration_seconds{protocol,method,method_type}`.
pub(crate) fn record(call: &RpcCall, ok: bool, elapsed: Duration) {
    let labels = [
        ("protocol", call.protocol_label()),
        ("method", call.method_label()),
        ("method_type", call.method_type.as_str().to_string()),
        ("status", if ok { "ok" } else { "error" }.to_string()),
    ];
    metrics::counter!("spillway_rpc_calls_total", &labels).increment(1);
    metrics::histogram!("spillway_rpc_duration_seconds", &labels[..3])
        .record(elapsed.as_secs_f64());
}
