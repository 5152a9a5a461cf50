//! The Arrow schemas of the conformance protocols, exactly as vgi-rpc 0.52 derives them.
//!
//! The Python client builds every request from these schemas and the server checks names,
//! types and nullability, so they cannot be approximated. `tests/conformance/dump_schemas.py`
//! asks vgi-rpc itself for them (its method introspection for params and results, the reference
//! implementation's `Stream` objects for stream output/input schemas, and the dataclasses'
//! `ARROW_SCHEMA`), and writes `schemas/conformance_service.json`, which is embedded here. Each
//! schema is stored as an empty Arrow IPC stream (schema message + EOS), in hex.

use std::collections::BTreeMap;
use std::io::Cursor;

use arrow_ipc::reader::StreamReader;
use arrow_schema::SchemaRef;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The generated catalog, embedded at build time.
const CATALOG_JSON: &str = include_str!("../schemas/conformance_service.json");

/// Wire name of the primary protocol.
pub const PRIMARY: &str = "ConformanceService";
/// Wire name of the secondary protocol every conformance worker hosts.
pub const SECONDARY: &str = "conformance.Secondary.v1";

#[derive(Deserialize)]
struct RawCatalog {
    vgi_rpc_version: String,
    protocols: BTreeMap<String, RawProtocol>,
    dataclasses: BTreeMap<String, RawSchema>,
}

#[derive(Deserialize)]
struct RawProtocol {
    protocol_version: Option<String>,
    methods: BTreeMap<String, RawMethod>,
}

#[derive(Deserialize)]
struct RawMethod {
    kind: String,
    params: RawSchema,
    result: Option<RawSchema>,
    header: Option<RawHeader>,
    #[serde(default)]
    variants: Vec<RawVariant>,
}

#[derive(Deserialize)]
struct RawSchema {
    ipc_hex: String,
}

#[derive(Deserialize)]
struct RawHeader {
    dataclass: String,
    ipc_hex: String,
}

#[derive(Deserialize)]
struct RawVariant {
    #[serde(default)]
    args: serde_json::Map<String, serde_json::Value>,
    output: Option<RawSchema>,
    input: Option<RawSchema>,
    raises: Option<String>,
}

/// What kind of call a method is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// Request → one result.
    Unary,
    /// A stream whose input schema is empty: the server produces batches.
    Producer,
    /// A stream the client feeds with input batches.
    Exchange,
}

/// The output and input schemas one call of a stream method produces. They are decided when
/// the stream starts, so a method whose schema depends on its arguments has several variants.
#[derive(Debug, Clone)]
pub struct StreamVariant {
    /// The arguments (a subset) that select this variant; empty when there is one variant.
    pub args: serde_json::Map<String, serde_json::Value>,
    /// The output schema, or `None` when the method fails on init by design.
    pub output: Option<SchemaRef>,
    /// The input schema (empty for producers), or `None` when the method fails on init.
    pub input: Option<SchemaRef>,
    /// The error the reference raises on init, e.g. `RuntimeError: intentional init error`.
    pub raises: Option<String>,
}

/// The schemas of one method.
#[derive(Debug, Clone)]
pub struct MethodSchemas {
    /// Unary, producer or exchange.
    pub kind: MethodKind,
    /// The request's parameter schema.
    pub params: SchemaRef,
    /// The unary result schema (`result: T`, or empty for void); `None` for streams.
    pub result: Option<SchemaRef>,
    /// A stream's header: the dataclass name and its schema.
    pub header: Option<(String, SchemaRef)>,
    /// A stream's output/input schemas.
    pub variants: Vec<StreamVariant>,
}

/// The methods of one protocol.
#[derive(Debug, Clone)]
pub struct ProtocolSchemas {
    name: String,
    /// The declared `protocol_version`, if any.
    pub version: Option<String>,
    methods: BTreeMap<String, MethodSchemas>,
}

impl ProtocolSchemas {
    /// The protocol's wire name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A method's schemas.
    pub fn method(&self, name: &str) -> Result<&MethodSchemas> {
        self.methods
            .get(name)
            .ok_or_else(|| Error::Catalog(format!("{} has no method {name:?}", self.name)))
    }

