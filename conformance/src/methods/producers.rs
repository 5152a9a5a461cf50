//! Producer streams, as the reference's `ProducerState`s (`_types.py`) define them: each tick
//! emits one batch or finishes. States are the reference's dataclass fields.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, StringArray};
use serde::{Deserialize, Serialize};
use spillway::wire::{Metadata, RpcError};

use super::call::{runtime_error, value_error, Call};
use super::headers::{conformance_header, rich_header};
use super::streams::{declared_header, producer, Out, Start};
use super::{Registrar, Worker};
use crate::catalog::{MethodSchemas, StreamVariant};
use crate::error::{Error, Result};

/// Most rows one batch may hold (the reference would run out of memory instead).
pub(crate) const MAX_ROWS_PER_BATCH: i64 = 16 * 1024 * 1024;

/// The tick metadata key `produce_tick_metadata` reports.
const TICK_KEY: &str = "vgi.conformance.tick";

/// The constant label of `produce_annotated_batches`, deliberately non-ASCII.
pub(crate) const ANNOTATED_EMIT_LABEL: &str = "\u{00fc}n\u{00ef}code-\u{03bb}";

/// `count` and how far the stream got: the state of most producers (`CounterState`,
/// `HeaderProducerState`, `LoggingProducerState`, ...).
#[derive(Debug, Serialize, Deserialize)]
struct Counter {
    count: i64,
    current: i64,
}

impl Counter {
    fn new(count: i64) -> Self {
        Counter { count, current: 0 }
    }
}

/// `{index: [i], value: [i * 10]}`.
fn counter_row(out: &mut Out, i: i64) -> Result<(), RpcError> {
    index_value_rows(out, i, 1)
}

/// `rows` rows from `first`: `{index: [first..], value: [index * 10]}`.
fn index_value_rows(out: &mut Out, first: i64, rows: i64) -> Result<(), RpcError> {
    if rows > MAX_ROWS_PER_BATCH {
        return Err(value_error(format!(
            "rows_per_batch {rows} is above this worker's limit of {MAX_ROWS_PER_BATCH}"
        )));
    }
    let overflow = || value_error("index out of int64 range");
    let end = first.checked_add(rows.max(0)).ok_or_else(overflow)?;
    let indices: Vec<i64> = (first..end).collect();
    let values = indices
        .iter()
        .map(|i| i.checked_mul(10).ok_or_else(overflow))
        .collect::<Result<Vec<i64>, RpcError>>()?;
    out.emit(vec![
        Arc::new(Int64Array::from(indices)),
        Arc::new(Int64Array::from(values)),
    ])
}

/// `CounterState.produce`: one row per tick until `count`.
fn produce_counter(s: &mut Counter, _tick: &Metadata, out: &mut Out) -> Result<(), RpcError> {
    if s.current >= s.count {
        out.finish();
        return Ok(());
    }
    counter_row(out, s.current)?;
    s.current += 1;
    Ok(())
}

fn count_start(call: &Call) -> Result<Start<Counter>, RpcError> {
    Ok(Start::new(Counter::new(call.int("count")?)))
}

pub(super) fn register(r: Registrar, worker: &Arc<Worker>) -> Result<Registrar> {
    let r = r
        .stream("produce_n", |m| {
            Ok(producer(m, count_start, produce_counter))
        })?
        .stream("produce_tick_metadata", |m| {
            Ok(producer(m, count_start, produce_tick_metadata))
        })?
        .stream("produce_empty", |m| {
            Ok(producer(
                m,
                |_call| Ok(Start::new(())),
                |_s: &mut (), _tick, out| {
                    out.finish();
                    Ok(())
                },
            ))
        })?
        .stream("produce_single", |m| {
            Ok(producer(
                m,
                |_call| Ok(Start::new(false)),
                |emitted: &mut bool, _tick, out| {
                    if *emitted {
                        out.finish();
                        return Ok(());
                    }
                    *emitted = true;
                    counter_row(out, 0)
                },
            ))
        })?
        .stream("produce_large_batches", |m| {
            Ok(producer(m, large_start, produce_large))
        })?
        .stream("produce_annotated_batches", |m| {
            Ok(producer(m, annotated_start, produce_annotated))
        })?
        .stream("produce_with_logs", |m| {
            Ok(producer(m, count_start, |s: &mut Counter, tick, out| {
                if s.current < s.count {
                    out.log("INFO", format!("producing batch {}", s.current));
                }
                produce_counter(s, tick, out)
            }))
        })?
        .stream("produce_error_mid_stream", |m| {
            Ok(producer(
                m,
                |call| Ok(Start::new(Counter::new(call.int("emit_before_error")?))),
                |s: &mut Counter, _tick, out| {
                    if s.current >= s.count {
                        return Err(runtime_error(format!(
                            "intentional error after {} batches",
                            s.count
                        )));
                    }
                    counter_row(out, s.current)?;
                    s.current += 1;
                    Ok(())
                },
            ))
        })?
        .stream("produce_error_on_init", |m| {
            Ok(producer(
                m,
                |_call| -> Result<Start<()>, RpcError> {
                    Err(runtime_error("intentional init error"))
                },
                |_s: &mut (), _tick, out| {
                    out.finish();
                    Ok(())
                },
            ))
        })?
        .stream("produce_oversized_batch", |m| {
            Ok(producer(
                m,
                |call| Ok(Start::new((call.int("rows_per_batch")?, false))),
                |s: &mut (i64, bool), _tick, out| {
                    if s.1 {
                        out.finish();
                        return Ok(());
                    }
                    index_value_rows(out, 0, s.0)?;
                    s.1 = true;
                    Ok(())
                },
            ))
        })?;
    let r = headers(r)?;
    let r = cancellable(r, worker)?;
    r.stream("stream_session_counter", |m| {
        Ok(producer(m, count_start, |s: &mut Counter, _tick, out| {
            if s.current >= s.count {
                out.finish();
                return Ok(());
            }
            // The counter lives in a sticky session, which this worker does not offer.
            Err(runtime_error("no sticky counter bound to this request"))
        }))
    })
}

