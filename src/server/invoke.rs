//! Running a handler: the method timeout, panics turned into errors, and the check of what
//! it returned against what the method declares.

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::FutureExt;

use super::state::AppState;
use crate::wire::{ErrorCode, RpcError};

/// Runs a handler future within the method timeout, turning panics and timeouts into errors.
pub(crate) async fn run_handler<T>(
    st: &AppState,
    method_name: &str,
    fut: futures::future::BoxFuture<'static, Result<T, RpcError>>,
) -> Result<T, RpcError> {
    let outcome = tokio::time::timeout(
        st.config.method_timeout,
        std::panic::AssertUnwindSafe(fut).catch_unwind(),
    )
    .await;
    match outcome {
        Err(_) => Err(RpcError::new(
            "TimeoutError",
            format!(
                "method '{method_name}' did not finish within {} s",
                st.config.method_timeout.as_secs()
            ),
        )
        .with_code(ErrorCode::DeadlineExceeded)),
        Ok(Err(_panic)) => {
            tracing::error!(method = method_name, "method panicked");
            Err(RpcError::internal(format!(
                "method '{method_name}' panicked"
            )))
        }
        Ok(Ok(r)) => r,
    }
}

/// Checks a returned batch against the declared schema and row count; the declared schema
/// wins (field metadata from the handler is dropped).
pub(crate) fn conform_result(
    method_name: &str,
    batch: RecordBatch,
    schema: &SchemaRef,
    rows: Option<usize>,
) -> Result<RecordBatch, RpcError> {
    if !crate::wire::schemas_equal(batch.schema_ref(), schema) {
        return Err(RpcError::internal(format!(
            "method '{method_name}' returned schema {}, declared {}",
            batch.schema(),
            schema
        )));
    }
    if let Some(rows) = rows {
        if batch.num_rows() != rows {
            return Err(RpcError::internal(format!(
                "method '{method_name}' returned {} rows; a unary result has exactly {rows}",
                batch.num_rows()
            )));
        }
    }
    batch
        .with_schema(schema.clone())
        .map_err(|e| RpcError::internal(e.to_string()))
}
