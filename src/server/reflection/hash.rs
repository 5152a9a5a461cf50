//! The protocol hash: canonical type tokens (the reference's `_type_tokens.py`) and the RFC
//! 8785 JSON of a description, hashed with a domain separator.

use arrow_schema::{DataType, Field, IntervalUnit, Schema, TimeUnit};
use sha2::{Digest, Sha256};

use super::shapes::MethodShape;

/// Domain separator of the protocol hash (moves only when the hash definition does).
const HASH_DOMAIN: &[u8] = b"vgi_rpc.protocol_hash.v1|";

/// The extension-type marker in Arrow field metadata.
pub(super) const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";

/// A type with no canonical token: hashing it one-sidedly would make this port disagree with
/// every other, so the protocol gets no hash instead.
#[derive(Debug)]
pub(super) struct UnsupportedType(pub(super) String);

fn unit(u: &TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

/// A child spelled `name:token` / `name?:token` (`name` normalised for list and map children,
/// whose names Arrow's type equality ignores).
fn child_token(field: &Field, name: &str) -> Result<String, UnsupportedType> {
    let q = if field.is_nullable() { "?" } else { "" };
    Ok(format!("{name}{q}:{}", field_type_token(field)?))
}

/// The token of a field's type, including what Arrow-rs keeps on the field rather than in
/// the type: extension types and dictionary ordering.
pub(super) fn field_type_token(field: &Field) -> Result<String, UnsupportedType> {
    let storage = match field.data_type() {
        DataType::Dictionary(index, value) => {
            let ordered = if field.dict_is_ordered() == Some(true) {
                ",ordered"
            } else {
                ""
            };
            format!(
                "dictionary<index:{},value:{}>{ordered}",
                type_token(index)?,
                type_token(value)?
            )
        }
        dt => type_token(dt)?,
    };
    Ok(match field.metadata().get(EXTENSION_NAME_KEY) {
        Some(ext) => format!("extension({ext})<{storage}>"),
        None => storage,
    })
}

/// The canonical token of `dt` (the reference's `type_token`).
pub(super) fn type_token(dt: &DataType) -> Result<String, UnsupportedType> {
    use DataType as D;
    Ok(match dt {
        D::Null => "null".into(),
        D::Boolean => "bool".into(),
        D::Int8 => "int8".into(),
        D::Int16 => "int16".into(),
        D::Int32 => "int32".into(),
        D::Int64 => "int64".into(),
        D::UInt8 => "uint8".into(),
        D::UInt16 => "uint16".into(),
        D::UInt32 => "uint32".into(),
        D::UInt64 => "uint64".into(),
        D::Float16 => "float16".into(),
        D::Float32 => "float32".into(),
        D::Float64 => "float64".into(),
        D::Utf8 => "utf8".into(),
        D::LargeUtf8 => "large_utf8".into(),
        D::Utf8View => "utf8_view".into(),
        D::Binary => "binary".into(),
        D::LargeBinary => "large_binary".into(),
        D::BinaryView => "binary_view".into(),
        D::Date32 => "date32".into(),
        D::Date64 => "date64".into(),
        D::FixedSizeBinary(w) => format!("fixed_size_binary({w})"),
        D::Decimal128(p, s) => format!("decimal128({p},{s})"),
        D::Decimal256(p, s) => format!("decimal256({p},{s})"),
        D::Time32(u) => format!("time32({})", unit(u)),
        D::Time64(u) => format!("time64({})", unit(u)),
        // The zone is verbatim: "UTC" and "+00:00" are distinct Arrow types.
        D::Timestamp(u, None) => format!("timestamp({})", unit(u)),
        D::Timestamp(u, Some(tz)) => format!("timestamp({},tz={tz})", unit(u)),
        D::Duration(u) => format!("duration({})", unit(u)),
        D::Interval(IntervalUnit::YearMonth) => "interval_months".into(),
        D::Interval(IntervalUnit::DayTime) => "interval_day_time".into(),
        D::Interval(IntervalUnit::MonthDayNano) => "interval_month_day_nano".into(),
        D::FixedSizeList(f, n) => format!("fixed_size_list({n})<{}>", child_token(f, "item")?),
        D::LargeList(f) => format!("large_list<{}>", child_token(f, "item")?),
        D::List(f) => format!("list<{}>", child_token(f, "item")?),
        D::LargeListView(f) => format!("large_list_view<{}>", child_token(f, "item")?),
        D::ListView(f) => format!("list_view<{}>", child_token(f, "item")?),
        D::Map(entries, sorted) => {
            let (key, value) = match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => (&kv[0], &kv[1]),
                other => return Err(UnsupportedType(format!("map entries of type {other}"))),
            };
            format!(
                "map<{},{}>{}",
                child_token(key, "key")?,
                child_token(value, "value")?,
                if *sorted { ",keys_sorted" } else { "" }
            )
        }
        D::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| child_token(f, f.name()))
                .collect::<Result<Vec<_>, _>>()?
                .join(",")
        ),
        D::Union(fields, mode) => {
            let kind = match mode {
                arrow_schema::UnionMode::Sparse => "sparse_union",
                arrow_schema::UnionMode::Dense => "dense_union",
            };
            let parts = fields
                .iter()
                .map(|(code, f)| Ok(format!("{code}={}", child_token(f, f.name())?)))
                .collect::<Result<Vec<_>, UnsupportedType>>()?;
            format!("{kind}<{}>", parts.join(","))
        }
        // Ordering lives on the field in arrow-rs; field_type_token adds it where known.
        D::Dictionary(index, value) => format!(
            "dictionary<index:{},value:{}>",
            type_token(index)?,
            type_token(value)?
        ),
        D::RunEndEncoded(run_ends, values) => format!(
            "run_end_encoded<run_ends:{},values:{}>",
            type_token(run_ends.data_type())?,
            type_token(values.data_type())?
        ),
        other @ (D::Decimal32(..) | D::Decimal64(..)) => {
            return Err(UnsupportedType(format!("{other}")))
        }
    })
}

