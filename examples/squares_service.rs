//! A service built on the library (the README's "Building a service on the library"): one
//! unary method, `example.Squares.v1.square(n: int64) -> int64`, with the embedded store for
//! externalized results. Needs no `spillway` feature (no command line).
//!
//! ```sh
//! cargo run --example squares_service
//! cargo run -- call example.Squares.v1.square n=12
//! ```

use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use spillway::server::{Protocol, Server, ServerConfig};
use spillway::wire::RpcError;
use spillway_storage_local::{LocalStore, LocalStoreConfig};

const LISTEN: &str = "127.0.0.1:8080";
/// Where the embedded store's objects are served, under the server's prefix.
const OBJECTS_PATH: &str = "/objects";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let params = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let result = Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Int64,
        false,
    )]));
    let out = result.clone();
    let protocol =
        Protocol::new("example.Squares.v1")?.unary("square", params, result, move |ctx, batch| {
            let out = out.clone();
            async move {
                ctx.log("INFO", "squaring");
                // Peers send the params: an error, not a panic, when they do not fit.
                let n = batch
                    .column_by_name("n")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .filter(|a| a.len() == 1 && a.is_valid(0))
                    .map(|a| a.value(0))
                    .ok_or_else(|| RpcError::invalid_argument("n must be one int64"))?;
                let square = n
                    .checked_mul(n)
                    .ok_or_else(|| RpcError::invalid_argument("n * n overflows int64"))?;
                RecordBatch::try_new(out, vec![Arc::new(Int64Array::from(vec![square]))])
                    .map_err(|e| RpcError::internal(e.to_string()))
            }
        });

    // Any `spillway_storage::Storage` works (S3, GCS, ...); results at or above the threshold
    // go there. The embedded store is a directory whose objects this server serves itself.
    let config = ServerConfig::default();
    let store = Arc::new(LocalStore::new(LocalStoreConfig {
        root: std::env::temp_dir().join("squares-objects"),
        key_prefix: "squares/".into(),
        public_base: format!("http://{LISTEN}{OBJECTS_PATH}/").parse()?,
        secret: config.signing_secret.clone(),
        previous_secrets: config.previous_signing_secrets.clone(),
        max_object_bytes: config.max_upload_bytes,
    })?);
    let router = Server::new(config)
        .with_protocol(protocol)
        .with_storage(store.clone())
        .with_storage_routes(OBJECTS_PATH, store.router())
        .router(); // a plain axum::Router
    axum::serve(tokio::net::TcpListener::bind(LISTEN).await?, router).await?;
    Ok(())
}