/// `TickMetadataState.process`: reports the tick's `vgi.conformance.tick` metadata, and
/// finishes once `count` rows were emitted (after emitting, so a count of 0 still emits one).
fn produce_tick_metadata(s: &mut Counter, tick: &Metadata, out: &mut Out) -> Result<(), RpcError> {
    let seen = tick.get(TICK_KEY).cloned().unwrap_or_default();
    out.emit(vec![
        Arc::new(Int64Array::from(vec![s.current])),
        Arc::new(StringArray::from(vec![seen])),
    ])?;
    s.current += 1;
    if s.current >= s.count {
        out.finish();
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct Large {
    rows_per_batch: i64,
    batch_count: i64,
    current: i64,
}

fn large_start(call: &Call) -> Result<Start<Large>, RpcError> {
    Ok(Start::new(Large {
        rows_per_batch: call.int("rows_per_batch")?,
        batch_count: call.int("batch_count")?,
        current: 0,
    }))
}

/// `LargeProducerState.produce`: `batch_count` batches of `rows_per_batch` consecutive rows.
fn produce_large(s: &mut Large, _tick: &Metadata, out: &mut Out) -> Result<(), RpcError> {
    if s.current >= s.batch_count {
        out.finish();
        return Ok(());
    }
    let offset = s
        .current
        .checked_mul(s.rows_per_batch)
        .ok_or_else(|| value_error("index out of int64 range"))?;
    index_value_rows(out, offset, s.rows_per_batch)?;
    s.current += 1;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct Annotated {
    count: i64,
    rows_per_batch: i64,
    current: i64,
}

fn annotated_start(call: &Call) -> Result<Start<Annotated>, RpcError> {
    Ok(Start::new(Annotated {
        count: call.int("count")?,
        rows_per_batch: call.int("rows_per_batch")?,
        current: 0,
    }))
}

/// `AnnotatedProducerState.produce`: batch `i` holds `i * 1_000_000 + row` and carries its
/// index, the total and a constant non-ASCII label as custom metadata.
fn produce_annotated(s: &mut Annotated, _tick: &Metadata, out: &mut Out) -> Result<(), RpcError> {
    if s.current >= s.count {
        out.finish();
        return Ok(());
    }
    if s.rows_per_batch > MAX_ROWS_PER_BATCH {
        return Err(value_error(format!(
            "rows_per_batch {} is above this worker's limit of {MAX_ROWS_PER_BATCH}",
            s.rows_per_batch
        )));
    }
    let overflow = || value_error("value out of int64 range");
    let base = s.current.checked_mul(1_000_000).ok_or_else(overflow)?;
    let values = (0..s.rows_per_batch.max(0))
        .map(|row| base.checked_add(row).ok_or_else(overflow))
        .collect::<Result<Vec<i64>, RpcError>>()?;
    let mut md = Metadata::new();
    md.insert("conformance.batch_index".into(), s.current.to_string());
    md.insert("conformance.batch_total".into(), s.count.to_string());
    md.insert(
        "conformance.emit_label".into(),
        ANNOTATED_EMIT_LABEL.to_string(),
    );
    out.emit_with_metadata(vec![Arc::new(Int64Array::from(values)) as ArrayRef], md)?;
    s.current += 1;
    Ok(())
}

/// Producers with a header: `ConformanceHeader`, `RichHeader`, and the dynamic-schema producer.
fn headers(r: Registrar) -> Result<Registrar> {
    r.stream("produce_with_header", |m| {
        let schema = declared_header(m)?;
        Ok(producer(
            m,
            move |call| {
                let count = call.int("count")?;
                let header =
                    conformance_header(&schema, count, &format!("producing {count} batches"))?;
                Ok(Start::new(Counter::new(count)).with_header(header))
            },
            produce_counter,
        ))
    })?
    .stream("produce_with_header_and_logs", |m| {
        let schema = declared_header(m)?;
        Ok(producer(
            m,
            move |call| {
                let count = call.int("count")?;
                call.ctx.log("INFO", "stream init log");
                let header =
                    conformance_header(&schema, count, &format!("producing {count} with logs"))?;
                Ok(Start::new(Counter::new(count)).with_header(header))
            },
            produce_counter,
        ))
    })?
    .stream("produce_with_rich_header", |m| {
        let schema = declared_header(m)?;
        Ok(producer(
            m,
            move |call| {
                let header = rich_header(&schema, call.int("seed")?)?;
                Ok(Start::new(Counter::new(call.int("count")?)).with_header(header))
            },
            produce_counter,
        ))
    })?
    .stream("produce_dynamic_schema", dynamic_schema)
}

#[derive(Debug, Serialize, Deserialize)]
struct Dynamic {
    count: i64,
    include_strings: bool,
    include_floats: bool,
    current: i64,
}

/// The catalog variant of `produce_dynamic_schema` for these flags.
fn dynamic_variant(
    variants: &[StreamVariant],
    include_strings: bool,
    include_floats: bool,
) -> Option<&StreamVariant> {
    let flag = |v: &StreamVariant, k: &str| v.args.get(k).and_then(|b| b.as_bool());
    variants.iter().find(|v| {
        flag(v, "include_strings") == Some(include_strings)
            && flag(v, "include_floats") == Some(include_floats)
    })
}

/// `produce_dynamic_schema`: the output schema (`index`, then `label` and/or `score`) is
/// chosen by the flags at init; rows are `row-{i}` and `i * 1.5`.
fn dynamic_schema(m: &MethodSchemas) -> Result<spillway::server::StreamMethod> {
    let header_schema = declared_header(m)?;
    for (s, f) in [(false, false), (false, true), (true, false), (true, true)] {
        if dynamic_variant(&m.variants, s, f)
            .and_then(|v| v.output.as_ref())
            .is_none()
        {
            return Err(Error::Catalog(format!(
                "produce_dynamic_schema has no variant for include_strings={s}, include_floats={f}"
            )));
        }
    }
    let variants = m.variants.clone();
    let turn_variants = m.variants.clone();
    let schema_for = move |variants: &[StreamVariant], s: bool, f: bool| {
        dynamic_variant(variants, s, f)
            .and_then(|v| v.output.clone())
            .ok_or_else(|| RpcError::internal("no output schema for these flags"))
    };
    Ok(producer(
        m,
        move |call| {
            let state = Dynamic {
                count: call.int("count")?,
                include_strings: call.boolean("include_strings")?,
                include_floats: call.boolean("include_floats")?,
                current: 0,
            };
            let output = schema_for(&variants, state.include_strings, state.include_floats)?;
            let header = rich_header(&header_schema, call.int("seed")?)?;
            Ok(Start::new(state)
                .with_header(header)
                .with_output_schema(output))
        },
        move |s: &mut Dynamic, _tick, out| {
            if s.current >= s.count {
                out.finish();
                return Ok(());
            }
            let output = schema_for(&turn_variants, s.include_strings, s.include_floats)?;
            let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![s.current]))];
            if s.include_strings {
                columns.push(Arc::new(StringArray::from(vec![format!(
                    "row-{}",
                    s.current
                )])));
            }
            if s.include_floats {
                columns.push(Arc::new(Float64Array::from(vec![s.current as f64 * 1.5])));
            }
            let batch = super::streams::batch_on(&output, columns)?;
            out.emit_batch(batch, Metadata::new())?;
            s.current += 1;
            Ok(())
        },
    ))
}

