//! `spillway call`: unary calls, producer and exchange streams, with parameters typed from
//! the server's reflection.

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    RecordBatchOptions, StringArray,
};
use arrow_schema::{DataType, Field, Schema};

use super::format::{fetch_progress_bar, fetch_summary, human_bytes, Sink, PROGRESS_BAR_MIN_BYTES};
use super::input::Input;
use super::{init_tracing, CallArgs, CallKind, OutputFormat};
use crate::client::reflection::{is_reflection_unavailable, MethodKind};
use crate::client::{CallRequest, Client, ExternalizedInfo, StreamBatch};
use crate::config::LogFormat;
use crate::error::{Error, Result};
use crate::wire::LogMessage;

/// Splits `PROTOCOL.METHOD` at the last dot.
pub fn split_target(target: &str) -> Result<(&str, &str)> {
    match target.rsplit_once('.') {
        Some((p, m)) if !p.is_empty() && !m.is_empty() => Ok((p, m)),
        _ => Err(Error::Config(format!(
            "target must be PROTOCOL.METHOD (e.g. spillway.Demo.v1.blob), got {target:?}"
        ))),
    }
}

/// `name[:TYPE]=value` split into its parts.
fn split_param(arg: &str) -> Result<(&str, Option<&str>, &str)> {
    let (lhs, value) = arg.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "parameter must be name=value or name:TYPE=value, got {arg:?}"
        ))
    })?;
    Ok(match lhs.split_once(':') {
        Some((name, ty)) => (name, Some(ty), value),
        None => (lhs, None, value),
    })
}

/// Builds the one-row parameter batch from `name[:TYPE]=value` arguments.
pub fn parse_params(args: &[String]) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for arg in args {
        let (name, ty, value) = split_param(arg)?;
        let ty = ty.map(|t| t.to_ascii_lowercase());
        if name.is_empty() {
            return Err(Error::Config(format!("parameter without a name: {arg:?}")));
        }
        let ty = ty.unwrap_or_else(|| infer_type(value).to_string());
        let bad = |what: &str| Error::Config(format!("parameter {name}: {value:?} is not {what}"));
        let (dt, col): (DataType, ArrayRef) = match ty.as_str() {
            "int64" | "int" | "i64" => (
                DataType::Int64,
                Arc::new(Int64Array::from(vec![value.parse::<i64>().map_err(|_| bad("an int64"))?])),
            ),
            "float64" | "float" | "f64" | "double" => (
                DataType::Float64,
                Arc::new(Float64Array::from(vec![value
                    .parse::<f64>()
                    .map_err(|_| bad("a float64"))?])),
            ),
            "bool" | "boolean" => (
                DataType::Boolean,
                Arc::new(BooleanArray::from(vec![value
                    .parse::<bool>()
                    .map_err(|_| bad("true or false"))?])),
            ),
            "utf8" | "string" | "str" => {
                let text = match value.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path).map_err(|e| {
                        Error::Config(format!("parameter {name}: cannot read {path}: {e}"))
                    })?,
                    None => value.to_string(),
                };
                (DataType::Utf8, Arc::new(StringArray::from(vec![text])))
            }
            "binary" | "bytes" => {
                let data = match value.strip_prefix('@') {
                    Some(path) => std::fs::read(path).map_err(|e| {
                        Error::Config(format!("parameter {name}: cannot read {path}: {e}"))
                    })?,
                    None => value.as_bytes().to_vec(),
                };
                (
                    DataType::Binary,
                    Arc::new(BinaryArray::from_vec(vec![&data[..]])),
                )
            }
            other => {
                return Err(Error::Config(format!(
                    "parameter {name}: unknown type {other:?} (use int64, float64, bool, utf8 or binary)"
                )))
            }
        };
        fields.push(Field::new(name, dt, false));
        columns.push(col);
    }
    let schema = Arc::new(Schema::new(fields));
    let rows = if columns.is_empty() { 0 } else { 1 };
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

