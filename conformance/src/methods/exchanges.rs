//! Exchange streams, as the reference's `ExchangeState`s (`_types.py`) define them: each input
//! batch yields exactly one output batch.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};
use spillway::wire::{Metadata, RpcError};

use super::call::{runtime_error, type_error, value_error};
use super::headers::{conformance_header, rich_header};
use super::producers::MAX_ROWS_PER_BATCH;
use super::streams::{declared_header, exchange, Input, Out, Start};
use super::{Registrar, Worker};
use crate::error::Result;
use crate::pyrepr::float_repr;

/// The input metadata key `exchange_input_metadata` reports.
const INPUT_METADATA_KEY: &str = "vgi.conformance.input";

/// The float64 column `name` of an input batch.
fn floats<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Float64Array, RpcError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Float64Type>())
        .ok_or_else(|| type_error(format!("input column '{name}' must be float64")))
}

/// `pc.sum(column).as_py()`: `None` for an empty or all-null column.
fn sum(values: &Float64Array) -> Option<f64> {
    (values.null_count() < values.len()).then(|| values.iter().flatten().sum())
}

/// `ScaleExchangeState.exchange`: `value * factor`, nulls kept.
fn scale(factor: &mut f64, input: Input<'_>, out: &mut Out) -> Result<(), RpcError> {
    let factor = *factor;
    let scaled: Float64Array = floats(input.batch, "value")?.unary(|v| v * factor);
    out.emit(vec![Arc::new(scaled)])
}

