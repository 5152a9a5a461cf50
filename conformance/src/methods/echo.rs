//! Methods that return their one argument: scalars, containers, optionals, every annotated
//! Arrow type, enums and dataclasses. The reference decodes the argument into a Python value
//! and encodes it back; the value is the same, so the column is returned as it came, after the
//! checks that decoding would have made (enum members, dataclass payloads).

use std::sync::Arc;

use super::dataclass::decode_dataclass;
use super::{values::check_statuses, Registrar, Worker};
use crate::error::{Error, Result};

/// Echoes whose argument needs no check beyond the server's schema check.
const PLAIN: &[&str] = &[
    "echo_string",
    "echo_bytes",
    "echo_int",
    "echo_float",
    "echo_bool",
    "echo_list",
    "echo_dict",
    "echo_nested_list",
    "echo_optional_string",
    "echo_optional_int",
    "echo_annotated_optional_int",
    "echo_outer_optional_non_null",
    "echo_int32",
    "echo_float32",
    "echo_int8",
    "echo_int16",
    "echo_uint8",
    "echo_uint16",
    "echo_uint32",
    "echo_uint64",
    "echo_date",
    "echo_timestamp",
    "echo_timestamp_utc",
    "echo_time",
    "echo_duration",
    "echo_decimal",
    "echo_large_string",
    "echo_large_binary",
    "echo_fixed_binary",
    "echo_dict_encoded_string",
];

/// Echoes of a dataclass (a `binary` column holding a one-row IPC stream): method, dataclass.
const DATACLASSES: &[(&str, &str)] = &[
    ("echo_point", "Point"),
    ("echo_optional_point", "Point"),
    ("echo_bounding_box", "BoundingBox"),
    ("echo_all_types", "AllTypes"),
    ("echo_wide_types", "WideTypes"),
    ("echo_container_wide_types", "ContainerWideTypes"),
    ("echo_embedded_arrow", "EmbeddedArrow"),
    ("echo_deep_nested", "DeepNested"),
];

pub(super) fn register(mut r: Registrar, worker: &Arc<Worker>) -> Result<Registrar> {
    for name in PLAIN {
        r = r.sync(name, |call| call.reply(call.params.column(0).clone()))?;
    }
    for (name, dataclass) in DATACLASSES {
        let schema = worker.catalog.dataclass(dataclass)?;
        let (params, _) = r.schemas().unary(name)?;
        let param = params
            .fields()
            .first()
            .map(|f| f.name().clone())
            .ok_or_else(|| Error::Catalog(format!("{name} takes no parameter")))?;
        r = r.sync(name, move |call| {
            if let Some(bytes) = call.optional_bytes(&param)? {
                decode_dataclass(bytes, &schema, dataclass)?;
            }
            call.reply(call.params.column(0).clone())
        })?;
    }
    r = r.sync("echo_enum", |call| {
        check_statuses(
            call.arg("status")?,
            "status was not reconstructed as a Status member",
        )?;
        call.reply(call.params.column(0).clone())
    })?;
    r = r.sync("echo_status_list", |call| {
        check_statuses(
            call.arg("statuses")?,
            "statuses were not reconstructed as Status members",
        )?;
        call.reply(call.params.column(0).clone())
    })?;
    r = r.sync("void_noop", |call| call.reply_void())?;
    r.sync("void_with_param", |call| {
        call.int("value")?;
        call.reply_void()
    })
}