fn infer_type(value: &str) -> &'static str {
    if value.parse::<i64>().is_ok() {
        "int64"
    } else if value.parse::<f64>().is_ok() {
        "float64"
    } else if value == "true" || value == "false" {
        "bool"
    } else {
        "utf8"
    }
}

/// A parameter's declared type as people write it (`int64`, `utf8`, `list<int64>`).
pub(super) fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::List(f) | DataType::LargeList(f) => format!("list<{}>", type_name(f.data_type())),
        DataType::Dictionary(_, v) => format!("dictionary<{}>", type_name(v)),
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string().to_ascii_lowercase(),
    }
}

/// `a: int64, b: utf8` (or `no parameters`).
pub(super) fn describe_fields(schema: &Schema) -> String {
    if schema.fields().is_empty() {
        return "no parameters".into();
    }
    schema
        .fields()
        .iter()
        .map(|f| {
            let opt = if f.is_nullable() { " (optional)" } else { "" };
            format!("{}: {}{opt}", f.name(), type_name(f.data_type()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the one-row parameter batch of a method whose parameters are `declared` (from
/// reflection): each `name[:TYPE]=value` is checked against the declared name and converted
/// to the declared type. Parameters left out are left to the server (its defaults).
pub fn parse_params_for(args: &[String], declared: &Schema, method: &str) -> Result<RecordBatch> {
    let mut given: Vec<(usize, ArrayRef)> = Vec::new();
    for arg in args {
        let (name, ty, value) = split_param(arg)?;
        let Some((index, field)) = declared.column_with_name(name) else {
            return Err(Error::Config(format!(
                "unknown parameter {name:?} of {method}: it takes {}",
                describe_fields(declared)
            )));
        };
        if given.iter().any(|(i, _)| *i == index) {
            return Err(Error::Config(format!("parameter {name} given twice")));
        }
        let col = match ty {
            Some(ty) => {
                // An explicit type must be the declared one.
                let single = parse_params(&[format!("{name}:{ty}={value}")])?;
                let col = single.column(0).clone();
                if col.data_type() != field.data_type() {
                    return Err(Error::Config(format!(
                        "parameter {name}: {method} takes {}, not {}",
                        type_name(field.data_type()),
                        type_name(col.data_type())
                    )));
                }
                col
            }
            None => typed_value(name, value, field.data_type())?,
        };
        given.push((index, col));
    }
    given.sort_by_key(|(i, _)| *i);
    let fields: Vec<Field> = given
        .iter()
        .map(|(i, _)| declared.field(*i).clone())
        .collect();
    let columns: Vec<ArrayRef> = given.into_iter().map(|(_, c)| c).collect();
    let rows = if columns.is_empty() { 0 } else { 1 };
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// One value as a one-element array of `dt`: text and bytes as given (or read from `@PATH`),
/// nested types as JSON, everything else parsed by Arrow's string casts.
fn typed_value(name: &str, value: &str, dt: &DataType) -> Result<ArrayRef> {
    let read = |path: &str| {
        std::fs::read(path)
            .map_err(|e| Error::Config(format!("parameter {name}: cannot read {path}: {e}")))
    };
    let bad = |e: &dyn std::fmt::Display| {
        Error::Config(format!(
            "parameter {name}: {value:?} is not a valid {}: {e}",
            type_name(dt)
        ))
    };
    let cast = |array: ArrayRef| -> Result<ArrayRef> {
        let options = arrow_cast::CastOptions {
            safe: false,
            ..Default::default()
        };
        arrow_cast::cast_with_options(&array, dt, &options).map_err(|e| bad(&e))
    };
    match dt {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let data = match value.strip_prefix('@') {
                Some(path) => read(path)?,
                None => value.as_bytes().to_vec(),
            };
            cast(Arc::new(BinaryArray::from_vec(vec![&data[..]])))
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = match value.strip_prefix('@') {
                Some(path) => String::from_utf8(read(path)?).map_err(|_| {
                    Error::Config(format!("parameter {name}: {path} is not utf-8 text"))
                })?,
                None => value.to_string(),
            };
            cast(Arc::new(StringArray::from(vec![text])))
        }
        DataType::Boolean => {
            let b = match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(bad(&"use true or false")),
            };
            Ok(Arc::new(BooleanArray::from(vec![b])))
        }
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(_, _)
        | DataType::Struct(_)
        | DataType::Map(_, _) => {
            let json: serde_json::Value = serde_json::from_str(value).map_err(|e| bad(&e))?;
            let schema = Arc::new(Schema::new(vec![Field::new(name, dt.clone(), true)]));
            let mut decoder = arrow_json::ReaderBuilder::new(schema)
                .build_decoder()
                .map_err(|e| bad(&e))?;
            decoder
                .serialize(&[serde_json::json!({ name: json })])
                .map_err(|e| bad(&e))?;
            let batch = decoder
                .flush()
                .map_err(|e| bad(&e))?
                .ok_or_else(|| bad(&"empty"))?;
            Ok(batch.column(0).clone())
        }
        _ => cast(Arc::new(StringArray::from(vec![value]))),
    }
}

/// What to call, and how, once the target and the server's reflection are known.
struct Plan {
    protocol: String,
    method: String,
    kind: MethodKind,
    params: RecordBatch,
    protocol_version: Option<String>,
    /// True when the method type came from reflection (false: `--kind` or the unary default).
    reflected: bool,
}

const NO_REFLECTION_HINT: &str = "the server does not answer vgi_rpc.Reflection.v1 \
     (SPILLWAY_REFLECTION may be off on the server), so the call was sent as unary with \
     inferred parameter types; name the method type with --kind unary|producer|exchange and \
     parameter types with name:TYPE=value";

fn kind_of(k: CallKind) -> MethodKind {
    match k {
        CallKind::Unary => MethodKind::Unary,
        CallKind::Producer => MethodKind::Producer,
        CallKind::Exchange => MethodKind::Exchange,
    }
}

async fn plan(client: &Client, args: &CallArgs) -> Result<Plan> {
    let unreflected = |kind: MethodKind| -> Result<Plan> {
        let (protocol, method) = split_target(&args.target)?;
        Ok(Plan {
            protocol: protocol.to_string(),
            method: method.to_string(),
            kind,
            params: parse_params(&args.params)?,
            protocol_version: args.protocol_version.clone(),
            reflected: false,
        })
    };
    if let Some(kind) = args.kind {
        return unreflected(kind_of(kind));
    }
    let list = match client.list_protocols().await {
        Ok(list) => list,
        Err(e) if is_reflection_unavailable(&e) => {
            if !args.target.contains('.') {
                return Err(Error::Config(format!(
                    "target must be PROTOCOL.METHOD: a bare method name needs reflection, and \
                     the server does not answer vgi_rpc.Reflection.v1 (SPILLWAY_REFLECTION may \
                     be off on the server), got {:?}",
                    args.target
                )));
            }
            return unreflected(MethodKind::Unary);
        }
        Err(e) => return Err(e),
    };
    let (protocol, method) = match split_target(&args.target) {
        Ok((p, m)) => (p.to_string(), m.to_string()),
        Err(e) if args.target.contains('.') => return Err(e),
        Err(_) => {
            let primary = list.primary().ok_or_else(|| {
                Error::Config("the server hosts no protocol but reflection".into())
            })?;
            (primary.protocol.clone(), args.target.clone())
        }
    };
    if !list.protocols.iter().any(|p| p.protocol == protocol) {
        return Err(Error::Config(format!(
            "protocol {protocol:?} is not hosted by the server; it hosts {}",
            list.names().join(", ")
        )));
    }
    let description = client.describe_protocol(&protocol).await?;
    let Some(m) = description.method(&method) else {
        return Err(Error::Config(format!(
            "unknown method {method:?} of {protocol}; its methods: {}",
            description.method_names().join(", ")
        )));
    };
    let version = &description.summary.protocol_version;
    Ok(Plan {
        params: parse_params_for(&args.params, &m.params, &m.name)?,
        kind: m.kind(),
        protocol_version: args
            .protocol_version
            .clone()
            .or_else(|| (!version.is_empty()).then(|| version.clone())),
        protocol,
        method,
        reflected: true,
    })
}

fn print_logs(logs: &[LogMessage]) {
    for log in logs {
        eprintln!("[{}] {}", log.level, log.message);
    }
}

/// The stderr line of one received batch: how it came (inline or through a pointer).
fn arrival(label: &str, rows: usize, ext: Option<&ExternalizedInfo>) -> String {
    let rows = format!("{rows} {}", if rows == 1 { "row" } else { "rows" });
    match ext {
        Some(ext) => format!("{label}: {rows}, {}", fetch_summary(&ext.stats, &ext.url)),
        None => format!("{label}: {rows}, inline"),
    }
}

/// Runs `spillway call`.
pub(super) async fn run(args: CallArgs) -> Result<()> {
    init_tracing("warn", LogFormat::Text);
    let mut config = args.client.client_config()?;
    // Created on the first progress report of a large object; drawn only on a terminal.
    let bar = Arc::new(std::sync::OnceLock::<indicatif::ProgressBar>::new());
    let progress_bar = bar.clone();
    config.progress = Some(Arc::new(move |done, total| {
        let Some(total) = total.filter(|t| *t >= PROGRESS_BAR_MIN_BYTES) else {
            return;
        };
        progress_bar
            .get_or_init(|| fetch_progress_bar(total))
            .set_position(done);
    }));
    let started = Instant::now();
    let client = Client::new(&args.client.url, config)?;
    let plan = plan(&client, &args).await?;
    let has_input = args.input.is_some() || !args.send.is_empty();
    match (plan.kind, has_input) {
        (MethodKind::Exchange, false) => {
            return Err(Error::Config(format!(
                "{} is an exchange: give its input with --input FILE (Arrow IPC or JSON lines) \
                 or --send ROW",
                plan.method
            )))
        }
        (MethodKind::Unary | MethodKind::Producer, true) => {
            return Err(Error::Config(format!(
                "{} is a {} method: --input and --send are for exchanges",
                plan.method, plan.kind
            )))
        }
        _ => {}
    }
    let format = args.format.unwrap_or(if args.output.is_some() {
        OutputFormat::Arrow
    } else {
        OutputFormat::Table
    });
    let sink = Sink::open(format, args.output.as_deref())?;
    let request = CallRequest {
        protocol: plan.protocol.clone(),
        method: plan.method.clone(),
        params: plan.params.clone(),
        protocol_version: plan.protocol_version.clone(),
        metadata: Default::default(),
    };
    let out = match plan.kind {
        MethodKind::Unary => unary(&client, request, sink).await,
        MethodKind::Producer | MethodKind::Exchange => {
            stream(&client, request, plan.kind, &args, sink).await
        }
    };
    if let Some(b) = bar.get() {
        b.finish_and_clear();
    }
    if let Err(e) = out {
        if !plan.reflected && args.kind.is_none() {
            // One line still: the hint joins the error.
            return Err(Error::Config(format!("{e} ({NO_REFLECTION_HINT})")));
        }
        return Err(e);
    }
    if let Some(path) = &args.output {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        eprintln!("wrote {} to {}", human_bytes(size), path.display());
    }
    eprintln!("done in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

async fn unary(client: &Client, request: CallRequest, mut sink: Sink) -> Result<()> {
    let out = client.call_with(request).await?;
    print_logs(&out.logs);
    if let Some(ext) = &out.externalized {
        eprintln!("{}", fetch_summary(&ext.stats, &ext.url));
    } else {
        eprintln!("inline result");
    }
    sink.batch(&out.batch)?;
    sink.finish(Some(&out.batch.schema()))
}

/// Writes one received stream batch and reports it on stderr.
fn deliver(sink: &mut Sink, b: &StreamBatch, n: usize) -> Result<()> {
    print_logs(&b.logs);
    eprintln!(
        "{}",
        arrival(
            &format!("batch {n}"),
            b.batch.num_rows(),
            b.externalized.as_ref()
        )
    );
    sink.batch(&b.batch)
}

async fn stream(
    client: &Client,
    request: CallRequest,
    kind: MethodKind,
    args: &CallArgs,
    mut sink: Sink,
) -> Result<()> {
    let mut input = match (&args.input, kind) {
        (Some(path), _) => Some(tokio::task::block_in_place(|| Input::open(path))?),
        (None, MethodKind::Exchange) => Some(Input::rows(&args.send)),
        _ => None,
    };
    let mut stream = client.open_stream(request).await?;
    if let Some(h) = stream.header() {
        print_logs(&h.logs);
        eprintln!(
            "{}",
            arrival("header", h.batch.num_rows(), h.externalized.as_ref())
        );
        sink.header(&h.batch)?;
    }
    print_logs(stream.init_logs());
    let mut n = 0;
    match input.as_mut() {
        None => {
            while let Some(b) = stream.next().await? {
                deliver(&mut sink, &b, n)?;
                n += 1;
            }
        }
        Some(input) => {
            while let Some(batch) = tokio::task::block_in_place(|| input.next_batch())? {
                let b = match stream.exchange(batch, Default::default()).await {
                    Ok(b) => b,
                    Err(e) => {
                        // Let the server run its cancel hook; the step's error is the news.
                        let _ = stream.cancel().await;
                        return Err(e);
                    }
                };
                deliver(&mut sink, &b, n)?;
                n += 1;
            }
            stream.cancel().await?;
        }
    }
    eprintln!("{n} {}", if n == 1 { "batch" } else { "batches" });
    sink.finish(stream.output_schema())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &[(&str, DataType, bool)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn reflected_params_take_the_declared_types() {
        let declared = schema(&[
            ("n", DataType::Int32, false),
            ("name", DataType::Utf8, true),
            (
                "xs",
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                false,
            ),
            ("flag", DataType::Boolean, false),
        ]);
        let b = parse_params_for(
            &["flag=yes".into(), "n=7".into(), "xs=[1,2,3]".into()],
            &declared,
            "m",
        )
        .unwrap();
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["n", "xs", "flag"]);
        assert_eq!(b.column(0).data_type(), &DataType::Int32);
        assert_eq!(b.column(1).len(), 1);
        let e = parse_params_for(&["nope=1".into()], &declared, "m").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown parameter \"nope\" of m: it takes n: int32"),
            "{e}"
        );
        let e = parse_params_for(&["n=abc".into()], &declared, "m").unwrap_err();
        assert!(
            e.to_string().contains("\"abc\" is not a valid int32"),
            "{e}"
        );
        let e = parse_params_for(&["n:int64=1".into()], &declared, "m").unwrap_err();
        assert!(e.to_string().contains("m takes int32, not int64"), "{e}");
        assert!(parse_params_for(&["n=1".into(), "n=2".into()], &declared, "m").is_err());
        assert!(parse_params_for(&["xs=[1,".into()], &declared, "m").is_err());
        assert_eq!(parse_params_for(&[], &declared, "m").unwrap().num_rows(), 0);
    }

    #[test]
    fn params_parse_and_infer() {
        let b = parse_params(&[
            "size=10".into(),
            "ratio=0.5".into(),
            "flag=true".into(),
            "name=abc".into(),
            "data:binary=xyz".into(),
        ])
        .unwrap();
        let types: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            vec![
                DataType::Int64,
                DataType::Float64,
                DataType::Boolean,
                DataType::Utf8,
                DataType::Binary
            ]
        );
        assert!(b.schema().fields().iter().all(|f| !f.is_nullable()));
        assert_eq!(b.num_rows(), 1);
        assert_eq!(parse_params(&[]).unwrap().num_rows(), 0);
        for bad in [
            "novalue",
            "=1",
            "x:int64=abc",
            "x:weird=1",
            "x:binary=@/nonexistent/file",
        ] {
            assert!(parse_params(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_split_at_last_dot() {
        assert_eq!(
            split_target("spillway.Demo.v1.blob").unwrap(),
            ("spillway.Demo.v1", "blob")
        );
        assert!(split_target("blob").is_err());
        assert!(split_target("x.").is_err());
    }
}
