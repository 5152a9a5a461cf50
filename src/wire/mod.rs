//! The vgi-rpc 0.52 wire format: IPC framing with per-message metadata, and the protocol's
//! special batches (pointers, logs, errors); [`http`] holds the HTTP vocabulary (headers,
//! routes, bounds, normalizations) that the client and the server share.

mod batches;
pub mod http;
mod ipc;

pub use batches::{
    classify, is_pointer, keys, pointer_batch, BatchKind, ErrorCode, LogMessage, RpcError,
    MAX_ERROR_DETAILS_BYTES, REQUEST_VERSION,
};
pub use ipc::{
    read_stream, read_streams, schemas_equal, write_stream, IpcStream, IpcStreamWriter, MetaBatch,
    Metadata, ReadLimits, ARROW_STREAM_CONTENT_TYPE,
};

use arrow_array::{Array, RecordBatch};

/// The size measure used for externalization decisions: the bytes of the batch's buffers, as
/// sliced (close to the IPC body size).
pub fn batch_buffer_size(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}
