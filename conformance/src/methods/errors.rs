//! Methods that raise the exception they are named after, with the caller's message.

use super::call::{runtime_error, type_error, value_error};
use super::Registrar;
use crate::error::Result;

pub(super) fn register(r: Registrar) -> Result<Registrar> {
    r.sync("raise_value_error", |call| {
        Err(value_error(call.string("message")?))
    })?
    .sync("raise_runtime_error", |call| {
        Err(runtime_error(call.string("message")?))
    })?
    .sync("raise_type_error", |call| {
        Err(type_error(call.string("message")?))
    })
}
