//! Methods that compute a value from several arguments, and the `Status` enum's rules.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int16Type;
use arrow_array::{Array, ArrayRef, Float64Array, StringArray};
use arrow_schema::DataType;
use spillway::wire::RpcError;

use super::call::type_error;
use super::{Registrar, Worker};
use crate::error::Result;

/// The members of the reference's `Status` enum, by name (enums travel as their member name in
/// a `dictionary(int16, utf8)` column).
pub(crate) const STATUS_MEMBERS: &[&str] = &["PENDING", "ACTIVE", "CLOSED"];

pub(super) fn register(r: Registrar, _worker: &Arc<Worker>) -> Result<Registrar> {
    r.sync("add_floats", |call| {
        let sum = call.float("a")? + call.float("b")?;
        call.reply(Arc::new(Float64Array::from(vec![sum])))
    })?
    .sync("concatenate", |call| {
        let (prefix, suffix) = (call.string("prefix")?, call.string("suffix")?);
        let separator = call.string("separator")?;
        call.reply(Arc::new(StringArray::from(vec![format!(
            "{prefix}{separator}{suffix}"
        )])))
    })?
    .sync("with_defaults", |call| {
        let text = format!(
            "required={}, optional_str={}, optional_int={}",
            call.int("required")?,
            call.string("optional_str")?,
            call.int("optional_int")?
        );
        call.reply(Arc::new(StringArray::from(vec![text])))
    })
}

/// Checks that every `Status` value in `array` (a dictionary column, or a list or map of them)
/// is a member: what the reference's `isinstance(x, Status)` checks after decoding. Fails with
/// `TypeError: {message}`.
pub(crate) fn check_statuses(array: &ArrayRef, message: &str) -> Result<(), RpcError> {
    let fail = || type_error(message);
    match array.data_type() {
        DataType::List(_) => check_statuses(array.as_list::<i32>().values(), message),
        DataType::LargeList(_) => check_statuses(array.as_list::<i64>().values(), message),
        DataType::Map(_, _) => check_statuses(array.as_map().values(), message),
        DataType::Dictionary(_, _) => {
            let dict = array.as_dictionary_opt::<Int16Type>().ok_or_else(fail)?;
            let names = dict.values().as_string_opt::<i32>().ok_or_else(fail)?;
            for key in dict.keys().iter() {
                let key = key.ok_or_else(fail)?;
                let index = usize::try_from(key).map_err(|_| fail())?;
                if index >= names.len() || !STATUS_MEMBERS.contains(&names.value(index)) {
                    return Err(fail());
                }
            }
            Ok(())
        }
        _ => Err(fail()),
    }
}

/// The `Status` names in a dictionary column (or list of them), in order.
pub(crate) fn status_names(array: &ArrayRef) -> Result<Vec<String>, RpcError> {
    let fail = || type_error("expected Status members");
    let dict = array.as_dictionary_opt::<Int16Type>().ok_or_else(fail)?;
    let names = dict.values().as_string_opt::<i32>().ok_or_else(fail)?;
    dict.keys()
        .iter()
        .map(|k| {
            let index = k.and_then(|k| usize::try_from(k).ok()).ok_or_else(fail)?;
            (index < names.len())
                .then(|| names.value(index).to_string())
                .ok_or_else(fail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use arrow_array::{DictionaryArray, ListArray};
    use arrow_buffer::OffsetBuffer;
    use arrow_schema::Field;

    use super::*;

    fn statuses(names: &[Option<&str>]) -> ArrayRef {
        Arc::new(
            names
                .iter()
                .copied()
                .collect::<DictionaryArray<Int16Type>>(),
        )
    }

    #[test]
    fn status_members_pass_and_strangers_fail() {
        check_statuses(&statuses(&[Some("ACTIVE"), Some("CLOSED")]), "m").unwrap();
        let e =
            check_statuses(&statuses(&[Some("ACTIVE"), Some("active")]), "bad status").unwrap_err();
        assert_eq!(e.error_type, "TypeError");
        assert_eq!(e.message, "bad status");
        assert!(check_statuses(&statuses(&[None]), "m").is_err());
        let values = statuses(&[Some("PENDING"), Some("NOPE")]);
        let field = Arc::new(Field::new("item", values.data_type().clone(), true));
        let list: ArrayRef = Arc::new(
            ListArray::try_new(field, OffsetBuffer::from_lengths([2]), values, None).unwrap(),
        );
        assert!(check_statuses(&list, "m").is_err());
        let plain: ArrayRef = Arc::new(StringArray::from(vec!["ACTIVE"]));
        assert!(check_statuses(&plain, "m").is_err());
        assert_eq!(
            status_names(&statuses(&[Some("CLOSED"), Some("PENDING")])).unwrap(),
            ["CLOSED", "PENDING"]
        );
    }
}
