//! The protocols the worker hosts and their methods, grouped as the reference groups them.
//!
//! Every method is registered through a [`Registrar`], which takes its schemas from the
//! [`Catalog`] (never from hand-written Arrow types) and remembers which catalog methods are
//! implemented, so [`Registrar::unimplemented`] lists exactly what is left (nothing, today).
//! A stream method is added with [`Registrar::stream`], whose builder gets the method's
//! params, output/input variants and header schemas from the catalog; [`streams`] adapts the
//! reference's state-object model to Spillway's stream API.

mod call;
mod dataclass;
mod echo;
mod errors;
mod exchanges;
mod external;
mod headers;
mod logging;
mod probes;
mod producers;
mod secondary;
pub mod streams;
mod values;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use spillway::externalize::Compression;
use spillway::server::{HandlerResult, Protocol, StreamMethod};
use spillway_storage::Storage;

pub use call::{conform, runtime_error, type_error, value_error, Call};
pub use external::Published;
pub use probes::CancelProbe;

use crate::catalog::{Catalog, MethodKind, MethodSchemas, ProtocolSchemas, PRIMARY, SECONDARY};
use crate::error::{Error, Result};

/// State shared by every call: what the reference keeps on its implementation object.
#[derive(Debug)]
pub struct Worker {
    /// Every method's schemas.
    pub catalog: Catalog,
    /// The fake storage, when `--fake-storage` is given (`published_string` publishes there).
    pub storage: Option<Arc<dyn Storage>>,
    /// The object compression of the worker (`published_string` applies it as well).
    pub compression: Compression,
    /// `published_string`'s publish-once cache.
    pub published: Published,
    /// Counters the cancellation tests read back (`cancel_probe_counters`).
    pub cancel_probe: CancelProbe,
}

impl Worker {
    /// A worker over `catalog`, with an optional storage.
    pub fn new(
        catalog: Catalog,
        storage: Option<Arc<dyn Storage>>,
        compression: Compression,
    ) -> Self {
        Worker {
            catalog,
            storage,
            compression,
            published: Published::default(),
            cancel_probe: CancelProbe::default(),
        }
    }
}

/// The protocols, primary first (it is the one `/health` names).
pub fn protocols(worker: &Arc<Worker>) -> Result<Vec<Protocol>> {
    Ok(vec![
        conformance_service(worker)?.finish()?,
        secondary_protocol(worker)?.finish()?,
    ])
}

/// `ConformanceService`, every method.
pub fn conformance_service(worker: &Arc<Worker>) -> Result<Registrar> {
    let r = Registrar::new(worker.catalog.protocol(PRIMARY)?)?;
    let r = echo::register(r, worker)?;
    let r = values::register(r, worker)?;
    let r = dataclass::register(r, worker)?;
    let r = errors::register(r)?;
    let r = logging::register(r)?;
    let r = external::register(r, worker)?;
    let r = producers::register(r, worker)?;
    let r = exchanges::register(r, worker)?;
    probes::register(r, worker)
}

/// `conformance.Secondary.v1`.
pub fn secondary_protocol(worker: &Arc<Worker>) -> Result<Registrar> {
    secondary::register(Registrar::new(worker.catalog.protocol(SECONDARY)?)?)
}

/// Builds one protocol from catalog schemas and method implementations.
pub struct Registrar {
    schemas: ProtocolSchemas,
    protocol: Protocol,
    registered: BTreeSet<String>,
}

impl Registrar {
    /// A protocol named and versioned as the catalog says.
    pub fn new(schemas: &ProtocolSchemas) -> Result<Self> {
        let mut protocol = Protocol::new(schemas.name())?;
        if let Some(v) = &schemas.version {
            protocol = protocol.with_version(v)?;
        }
        Ok(Registrar {
            schemas: schemas.clone(),
            protocol,
            registered: BTreeSet::new(),
        })
    }

    /// The protocol's schemas.
    pub fn schemas(&self) -> &ProtocolSchemas {
        &self.schemas
    }