/// Echoes the input batch (`out.emit(input.batch)`).
fn echo(input: Input<'_>, out: &mut Out) -> Result<(), RpcError> {
    out.emit(input.batch.columns().to_vec())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Accumulate {
    running_sum: f64,
    exchange_count: i64,
}

pub(super) fn register(r: Registrar, worker: &Arc<Worker>) -> Result<Registrar> {
    let r = r
        .stream("exchange_scale", |m| {
            Ok(exchange(
                m,
                |call| Ok(Start::new(call.float("factor")?)),
                scale,
            ))
        })?
        .stream("exchange_cast_compatible", |m| {
            Ok(exchange(m, |_call| Ok(Start::new(1.0f64)), scale))
        })?
        .stream("exchange_accumulate", |m| {
            Ok(exchange(
                m,
                |_call| Ok(Start::new(Accumulate::default())),
                accumulate,
            ))
        })?
        .stream("exchange_with_logs", |m| {
            Ok(exchange(
                m,
                |_call| Ok(Start::new(())),
                |_s: &mut (), input, out| {
                    out.log("INFO", "exchange processing");
                    out.log("DEBUG", "exchange debug");
                    echo(input, out)
                },
            ))
        })?
        .stream("exchange_zero_columns", |m| {
            Ok(exchange(
                m,
                |_call| Ok(Start::new(0i64)),
                |calls: &mut i64, _input, out| {
                    *calls += 1;
                    out.emit(Vec::new())
                },
            ))
        })?
        .stream("exchange_input_metadata", |m| {
            Ok(exchange(
                m,
                |_call| Ok(Start::new(())),
                |_s: &mut (), input, out| input_metadata(input.metadata, out),
            ))
        })?
        .stream("exchange_error_on_nth", |m| {
            Ok(exchange(
                m,
                |call| Ok(Start::new((call.int("fail_on")?, 0i64))),
                error_on_nth,
            ))
        })?
        .stream("exchange_error_on_init", |m| {
            Ok(exchange(
                m,
                |_call| -> Result<Start<()>, RpcError> {
                    Err(runtime_error("intentional exchange init error"))
                },
                |_s: &mut (), input, out| echo(input, out),
            ))
        })?
        .stream("exchange_oversized", |m| {
            Ok(exchange(
                m,
                |call| Ok(Start::new(call.int("rows_per_batch")?)),
                |rows: &mut i64, _input, out| oversized(*rows, out),
            ))
        })?
        .stream("exchange_with_header", |m| {
            let schema = declared_header(m)?;
            Ok(exchange(
                m,
                move |call| {
                    let factor = call.float("factor")?;
                    let header = conformance_header(
                        &schema,
                        0,
                        &format!("scale by {}", float_repr(factor)),
                    )?;
                    Ok(Start::new(factor).with_header(header))
                },
                scale,
            ))
        })?
        .stream("exchange_with_rich_header", |m| {
            let schema = declared_header(m)?;
            Ok(exchange(
                m,
                move |call| {
                    let header = rich_header(&schema, call.int("seed")?)?;
                    Ok(Start::new(call.float("factor")?).with_header(header))
                },
                scale,
            ))
        })?;
    let tick_probe = worker.clone();
    let cancel_probe = worker.clone();
    r.stream("cancellable_exchange", move |m| {
        Ok(exchange(
            m,
            |_call| Ok(Start::new(())),
            move |_s: &mut (), input, out| {
                tick_probe.cancel_probe.exchanged();
                echo(input, out)
            },
        )
        .on_cancel(move |_ctx, _state| {
            cancel_probe.cancel_probe.cancelled();
            std::future::ready(())
        }))
    })?
    .stream("exchange_session_counter", |m| {
        Ok(exchange(
            m,
            |_call| Ok(Start::new(())),
            |_s: &mut (), input, _out| {
                input
                    .batch
                    .column_by_name("by")
                    .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    .ok_or_else(|| type_error("input column 'by' must be int64"))?;
                // The counter lives in a sticky session, which this worker does not offer.
                Err(runtime_error("no sticky counter bound to this request"))
            },
        ))
    })
}

/// `AccumulatingExchangeState.exchange`: the running sum of every input's values and the
/// number of exchanges so far.
fn accumulate(s: &mut Accumulate, input: Input<'_>, out: &mut Out) -> Result<(), RpcError> {
    // The reference adds `None` to a float for an empty or all-null input.
    let col_sum = sum(floats(input.batch, "value")?)
        .ok_or_else(|| type_error("unsupported operand type(s) for +=: 'float' and 'NoneType'"))?;
    s.running_sum += col_sum;
    s.exchange_count += 1;
    out.emit(vec![
        Arc::new(Float64Array::from(vec![s.running_sum])),
        Arc::new(Int64Array::from(vec![s.exchange_count])),
    ])
}

/// `FailOnExchangeNState.exchange`: echoes, and raises on exchange number `fail_on`
/// (1-based) and after; state is `(fail_on, exchanges so far)`.
fn error_on_nth(s: &mut (i64, i64), input: Input<'_>, out: &mut Out) -> Result<(), RpcError> {
    s.1 += 1;
    if s.1 >= s.0 {
        return Err(runtime_error(format!(
            "intentional error on exchange {}",
            s.1
        )));
    }
    echo(input, out)
}

/// `InputMetadataExchangeState.exchange`: the input's `vgi.conformance.input` value and every
/// key it carried, sorted and comma-joined.
fn input_metadata(md: &Metadata, out: &mut Out) -> Result<(), RpcError> {
    let seen = md.get(INPUT_METADATA_KEY).cloned().unwrap_or_default();
    let mut keys: Vec<&str> = md.keys().map(String::as_str).collect();
    keys.sort_unstable();
    out.emit(vec![
        Arc::new(StringArray::from(vec![seen])) as ArrayRef,
        Arc::new(StringArray::from(vec![keys.join(",")])),
    ])
}

/// `OversizedExchangeState.exchange`: `rows` rows of `{index, value}` whatever the input.
fn oversized(rows: i64, out: &mut Out) -> Result<(), RpcError> {
    if rows > MAX_ROWS_PER_BATCH {
        return Err(value_error(format!(
            "rows_per_batch {rows} is above this worker's limit of {MAX_ROWS_PER_BATCH}"
        )));
    }
    let indices: Vec<i64> = (0..rows.max(0)).collect();
    let values: Vec<i64> = indices.iter().map(|i| i * 10).collect();
    out.emit(vec![
        Arc::new(Int64Array::from(indices)),
        Arc::new(Int64Array::from(values)),
    ])
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_schema::SchemaRef;

    use super::*;
    use crate::catalog::{Catalog, PRIMARY};
    use crate::methods::streams::{declared_input, declared_output};

    fn schemas(method: &str) -> (SchemaRef, SchemaRef) {
        let c = Catalog::load().unwrap();
        let m = c.protocol(PRIMARY).unwrap().method(method).unwrap().clone();
        (declared_input(&m), declared_output(&m))
    }

    fn values(schema: &SchemaRef, v: Vec<Option<f64>>) -> RecordBatch {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Float64Array::from(v))]).unwrap()
    }

    #[test]
    fn sum_is_none_for_empty_and_all_null_columns() {
        assert_eq!(sum(&Float64Array::from(vec![1.5, 2.0])), Some(3.5));
        assert_eq!(sum(&Float64Array::from(vec![Some(1.0), None])), Some(1.0));
        assert_eq!(sum(&Float64Array::from(Vec::<f64>::new())), None);
        assert_eq!(sum(&Float64Array::from(vec![None, None])), None);
    }

    #[test]
    fn scale_multiplies_and_keeps_nulls() {
        let (input, output) = schemas("exchange_scale");
        let batch = values(&input, vec![Some(1.5), None, Some(-2.0)]);
        let md = Metadata::new();
        let mut out = Out::new(output);
        scale(
            &mut 2.0,
            Input {
                batch: &batch,
                metadata: &md,
            },
            &mut out,
        )
        .unwrap();
        let (b, _) = out.emitted().unwrap();
        let col = b.column(0).as_primitive::<Float64Type>();
        assert_eq!(
            col.iter().collect::<Vec<_>>(),
            vec![Some(3.0), None, Some(-4.0)]
        );
    }

    #[test]
    fn accumulate_keeps_a_running_sum_and_refuses_an_empty_input() {
        let (input, output) = schemas("exchange_accumulate");
        let md = Metadata::new();
        let mut state = Accumulate::default();
        for (v, want) in [(vec![Some(1.0), Some(2.0)], 3.0), (vec![Some(4.0)], 7.0)] {
            let batch = values(&input, v);
            let mut out = Out::new(output.clone());
            accumulate(
                &mut state,
                Input {
                    batch: &batch,
                    metadata: &md,
                },
                &mut out,
            )
            .unwrap();
            let (b, _) = out.emitted().unwrap();
            assert_eq!(b.column(0).as_primitive::<Float64Type>().value(0), want);
        }
        assert_eq!(state.exchange_count, 2);
        let empty = values(&input, vec![]);
        let mut out = Out::new(output);
        let e = accumulate(
            &mut state,
            Input {
                batch: &empty,
                metadata: &md,
            },
            &mut out,
        )
        .unwrap_err();
        assert_eq!(e.error_type, "TypeError");
        assert_eq!(state.exchange_count, 2);
    }

    #[test]
    fn error_on_nth_echoes_until_the_nth_exchange() {
        let (input, output) = schemas("exchange_error_on_nth");
        let md = Metadata::new();
        let batch = values(&input, vec![Some(5.0)]);
        let mut state = (2, 0);
        let mut out = Out::new(output.clone());
        error_on_nth(
            &mut state,
            Input {
                batch: &batch,
                metadata: &md,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out.emitted().unwrap().0.num_rows(), 1);
        let mut out = Out::new(output);
        let e = error_on_nth(
            &mut state,
            Input {
                batch: &batch,
                metadata: &md,
            },
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "RuntimeError: intentional error on exchange 2"
        );
    }

    #[test]
    fn input_metadata_reports_the_key_and_every_key_sorted() {
        let (_, output) = schemas("exchange_input_metadata");
        let mut md = Metadata::new();
        md.insert("zeta".into(), "1".into());
        md.insert(INPUT_METADATA_KEY.into(), "hello".into());
        let mut out = Out::new(output.clone());
        input_metadata(&md, &mut out).unwrap();
        let (b, _) = out.emitted().unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "hello");
        assert_eq!(
            b.column(1).as_string::<i32>().value(0),
            "vgi.conformance.input,zeta"
        );
        let mut out = Out::new(output);
        input_metadata(&Metadata::new(), &mut out).unwrap();
        let (b, _) = out.emitted().unwrap();
        assert_eq!(b.column(0).as_string::<i32>().value(0), "");
        assert_eq!(b.column(1).as_string::<i32>().value(0), "");
    }

    #[test]
    fn oversized_emits_the_requested_rows_within_the_limit() {
        let (_, output) = schemas("exchange_oversized");
        let mut out = Out::new(output.clone());
        oversized(3, &mut out).unwrap();
        assert_eq!(out.emitted().unwrap().0.num_rows(), 3);
        let mut out = Out::new(output);
        assert!(oversized(MAX_ROWS_PER_BATCH + 1, &mut out).is_err());
    }
}
