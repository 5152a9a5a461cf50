//! The crate's one error type (start-up and configuration failures; RPC failures are
//! [`spillway::wire::RpcError`]s and storage failures [`spillway_storage::StorageError`]s).

/// What can stop the worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded schema catalog is damaged or lacks something the worker needs.
    #[error("schema catalog: {0}")]
    Catalog(String),
    /// A flag has a value the worker cannot honour.
    #[error("configuration error: {0}")]
    Config(String),
    /// The fake storage service could not be reached or answered unexpectedly.
    #[error(transparent)]
    Storage(#[from] spillway_storage::StorageError),
    /// Spillway refused the configuration (protocol names, fetcher, ...).
    #[error(transparent)]
    Spillway(#[from] spillway::Error),
    /// Binding or serving failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