    /// A unary method's (params, result) schemas.
    pub fn unary(&self, name: &str) -> Result<(SchemaRef, SchemaRef)> {
        let m = self.method(name)?;
        match (&m.kind, &m.result) {
            (MethodKind::Unary, Some(result)) => Ok((m.params.clone(), result.clone())),
            _ => Err(Error::Catalog(format!(
                "{}.{name} is not a unary method",
                self.name
            ))),
        }
    }

    /// Every method, by name.
    pub fn methods(&self) -> impl Iterator<Item = (&str, &MethodSchemas)> {
        self.methods.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Every schema the worker needs.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The vgi-rpc version the catalog was generated from.
    pub vgi_rpc_version: String,
    protocols: BTreeMap<String, ProtocolSchemas>,
    dataclasses: BTreeMap<String, SchemaRef>,
}

impl Catalog {
    /// Parses the embedded catalog.
    pub fn load() -> Result<Self> {
        Self::parse(CATALOG_JSON)
    }

    /// Parses a catalog in the generator's JSON form.
    pub fn parse(json: &str) -> Result<Self> {
        let raw: RawCatalog = serde_json::from_str(json)
            .map_err(|e| Error::Catalog(format!("not the generator's json: {e}")))?;
        let mut protocols = BTreeMap::new();
        for (name, p) in raw.protocols {
            let mut methods = BTreeMap::new();
            for (method, m) in p.methods {
                let what = format!("{name}.{method}");
                methods.insert(method, parse_method(&what, m)?);
            }
            protocols.insert(
                name.clone(),
                ProtocolSchemas {
                    name,
                    version: p.protocol_version,
                    methods,
                },
            );
        }
        let mut dataclasses = BTreeMap::new();
        for (name, s) in raw.dataclasses {
            let schema = decode_schema(&name, &s.ipc_hex)?;
            dataclasses.insert(name, schema);
        }
        Ok(Catalog {
            vgi_rpc_version: raw.vgi_rpc_version,
            protocols,
            dataclasses,
        })
    }

    /// A protocol by wire name.
    pub fn protocol(&self, name: &str) -> Result<&ProtocolSchemas> {
        self.protocols
            .get(name)
            .ok_or_else(|| Error::Catalog(format!("no protocol {name:?}")))
    }

    /// The schema of a dataclass (`Point`, `NestedContainers`, ...) as carried inside a
    /// `binary` column: a nested one-row IPC stream on this schema.
    pub fn dataclass(&self, name: &str) -> Result<SchemaRef> {
        self.dataclasses
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Catalog(format!("no dataclass {name:?}")))
    }
}

fn parse_method(what: &str, m: RawMethod) -> Result<MethodSchemas> {
    let params = decode_schema(what, &m.params.ipc_hex)?;
    let result = m
        .result
        .map(|r| decode_schema(what, &r.ipc_hex))
        .transpose()?;
    let header = m
        .header
        .map(|h| decode_schema(what, &h.ipc_hex).map(|s| (h.dataclass, s)))
        .transpose()?;
    let mut variants = Vec::new();
    for v in m.variants {
        variants.push(StreamVariant {
            args: v.args,
            output: v
                .output
                .map(|s| decode_schema(what, &s.ipc_hex))
                .transpose()?,
            input: v
                .input
                .map(|s| decode_schema(what, &s.ipc_hex))
                .transpose()?,
            raises: v.raises,
        });
    }
    let kind = match m.kind.as_str() {
        "unary" => MethodKind::Unary,
        "producer" => MethodKind::Producer,
        "exchange" => MethodKind::Exchange,
        // A raw StreamState: a producer if it takes no input (the spec's definition).
        "stream" => {
            let takes_input = variants
                .iter()
                .any(|v| v.input.as_ref().is_some_and(|s| !s.fields().is_empty()));
            if takes_input {
                MethodKind::Exchange
            } else {
                MethodKind::Producer
            }
        }
        other => {
            return Err(Error::Catalog(format!(
                "{what}: unknown method kind {other:?}"
            )))
        }
    };
    if kind == MethodKind::Unary && result.is_none() {
        return Err(Error::Catalog(format!("{what}: unary without a result")));
    }
    Ok(MethodSchemas {
        kind,
        params,
        result,
        header,
        variants,
    })
}

