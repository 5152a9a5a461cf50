//! The protocol definitions services build: a [`Protocol`] of unary and stream methods, what
//! their handlers receive ([`CallContext`]) and return. The lowest layer of the server: the
//! request handling modules depend on these types, never the other way round.

mod context;
mod stream;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use futures::future::BoxFuture;
use futures::FutureExt;

pub use self::context::CallContext;
pub use self::stream::{StreamMethod, StreamStart, StreamTurn, TurnOutput, CANCEL_KEY};
use crate::error::{Error, Result};
pub use crate::wire::http::is_valid_protocol_name;
use crate::wire::http::RESERVED_PROTOCOL_PREFIX;
use crate::wire::RpcError;

/// What a unary handler returns: the result batch (1 row on the result schema; for a void
/// method, a batch on the empty schema) or an RPC error.
pub type HandlerResult = std::result::Result<RecordBatch, RpcError>;

type UnaryFn = dyn Fn(CallContext, RecordBatch) -> BoxFuture<'static, HandlerResult> + Send + Sync;

/// One unary method: its schemas and handler.
#[derive(Clone)]
pub struct UnaryMethod {
    pub(crate) params: SchemaRef,
    pub(crate) result: SchemaRef,
    pub(crate) handler: Arc<UnaryFn>,
}

impl UnaryMethod {
    /// The parameter schema (one field per parameter, in order).
    pub fn params(&self) -> &SchemaRef {
        &self.params
    }

    /// The result schema (`result: T`, or empty for void).
    pub fn result(&self) -> &SchemaRef {
        &self.result
    }
}

impl fmt::Debug for UnaryMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnaryMethod")
            .field("params", &self.params)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

/// A method of a protocol.
#[derive(Clone, Debug)]
pub enum Method {
    /// Request → one result.
    Unary(UnaryMethod),
    /// A producer or exchange stream.
    Stream(StreamMethod),
}

impl Method {
    /// The parameter schema.
    pub fn params(&self) -> &SchemaRef {
        match self {
            Method::Unary(m) => &m.params,
            Method::Stream(m) => &m.params,
        }
    }
}

/// A protocol: a wire name, an optional semver, and its methods.
///
/// ```
/// use std::sync::Arc;
/// use arrow_array::{Int64Array, RecordBatch};
/// use arrow_schema::{DataType, Field, Schema};
/// use spillway::server::Protocol;
///
/// let params = Arc::new(Schema::new(vec![Field::new("value", DataType::Int64, false)]));
/// let result = Arc::new(Schema::new(vec![Field::new("result", DataType::Int64, false)]));
/// let result_for_handler = result.clone();
/// let protocol = Protocol::new("example.Math.v1")
///     .unwrap()
///     .with_version("1.0.0")
///     .unwrap()
///     .unary("double", params, result, move |_ctx, batch| {
///         let schema = result_for_handler.clone();
///         async move {
///             let v = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
///             Ok(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v * 2]))]).unwrap())
///         }
///     });
/// assert!(protocol.method("double").is_some());
/// ```
#[derive(Clone, Debug)]
pub struct Protocol {
    name: String,
    version: Option<(u64, u64, u64)>,
    methods: BTreeMap<String, Method>,
}

impl Protocol {
    /// A protocol with this wire name (`^[A-Za-z_][A-Za-z0-9_.]*$`, at most 255 bytes; the
    /// `vgi_rpc.` prefix is reserved).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if !is_valid_protocol_name(&name) {
            return Err(Error::Config(format!(
                "invalid protocol name {name:?}: must match ^[A-Za-z_][A-Za-z0-9_.]*$ and be at most 255 bytes"
            )));
        }
        if name.starts_with(RESERVED_PROTOCOL_PREFIX) {
            return Err(Error::Config(format!(
                "protocol name {name:?} uses the reserved prefix vgi_rpc."
            )));
        }
        Ok(Protocol {
            name,
            version: None,
            methods: BTreeMap::new(),
        })
    }

    /// A framework protocol under the reserved `vgi_rpc.` prefix (reflection).
    pub(crate) fn new_reserved(name: &str) -> Self {
        Protocol {
            name: name.to_string(),
            version: None,
            methods: BTreeMap::new(),
        }
    }

    /// Methods by name.
    pub fn methods(&self) -> impl Iterator<Item = (&str, &Method)> {
        self.methods.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Declares the protocol's semver (`MAJOR.MINOR.PATCH`); clients must then send a
    /// matching `vgi_rpc.protocol_version` (major and minor equal).
    pub fn with_version(mut self, version: &str) -> Result<Self> {
        self.version = Some(
            parse_semver(version)
                .ok_or_else(|| Error::Config(format!("invalid protocol version {version:?}")))?,
        );
        Ok(self)
    }

    /// Adds a unary method. `params` has one field per parameter; `result` is `result: T` or
    /// empty for a void method.
    pub fn unary<F, Fut>(
        mut self,
        name: impl Into<String>,
        params: SchemaRef,
        result: SchemaRef,
        handler: F,
    ) -> Self
    where
        F: Fn(CallContext, RecordBatch) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler: Arc<UnaryFn> = Arc::new(move |ctx, batch| handler(ctx, batch).boxed());
        self.methods.insert(
            name.into(),
            Method::Unary(UnaryMethod {
                params,
                result,
                handler,
            }),
        );
        self
    }

    /// Adds a stream method (see [`StreamMethod`] for the producer/exchange builders).
    pub fn stream(mut self, name: impl Into<String>, method: StreamMethod) -> Self {
        self.methods.insert(name.into(), Method::Stream(method));
        self
    }

    /// The wire name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared version.
    pub fn version(&self) -> Option<(u64, u64, u64)> {
        self.version
    }

    /// A method by name.
    pub fn method(&self, name: &str) -> Option<&Method> {
        self.methods.get(name)
    }

    /// Method names.
    pub fn method_names(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }
}

/// Parses canonical `MAJOR.MINOR.PATCH`.
pub fn parse_semver(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v.split('.');
    let mut next = || -> Option<u64> {
        let p = parts.next()?;
        if p.is_empty()
            || (p.len() > 1 && p.starts_with('0'))
            || !p.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        p.parse().ok()
    };
    let out = (next()?, next()?, next()?);
    parts.next().is_none().then_some(out)
}

/// The empty schema (void results, parameterless methods).
pub fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert!(is_valid_protocol_name("spillway.Demo.v1"));
        assert!(is_valid_protocol_name("_x"));
        for bad in ["", "1abc", "a-b", "a/b", "a%2e", &"a".repeat(256)] {
            assert!(!is_valid_protocol_name(bad), "{bad}");
        }
        assert!(Protocol::new("vgi_rpc.Mine").is_err());
        assert_eq!(parse_semver("2.0.7"), Some((2, 0, 7)));
        for bad in ["2.0", "2.0.0.1", "02.0.0", "a.b.c", "2..0", "-1.0.0"] {
            assert_eq!(parse_semver(bad), None, "{bad}");
        }
    }
}