    /// Registers an async unary method; its params and result schemas come from the catalog.
    pub fn unary<F, Fut>(mut self, name: &str, handler: F) -> Result<Self>
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        if !self.registered.insert(name.to_string()) {
            return Err(Error::Catalog(format!(
                "{}.{name} registered twice",
                self.schemas.name()
            )));
        }
        let (params, result) = self.schemas.unary(name)?;
        let declared = result.clone();
        self.protocol = self
            .protocol
            .unary(name, params, result, move |ctx, params| {
                handler(Call {
                    ctx,
                    params,
                    result: declared.clone(),
                })
            });
        Ok(self)
    }

    /// Registers a unary method that does not wait on anything.
    pub fn sync<F>(self, name: &str, handler: F) -> Result<Self>
    where
        F: Fn(&Call) -> HandlerResult + Send + Sync + 'static,
    {
        self.unary(name, move |call| std::future::ready(handler(&call)))
    }

    /// Registers a stream method; `build` makes it from the method's catalog schemas (params,
    /// output/input per variant, header).
    pub fn stream<B>(mut self, name: &str, build: B) -> Result<Self>
    where
        B: FnOnce(&MethodSchemas) -> Result<StreamMethod>,
    {
        let schemas = self.schemas.method(name)?;
        if schemas.kind == MethodKind::Unary {
            return Err(Error::Catalog(format!(
                "{}.{name} is unary, not a stream",
                self.schemas.name()
            )));
        }
        let method = build(schemas)?;
        if method.is_exchange() != (schemas.kind == MethodKind::Exchange) {
            return Err(Error::Catalog(format!(
                "{}.{name} is a {:?} in the catalog",
                self.schemas.name(),
                schemas.kind
            )));
        }
        if !self.registered.insert(name.to_string()) {
            return Err(Error::Catalog(format!(
                "{}.{name} registered twice",
                self.schemas.name()
            )));
        }
        self.protocol = self.protocol.stream(name, method);
        Ok(self)
    }

    /// Catalog methods with no implementation, with their kinds.
    pub fn unimplemented(&self) -> Vec<(String, MethodKind)> {
        self.schemas
            .methods()
            .filter(|(name, _)| !self.registered.contains(*name))
            .map(|(name, m)| (name.to_string(), m.kind))
            .collect()
    }

    /// The protocol, after logging what it lacks.
    pub fn finish(self) -> Result<Protocol> {
        for (name, kind) in self.unimplemented() {
            tracing::debug!(
                protocol = self.schemas.name(),
                method = %name,
                ?kind,
                "not implemented in this worker"
            );
        }
        Ok(self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalog_method_is_implemented() {
        let worker = Arc::new(Worker::new(
            Catalog::load().unwrap(),
            None,
            Compression::None,
        ));
        let primary = conformance_service(&worker).unwrap();
        let left = primary.unimplemented();
        assert!(
            left.is_empty(),
            "methods without an implementation: {left:?}"
        );
        let secondary = secondary_protocol(&worker).unwrap();
        assert!(secondary.unimplemented().is_empty());
        let all = protocols(&worker).unwrap();
        assert_eq!(all[0].name(), "ConformanceService");
        assert_eq!(all[0].version(), Some((2, 0, 0)));
        assert_eq!(all[1].name(), "conformance.Secondary.v1");
        assert_eq!(all[1].version(), None);
    }

    #[test]
    fn a_method_cannot_be_registered_twice_or_outside_the_catalog() {
        let worker = Arc::new(Worker::new(
            Catalog::load().unwrap(),
            None,
            Compression::None,
        ));
        let r = Registrar::new(worker.catalog.protocol(PRIMARY).unwrap()).unwrap();
        let r = r.sync("echo_string", |c| c.reply_void()).unwrap();
        assert!(r.sync("echo_string", |c| c.reply_void()).is_err());
        let r = Registrar::new(worker.catalog.protocol(PRIMARY).unwrap()).unwrap();
        assert!(r.sync("not_a_method", |c| c.reply_void()).is_err());
        let r = Registrar::new(worker.catalog.protocol(PRIMARY).unwrap()).unwrap();
        assert!(r.sync("produce_n", |c| c.reply_void()).is_err());
    }

    /// A producer that finishes at once, on the catalog's schemas of `name`.
    fn empty_producer(m: &MethodSchemas) -> Result<StreamMethod> {
        let output = m.variants[0].output.clone().unwrap();
        Ok(StreamMethod::producer(
            m.params.clone(),
            output,
            |_ctx, _params| async { Ok(spillway::server::StreamStart::default()) },
            |_ctx, _turn| async {
                Ok(spillway::server::TurnOutput {
                    finished: true,
                    ..Default::default()
                })
            },
        ))
    }

    #[test]
    fn streams_register_on_their_catalog_schemas() {
        let worker = Arc::new(Worker::new(
            Catalog::load().unwrap(),
            None,
            Compression::None,
        ));
        let r = Registrar::new(worker.catalog.protocol(PRIMARY).unwrap()).unwrap();
        let r = r.stream("produce_empty", empty_producer).unwrap();
        assert!(!r.unimplemented().iter().any(|(n, _)| n == "produce_empty"));
        // Kind mismatches and unary names are refused.
        let r = Registrar::new(worker.catalog.protocol(PRIMARY).unwrap()).unwrap();
        assert!(r.stream("exchange_scale", empty_producer).is_err());
        let r = Registrar::new(worker.catalog.protocol(PRIMARY).unwrap()).unwrap();
        assert!(r.stream("echo_string", empty_producer).is_err());
    }
}
