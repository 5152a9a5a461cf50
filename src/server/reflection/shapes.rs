//! Each method's wire surface, as the description and the hash see it.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::server::protocol::{empty_schema, Method, Protocol};

/// One method's wire surface, as the description and the hash see it.
pub(super) struct MethodShape {
    pub(super) name: String,
    pub(super) params: SchemaRef,
    pub(super) kind: ShapeKind,
}

pub(super) enum ShapeKind {
    /// `result` is `None` for a void method (empty result schema).
    Unary { result: Option<SchemaRef> },
    Stream {
        header: Option<SchemaRef>,
        exchange: bool,
    },
}

impl MethodShape {
    pub(super) fn method_type(&self) -> &'static str {
        match self.kind {
            ShapeKind::Unary { .. } => "unary",
            ShapeKind::Stream { .. } => "stream",
        }
    }

    pub(super) fn result(&self) -> Option<&SchemaRef> {
        match &self.kind {
            ShapeKind::Unary { result } => result.as_ref(),
            ShapeKind::Stream { .. } => None,
        }
    }

    pub(super) fn header(&self) -> Option<&SchemaRef> {
        match &self.kind {
            ShapeKind::Unary { .. } => None,
            ShapeKind::Stream { header, .. } => header.as_ref(),
        }
    }

    pub(super) fn stream_kind(&self) -> &'static str {
        match self.kind {
            ShapeKind::Unary { .. } => "",
            ShapeKind::Stream { exchange: true, .. } => "exchange",
            ShapeKind::Stream {
                exchange: false, ..
            } => "producer",
        }
    }
}

/// A protocol's shapes, sorted by method name (the reference sorts; `Protocol` is a BTreeMap).
pub(super) fn shapes_of(protocol: &Protocol) -> Vec<MethodShape> {
    protocol
        .methods()
        .map(|(name, method)| MethodShape {
            name: name.to_string(),
            params: method.params().clone(),
            kind: match method {
                Method::Unary(m) => ShapeKind::Unary {
                    result: (!m.result.fields().is_empty()).then(|| m.result.clone()),
                },
                Method::Stream(m) => ShapeKind::Stream {
                    header: m.header.clone(),
                    exchange: m.is_exchange(),
                },
            },
        })
        .collect()
}

pub(super) fn describe_params() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "protocol",
        DataType::Utf8,
        false,
    )]))
}

pub(super) fn binary_result() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Binary,
        false,
    )]))
}

/// Reflection's own shapes: it is listed and described like any other protocol.
pub(super) fn reflection_shapes() -> Vec<MethodShape> {
    vec![
        MethodShape {
            name: "describe".to_string(),
            params: describe_params(),
            kind: ShapeKind::Unary {
                result: Some(binary_result()),
            },
        },
        MethodShape {
            name: "list_protocols".to_string(),
            params: empty_schema(),
            kind: ShapeKind::Unary {
                result: Some(binary_result()),
            },
        },
    ]
}
