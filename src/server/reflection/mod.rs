//! `vgi_rpc.Reflection.v1`: the hosted protocols describe themselves.
//!
//! Two unary methods, as in the reference (`vgi_rpc/rpc/_reflection.py`):
//! `list_protocols()` and `describe(protocol: utf8)`, each answering `result: binary` holding a
//! complete one-row IPC stream of the reference's `ProtocolList` / `ServiceDescription`
//! dataclasses. The protocol hash is the reference's `compute_protocol_hash`:
//! `sha256("vgi_rpc.protocol_hash.v1|" + RFC 8785 JSON of the decoded description)`, with
//! the canonical type tokens of `_type_tokens.py`, so every port hashes a protocol alike.
//!
//! Descriptions never change for a server's life, so every answer is encoded once, when the
//! router is built, and each call only copies bytes.

mod encode;
mod hash;
mod shapes;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, BinaryArray, RecordBatch, StringArray};

use self::encode::{arrow_err, encode_description, encode_list, EncodeResult, Summary};
use self::hash::{protocol_hash, UnsupportedType};
use self::shapes::{binary_result, describe_params, reflection_shapes, shapes_of, MethodShape};
use super::protocol::{empty_schema, HandlerResult, Protocol};
use crate::wire::{ErrorCode, RpcError};

/// The reflection protocol's wire name.
pub(crate) const REFLECTION_PROTOCOL: &str = "vgi_rpc.Reflection.v1";

/// Every answer, encoded once.
struct Catalog {
    /// `list_protocols`' answer, or why it cannot be given.
    list: EncodeResult<Vec<u8>>,
    /// `describe`'s answers by protocol name.
    descriptions: HashMap<String, EncodeResult<Vec<u8>>>,
    /// Hosted names, in listing order (for the not-hosted error).
    hosted: Vec<String>,
}

fn version_string(p: &Protocol) -> String {
    p.version()
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_default()
}

fn build_catalog(server_id: &str, primary: &str, hosted: &[Arc<Protocol>]) -> Catalog {
    // Registration order, primary first, one entry per name (the last registration wins, as
    // in dispatch), reflection itself last.
    let mut ordered: Vec<(String, String, Vec<MethodShape>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut unique: Vec<&Arc<Protocol>> = hosted
        .iter()
        .rev()
        .filter(|p| p.name() != REFLECTION_PROTOCOL && seen.insert(p.name().to_string()))
        .collect();
    unique.reverse();
    unique.sort_by_key(|p| p.name() != primary);
    for p in unique {
        ordered.push((p.name().to_string(), version_string(p), shapes_of(p)));
    }
    ordered.push((
        REFLECTION_PROTOCOL.to_string(),
        String::new(),
        reflection_shapes(),
    ));

    let mut summaries = Vec::with_capacity(ordered.len());
    let mut descriptions = HashMap::new();
    let mut list_error = None;
    for (name, version, shapes) in &ordered {
        match protocol_hash(name, shapes) {
            Ok(hash) => {
                let summary = Summary {
                    protocol: name.clone(),
                    version: version.clone(),
                    hash,
                };
                descriptions.insert(name.clone(), encode_description(&summary, shapes));
                summaries.push(summary);
            }
            Err(UnsupportedType(t)) => {
                let msg = format!(
                    "protocol {name:?} has no protocol hash: arrow type {t} has no canonical token"
                );
                tracing::warn!("{msg}");
                list_error.get_or_insert_with(|| msg.clone());
                descriptions.insert(name.clone(), Err(msg));
            }
        }
    }
    let list = match list_error {
        Some(e) => Err(e),
        None => encode_list(server_id, &summaries),
    };
    Catalog {
        list,
        descriptions,
        hosted: ordered.into_iter().map(|(n, _, _)| n).collect(),
    }
}

/// Each protocol's hash, by name (reflection's own included when hosted), for the access
/// log. A protocol with a type that has no canonical token (which reflection reports as an
/// error) gets the hash of its name alone, so its records still carry a well-formed digest.
pub(crate) fn protocol_hashes<'a>(
    hosted: impl Iterator<Item = &'a Arc<Protocol>>,
) -> HashMap<String, String> {
    hosted
        .map(|p| {
            let shapes = if p.name() == REFLECTION_PROTOCOL {
                reflection_shapes()
            } else {
                shapes_of(p)
            };
            let hash = protocol_hash(p.name(), &shapes)
                .or_else(|_| protocol_hash(p.name(), &[]))
                .unwrap_or_default();
            (p.name().to_string(), hash)
        })
        .collect()
}

fn answer(bytes: &EncodeResult<Vec<u8>>) -> HandlerResult {
    let bytes = bytes.as_ref().map_err(|e| RpcError::internal(e.clone()))?;
    RecordBatch::try_new(
        binary_result(),
        vec![Arc::new(BinaryArray::from_iter_values([bytes.as_slice()]))],
    )
    .map_err(|e| RpcError::internal(arrow_err(e)))
}

fn describe(catalog: &Catalog, params: &RecordBatch) -> HandlerResult {
    let name = params
        .column_by_name("protocol")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .filter(|c| c.len() == 1 && c.is_valid(0))
        .map(|c| c.value(0))
        .ok_or_else(|| RpcError::invalid_argument("describe needs one non-null 'protocol'"))?;
    match catalog.descriptions.get(name) {
        Some(bytes) => answer(bytes),
        None => Err(RpcError::new(
            "ProtocolNotSupportedError",
            format!(
                "This server does not host protocol '{name}'. Hosted: {:?}.",
                catalog.hosted
            ),
        )
        .with_code(ErrorCode::Unimplemented)
        .with_kind("protocol_not_supported")),
    }
}

/// The reflection protocol over `hosted` (in registration order; `primary` first in
/// listings, reflection itself last). `server_id` is reported by `list_protocols`.
pub(crate) fn protocol(server_id: &str, primary: &str, hosted: &[Arc<Protocol>]) -> Protocol {
    let catalog = Arc::new(build_catalog(server_id, primary, hosted));
    let for_list = catalog.clone();
    Protocol::new_reserved(REFLECTION_PROTOCOL)
        .unary(
            "list_protocols",
            empty_schema(),
            binary_result(),
            move |_ctx, _params| {
                let out = answer(&for_list.list);
                async move { out }
            },
        )
        .unary(
            "describe",
            describe_params(),
            binary_result(),
            move |_ctx, params| {
                let out = describe(&catalog, &params);
                async move { out }
            },
        )
}
