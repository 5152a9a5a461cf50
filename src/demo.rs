//! The built-in demo protocol, `spillway.Demo.v1`, served by `spillway serve`.
//!
//! - `blob(size: int64) -> binary`: `size` bytes of incompressible generated data; a size at
//!   or above the threshold shows externalization at once.
//! - `echo(data: binary) -> binary`: returns its input; a large input exercises the
//!   upload-URL flow.

use std::sync::Arc;

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rand::{RngCore, SeedableRng};

use crate::error::Result;
use crate::server::Protocol;
use crate::wire::RpcError;

/// The protocol's wire name.
pub const PROTOCOL: &str = "spillway.Demo.v1";

/// The largest `blob` a binary column can hold in one value (i32 offsets).
pub const MAX_BLOB_BYTES: u64 = i32::MAX as u64;

/// `blob`'s parameters: `size: int64 not null`.
pub fn blob_params() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "size",
        DataType::Int64,
        false,
    )]))
}

/// `echo`'s parameters: `data: binary not null`.
pub fn echo_params() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "data",
        DataType::Binary,
        false,
    )]))
}

/// Both methods' result: `result: binary not null`.
pub fn binary_result() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Binary,
        false,
    )]))
}

/// A one-row `result: binary` batch holding `data`, without copying it.
pub fn binary_result_batch(data: Vec<u8>) -> std::result::Result<RecordBatch, RpcError> {
    let len = i32::try_from(data.len())
        .map_err(|_| RpcError::invalid_argument("a binary value holds at most 2 GiB - 1 bytes"))?;
    let offsets = OffsetBuffer::new(ScalarBuffer::from(vec![0i32, len]));
    let array = BinaryArray::try_new(offsets, Buffer::from_vec(data), None)
        .map_err(|e| RpcError::internal(e.to_string()))?;
    RecordBatch::try_new(binary_result(), vec![Arc::new(array)])
        .map_err(|e| RpcError::internal(e.to_string()))
}

/// Incompressible bytes (a seeded ChaCha stream: fast, and the same for the same seed).
pub fn generate_blob(size: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// The demo protocol; `blob` sizes above `max_blob_bytes` are refused.
pub fn protocol_with_limit(max_blob_bytes: u64) -> Result<Protocol> {
    let max_blob_bytes = max_blob_bytes.min(MAX_BLOB_BYTES);
    // No declared version: any client can call the demo without knowing one.
    Ok(Protocol::new(PROTOCOL)?
        .unary(
            "blob",
            blob_params(),
            binary_result(),
            move |ctx, params| async move {
                let size = params
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .filter(|a| a.len() == 1 && a.is_valid(0))
                    .map(|a| a.value(0))
                    .ok_or_else(|| RpcError::invalid_argument("size must be one int64"))?;
                if size < 0 {
                    return Err(RpcError::invalid_argument(format!(
                        "size must be >= 0, got {size}"
                    )));
                }
                if size as u64 > max_blob_bytes {
                    return Err(RpcError::invalid_argument(format!(
                        "size {size} exceeds this server's demo limit of {max_blob_bytes} bytes"
                    )));
                }
                ctx.log("DEBUG", format!("generating {size} bytes"));
                let seed = rand::random::<u64>();
                let data = tokio::task::spawn_blocking(move || generate_blob(size as usize, seed))
                    .await
                    .map_err(|e| RpcError::internal(format!("generator failed: {e}")))?;
                binary_result_batch(data)
            },
        )
        .unary(
            "echo",
            echo_params(),
            binary_result(),
            |_ctx, params| async move {
                let col = params
                    .column(0)
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .filter(|a| a.len() == 1 && a.is_valid(0))
                    .ok_or_else(|| RpcError::invalid_argument("data must be one binary value"))?
                    .clone();
                RecordBatch::try_new(binary_result(), vec![Arc::new(col)])
                    .map_err(|e| RpcError::internal(e.to_string()))
            },
        ))
}

/// The demo protocol with the default blob limit (1 GiB).
pub fn protocol() -> Result<Protocol> {
    protocol_with_limit(1024 * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_incompressible_and_seeded() {
        let a = generate_blob(1 << 20, 7);
        assert_eq!(a, generate_blob(1 << 20, 7));
        assert_ne!(a, generate_blob(1 << 20, 8));
        let compressed = zstd::bulk::compress(&a, 3).unwrap();
        assert!(compressed.len() as f64 > a.len() as f64 * 0.99);
    }

    #[test]
    fn result_batch_wraps_without_copy() {
        let b = binary_result_batch(b"abc".to_vec()).unwrap();
        let col = b.column(0).as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(col.value(0), b"abc");
    }
}
