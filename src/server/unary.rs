//! Unary calls: `POST {prefix}/{protocol}/{method}`.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};

use super::admission::Admitted;
use super::emit::{emit_cycle, response_limit};
use super::invoke::{conform_result, run_handler};
use super::protocol::{CallContext, Method, UnaryMethod};
use super::request::{read_call, CallRequest, Failure};
use super::response::{arrow_response, ApiError, ExternalizedBytes};
use super::state::{AppState, RequestId};
use crate::wire::{pointer_batch, MetaBatch, RpcError};

/// `POST {prefix}/{protocol}/{method}`.
pub(crate) async fn unary(
    State(st): State<Arc<AppState>>,
    Path((protocol, method)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
    Extension(Admitted { auth, memory }): Extension<Admitted>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = match read_call(
        &st, &protocol, &method, &rid.0, &uri, &headers, body, &memory,
    )
    .await
    {
        Ok(c) => c,
        Err(f) => return f.into_response(&rid.0),
    };
    let unary = match &call.method {
        Method::Unary(u) => u.clone(),
        Method::Stream(_) => {
            return ApiError::bad_request(format!(
                "Stream method '{method}' requires /init and /exchange endpoints"
            ))
            .with_request_id(&rid.0)
            .into_response()
        }
    };
    let ctx = CallContext::new(
        call.protocol.name(),
        &method,
        call.metadata.clone(),
        &rid.0,
        auth,
        memory,
    );
    match invoke(&st, &unary, call, ctx).await {
        Ok(resp) => resp,
        Err(f) => f.into_response(&rid.0),
    }
}

fn void_batch() -> Result<RecordBatch, ApiError> {
    RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(0)),
    )
    .map_err(|e| ApiError::server(RpcError::internal(e.to_string())))
}

async fn invoke(
    st: &AppState,
    method: &UnaryMethod,
    call: CallRequest,
    ctx: CallContext,
) -> Result<Response, Failure> {
    let method_name = ctx.method().to_string();
    let method_name = method_name.as_str();
    let result_schema: &SchemaRef = &method.result;
    let fail = |e: RpcError| Failure::Api(ApiError::server(e).on_schema(result_schema));
    let fut = (method.handler)(ctx.clone(), call.params);
    let batch = run_handler(st, method_name, fut).await.map_err(fail)?;
    let log_batches: Vec<MetaBatch> = ctx
        .take_logs()
        .iter()
        .map(|l| l.to_batch(result_schema))
        .collect();
    if let Some((url, sha)) = ctx.take_pointer() {
        let mut batches = log_batches;
        batches.push(pointer_batch(result_schema, &url, sha.as_deref()));
        return Ok(arrow_response(result_schema, &batches));
    }
    let batch = if result_schema.fields().is_empty() {
        void_batch().map_err(Failure::Api)?
    } else {
        conform_result(method_name, batch, result_schema, Some(1)).map_err(fail)?
    };
    let limit = response_limit(st, call.client_max);
    let emitted = emit_cycle(
        st,
        result_schema,
        log_batches,
        MetaBatch::plain(batch),
        false,
        limit,
        &ctx,
    )
    .await
    .map_err(fail)?;
    let mut resp = arrow_response(result_schema, &emitted.batches);
    if emitted.externalized_bytes > 0 {
        resp.extensions_mut()
            .insert(ExternalizedBytes(emitted.externalized_bytes));
    }
    Ok(resp)
}