/// `cancellable_producer`: an endless counter that records its ticks and its cancel hook in
/// the worker's cancel probe.
fn cancellable(r: Registrar, worker: &Arc<Worker>) -> Result<Registrar> {
    let tick_probe = worker.clone();
    let cancel_probe = worker.clone();
    r.stream("cancellable_producer", move |m| {
        Ok(producer(
            m,
            |_call| Ok(Start::new(0i64)),
            move |current: &mut i64, _tick, out| {
                tick_probe.cancel_probe.produced();
                counter_row(out, *current)?;
                *current += 1;
                Ok(())
            },
        )
        .on_cancel(move |_ctx, _state| {
            cancel_probe.cancel_probe.cancelled();
            std::future::ready(())
        }))
    })
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_schema::SchemaRef;

    use super::*;
    use crate::catalog::{Catalog, PRIMARY};
    use crate::methods::streams::declared_output;

    fn output(method: &str) -> SchemaRef {
        let c = Catalog::load().unwrap();
        declared_output(c.protocol(PRIMARY).unwrap().method(method).unwrap())
    }

    fn ints(out: &Out, column: usize) -> Vec<i64> {
        let (b, _) = out.emitted().unwrap();
        b.column(column)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn counter_emits_count_rows_then_finishes_without_a_batch() {
        let schema = output("produce_n");
        let mut s = Counter::new(2);
        let tick = Metadata::new();
        for i in 0..2 {
            let mut out = Out::new(schema.clone());
            produce_counter(&mut s, &tick, &mut out).unwrap();
            assert_eq!((ints(&out, 0), ints(&out, 1)), (vec![i], vec![i * 10]));
            assert!(!out.is_finished());
        }
        let mut out = Out::new(schema);
        produce_counter(&mut s, &tick, &mut out).unwrap();
        assert!(out.is_finished() && out.emitted().is_none());
    }

    #[test]
    fn tick_metadata_reports_the_tick_and_finishes_after_emitting() {
        let schema = output("produce_tick_metadata");
        let mut tick = Metadata::new();
        tick.insert(TICK_KEY.into(), "t-1".into());
        // A count of 0 still emits once: the reference checks after emitting.
        let mut s = Counter::new(0);
        let mut out = Out::new(schema.clone());
        produce_tick_metadata(&mut s, &tick, &mut out).unwrap();
        assert!(out.is_finished());
        let (b, _) = out.emitted().unwrap();
        assert_eq!(b.column(1).as_string::<i32>().value(0), "t-1");
        let mut s = Counter::new(2);
        let mut out = Out::new(schema);
        produce_tick_metadata(&mut s, &Metadata::new(), &mut out).unwrap();
        assert!(!out.is_finished());
        let (b, _) = out.emitted().unwrap();
        assert_eq!(b.column(1).as_string::<i32>().value(0), "");
    }

    #[test]
    fn large_batches_are_consecutive_and_capped() {
        let schema = output("produce_large_batches");
        let mut s = Large {
            rows_per_batch: 3,
            batch_count: 2,
            current: 1,
        };
        let mut out = Out::new(schema.clone());
        produce_large(&mut s, &Metadata::new(), &mut out).unwrap();
        assert_eq!(ints(&out, 0), vec![3, 4, 5]);
        assert_eq!(ints(&out, 1), vec![30, 40, 50]);
        let mut s = Large {
            rows_per_batch: MAX_ROWS_PER_BATCH + 1,
            batch_count: 1,
            current: 0,
        };
        let mut out = Out::new(schema);
        assert!(produce_large(&mut s, &Metadata::new(), &mut out).is_err());
    }

    #[test]
    fn annotated_batches_carry_their_own_index() {
        let schema = output("produce_annotated_batches");
        let mut s = Annotated {
            count: 3,
            rows_per_batch: 2,
            current: 2,
        };
        let mut out = Out::new(schema);
        produce_annotated(&mut s, &Metadata::new(), &mut out).unwrap();
        assert_eq!(ints(&out, 0), vec![2_000_000, 2_000_001]);
        let (_, md) = out.emitted().unwrap();
        assert_eq!(md["conformance.batch_index"], "2");
        assert_eq!(md["conformance.batch_total"], "3");
        assert_eq!(md["conformance.emit_label"], "ünïcode-λ");
    }

    #[test]
    fn dynamic_variants_cover_every_flag_combination() {
        let c = Catalog::load().unwrap();
        let m = c
            .protocol(PRIMARY)
            .unwrap()
            .method("produce_dynamic_schema")
            .unwrap();
        let names = |s: bool, f: bool| -> Vec<String> {
            let v = dynamic_variant(&m.variants, s, f).unwrap();
            let schema = v.output.as_ref().unwrap();
            schema.fields().iter().map(|f| f.name().clone()).collect()
        };
        assert_eq!(names(false, false), ["index"]);
        assert_eq!(names(true, true), ["index", "label", "score"]);
        assert_eq!(names(false, true), ["index", "score"]);
        dynamic_schema(m).unwrap();
    }
}