fn decode_schema(what: &str, ipc_hex: &str) -> Result<SchemaRef> {
    let bytes =
        hex::decode(ipc_hex).map_err(|e| Error::Catalog(format!("{what}: bad hex: {e}")))?;
    let reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| Error::Catalog(format!("{what}: bad ipc schema: {e}")))?;
    Ok(reader.schema())
}

#[cfg(test)]
mod tests {
    use arrow_schema::{DataType, TimeUnit};

    use super::*;

    #[test]
    fn embedded_catalog_has_both_protocols_with_reference_schemas() {
        let c = Catalog::load().unwrap();
        assert_eq!(c.vgi_rpc_version, "0.52.2");
        let p = c.protocol(PRIMARY).unwrap();
        assert_eq!(p.version.as_deref(), Some("2.0.0"));
        let (params, result) = p.unary("echo_string").unwrap();
        assert_eq!(params.field(0).name(), "value");
        assert_eq!(params.field(0).data_type(), &DataType::Utf8);
        assert!(!params.field(0).is_nullable());
        assert_eq!(result.field(0).name(), "result");
        let (_, result) = p.unary("echo_large_string").unwrap();
        assert_eq!(result.field(0).data_type(), &DataType::LargeUtf8);
        let (params, _) = p.unary("echo_enum").unwrap();
        assert_eq!(
            params.field(0).data_type(),
            &DataType::Dictionary(Box::new(DataType::Int16), Box::new(DataType::Utf8))
        );
        let (_, result) = p.unary("echo_timestamp_utc").unwrap();
        assert_eq!(
            result.field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let (params, result) = p.unary("void_noop").unwrap();
        assert!(params.fields().is_empty() && result.fields().is_empty());
        // Optional results are nullable.
        let (_, result) = p.unary("echo_optional_point").unwrap();
        assert!(result.field(0).is_nullable());
        assert_eq!(result.field(0).data_type(), &DataType::Binary);
        assert!(p.unary("produce_n").is_err(), "streams are not unary");
        assert!(p.method("nope").is_err());
        let s = c.protocol(SECONDARY).unwrap();
        assert_eq!(s.version, None);
        s.unary("fail").unwrap();
    }

    #[test]
    fn streams_carry_their_output_input_and_header_schemas() {
        let c = Catalog::load().unwrap();
        let p = c.protocol(PRIMARY).unwrap();
        let m = p.method("exchange_scale").unwrap();
        assert_eq!(m.kind, MethodKind::Exchange);
        let v = &m.variants[0];
        assert_eq!(v.input.as_ref().unwrap().field(0).name(), "value");
        let m = p.method("produce_with_header").unwrap();
        assert_eq!(m.kind, MethodKind::Producer);
        assert_eq!(m.header.as_ref().unwrap().0, "ConformanceHeader");
        assert_eq!(
            p.method("produce_dynamic_schema").unwrap().variants.len(),
            4
        );
        let init_error = &p.method("produce_error_on_init").unwrap().variants[0];
        assert!(init_error.output.is_none());
        assert_eq!(
            init_error.raises.as_deref(),
            Some("RuntimeError: intentional init error")
        );
        // A raw StreamState with no input is a producer.
        assert_eq!(
            p.method("produce_tick_metadata").unwrap().kind,
            MethodKind::Producer
        );
        assert_eq!(c.dataclass("Point").unwrap().fields().len(), 2);
        assert!(
            c.dataclass("CounterState").is_err(),
            "stream states are not dataclasses here"
        );
    }

    #[test]
    fn damaged_catalogs_are_refused() {
        assert!(Catalog::parse("{").is_err());
        let bad_hex =
            r#"{"vgi_rpc_version":"x","dataclasses":{"P":{"ipc_hex":"zz"}},"protocols":{}}"#;
        assert!(Catalog::parse(bad_hex).is_err());
        let not_ipc =
            r#"{"vgi_rpc_version":"x","dataclasses":{"P":{"ipc_hex":"00112233"}},"protocols":{}}"#;
        assert!(Catalog::parse(not_ipc).is_err());
    }
}