/// A JSON value restricted to what the hash preimage may hold: no numbers, so RFC 8785's
/// number rules never apply.
pub(super) enum Json {
    Bool(bool),
    Str(String),
    Array(Vec<Json>),
    /// Keys are sorted when written (ASCII keys: code-point order = UTF-16 order).
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    pub(super) fn write_canonical(&self, out: &mut String) {
        match self {
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            // serde_json escapes exactly as JCS does: `"`, `\`, the short forms for \b \f \n
            // \r \t and lowercase \u00xx for the other controls; everything else verbatim.
            Json::Str(s) => {
                out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")))
            }
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_canonical(out);
                }
                out.push(']');
            }
            Json::Object(entries) => {
                let mut sorted: Vec<&(&str, Json)> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    Json::Str((*k).to_string()).write_canonical(out);
                    out.push(':');
                    v.write_canonical(out);
                }
                out.push('}');
            }
        }
    }
}

fn schema_tokens(schema: &Schema) -> Result<Json, UnsupportedType> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(Json::Object(vec![
                ("name", Json::Str(f.name().clone())),
                ("nullable", Json::Bool(f.is_nullable())),
                ("type", Json::Str(field_type_token(f)?)),
            ]))
        })
        .collect::<Result<Vec<_>, UnsupportedType>>()?;
    Ok(Json::Array(fields))
}

/// The canonical preimage JSON (without the domain separator).
pub(super) fn canonical_description(
    protocol: &str,
    shapes: &[MethodShape],
) -> Result<String, UnsupportedType> {
    let methods = shapes
        .iter()
        .map(|m| {
            let mut entry = vec![
                ("name", Json::Str(m.name.clone())),
                ("type", Json::Str(m.method_type().into())),
                ("has_return", Json::Bool(m.result().is_some())),
                ("has_header", Json::Bool(m.header().is_some())),
                ("params", schema_tokens(&m.params)?),
            ];
            // Absent and empty differ: a void method is not one returning an empty struct.
            if let Some(r) = m.result() {
                entry.push(("result", schema_tokens(r)?));
            }
            if let Some(h) = m.header() {
                entry.push(("header", schema_tokens(h)?));
            }
            Ok(Json::Object(entry))
        })
        .collect::<Result<Vec<_>, UnsupportedType>>()?;
    let mut out = String::new();
    Json::Object(vec![
        ("protocol", Json::Str(protocol.to_string())),
        ("methods", Json::Array(methods)),
    ])
    .write_canonical(&mut out);
    Ok(out)
}

pub(super) fn protocol_hash(
    protocol: &str,
    shapes: &[MethodShape],
) -> Result<String, UnsupportedType> {
    let preimage = canonical_description(protocol, shapes)?;
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(preimage.as_bytes());
    Ok(hex::encode(h.finalize()))
}
