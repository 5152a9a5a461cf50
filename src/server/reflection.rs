//! `vgi_rpc.Reflection.v1`: the hosted protocols describe themselves (not implemented yet).

use std::sync::Arc;

use super::service::Protocol;

/// The reflection protocol's wire name.
pub const REFLECTION_PROTOCOL: &str = "vgi_rpc.Reflection.v1";

/// The reflection protocol over `hosted` (`primary` first in listings).
pub(crate) fn protocol(primary: &str, hosted: &[Arc<Protocol>]) -> Protocol {
    let _ = (primary, hosted);
    Protocol::new_reserved(REFLECTION_PROTOCOL)
}
