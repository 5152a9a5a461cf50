//! `spillway describe`: the protocols a server hosts and their methods, from
//! `vgi_rpc.Reflection.v1`, as text or as one JSON document with stable keys.

use arrow_schema::Schema;
use serde_json::{json, Value};

use super::call::{describe_fields, type_name};
use super::{init_tracing, DescribeArgs, DescribeFormat};
use crate::client::reflection::{
    is_reflection_unavailable, MethodDescription, ProtocolDescription, ProtocolList,
    REFLECTION_PROTOCOL,
};
use crate::client::Client;
use crate::config::LogFormat;
use crate::error::{Error, Result};

/// Runs `spillway describe`.
pub(super) async fn run(args: DescribeArgs) -> Result<()> {
    init_tracing("warn", LogFormat::Text);
    let client = Client::new(&args.client.url, args.client.client_config()?)?;
    let list = client.list_protocols().await.map_err(|e| {
        if is_reflection_unavailable(&e) {
            Error::Config(format!(
                "the server does not answer {REFLECTION_PROTOCOL} ({e}): SPILLWAY_REFLECTION \
                 may be off on the server; without it, call methods with `spillway call \
                 PROTOCOL.METHOD --kind unary|producer|exchange name:TYPE=value ...`"
            ))
        } else {
            e
        }
    })?;
    let names: Vec<String> = match &args.protocol {
        Some(p) if !list.protocols.iter().any(|s| &s.protocol == p) => {
            return Err(Error::Config(format!(
                "protocol {p:?} is not hosted by the server; it hosts {}",
                list.names().join(", ")
            )))
        }
        Some(p) => vec![p.clone()],
        None => list.protocols.iter().map(|p| p.protocol.clone()).collect(),
    };
    let mut described = Vec::with_capacity(names.len());
    for name in &names {
        described.push(client.describe_protocol(name).await?);
    }
    let text = match args.format {
        DescribeFormat::Json => {
            let doc = to_json(&list, &described);
            serde_json::to_string_pretty(&doc)
                .map_err(|e| Error::Internal(format!("json encoding failed: {e}")))?
        }
        DescribeFormat::Table => to_text(&list, &described, args.protocol.is_some()),
    };
    println!("{text}");
    Ok(())
}

fn fields_json(schema: &Schema) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| {
                json!({
                    "name": f.name(),
                    "type": type_name(f.data_type()),
                    "nullable": f.is_nullable(),
                })
            })
            .collect(),
    )
}

fn method_json(m: &MethodDescription) -> Value {
    json!({
        "name": m.name,
        "type": m.kind().as_str(),
        "method_type": m.method_type,
        "has_return": m.has_return,
        "has_header": m.has_header,
        "idempotency": m.idempotency,
        "deprecated": m.deprecated,
        "deprecation_message": m.deprecation_message,
        "params": fields_json(&m.params),
        "result": m.result.as_deref().map(fields_json),
        "header": m.header.as_deref().map(fields_json),
    })
}

/// The JSON document: keys are stable (added to, never renamed).
fn to_json(list: &ProtocolList, described: &[ProtocolDescription]) -> Value {
    json!({
        "server_id": list.server_id,
        "server_version": list.server_version,
        "request_version": list.request_version,
        "protocols": described.iter().map(|d| json!({
            "protocol": d.summary.protocol,
            "protocol_version": d.summary.protocol_version,
            "protocol_hash": d.summary.protocol_hash,
            "deprecated": d.summary.deprecated,
            "deprecation_message": d.summary.deprecation_message,
            "methods": d.methods.iter().map(method_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Text for people; the reflection protocol's own methods are shown only when asked for.
fn to_text(list: &ProtocolList, described: &[ProtocolDescription], asked: bool) -> String {
    let mut out = vec![
        format!("server_id: {}", list.server_id),
        format!("server_version: {}", list.server_version),
        format!("request_version: {}", list.request_version),
        String::new(),
        "protocols:".to_string(),
    ];
    for p in &list.protocols {
        let version = if p.protocol_version.is_empty() {
            String::new()
        } else {
            format!(" v{}", p.protocol_version)
        };
        let deprecated = if p.deprecated { " (deprecated)" } else { "" };
        out.push(format!(
            "  {}{version}{deprecated}  hash {}",
            p.protocol, p.protocol_hash
        ));
    }
    for d in described {
        if d.summary.protocol == REFLECTION_PROTOCOL && !asked {
            continue;
        }
        out.push(String::new());
        out.push(format!("{}:", d.summary.protocol));
        for m in &d.methods {
            let deprecated = if m.deprecated { ", deprecated" } else { "" };
            out.push(format!("  {} ({}{deprecated})", m.name, m.kind()));
            out.push(format!("    params: {}", describe_fields(&m.params)));
            if let Some(r) = &m.result {
                out.push(format!("    returns: {}", fields_only(r)));
            }
            if let Some(h) = &m.header {
                out.push(format!("    header: {}", fields_only(h)));
            }
            if m.idempotency != "unknown" && !m.idempotency.is_empty() {
                out.push(format!("    idempotency: {}", m.idempotency));
            }
        }
    }
    out.join("\n")
}

fn fields_only(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
        .collect::<Vec<_>>()
        .join(", ")
}
