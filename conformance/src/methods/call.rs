//! What a method implementation gets (the call's context, its parameters and its result schema)
//! and the errors it raises, named as the Python reference's exceptions.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema, SchemaRef};
use spillway::server::{CallContext, HandlerResult};
use spillway::wire::RpcError;

/// One call of a unary method.
#[derive(Debug, Clone)]
pub struct Call {
    /// The server's context (logs, pointer responses, metadata).
    pub ctx: CallContext,
    /// The request's parameters: one row on the method's params schema (the server checked it).
    pub params: RecordBatch,
    /// The method's declared result schema.
    pub result: SchemaRef,
}

/// `TypeError: message` (unclassified, so its code is `UNKNOWN`, as the reference's).
pub fn type_error(message: impl Into<String>) -> RpcError {
    RpcError::new("TypeError", message)
}

/// `ValueError: message`.
pub fn value_error(message: impl Into<String>) -> RpcError {
    RpcError::new("ValueError", message)
}

/// `RuntimeError: message`.
pub fn runtime_error(message: impl Into<String>) -> RpcError {
    RpcError::new("RuntimeError", message)
}

impl Call {
    /// The parameter column `name`.
    pub fn arg(&self, name: &str) -> Result<&ArrayRef, RpcError> {
        let col = self
            .params
            .column_by_name(name)
            .ok_or_else(|| type_error(format!("missing parameter '{name}'")))?;
        if col.is_empty() {
            return Err(type_error(format!("parameter '{name}' has no value")));
        }
        Ok(col)
    }

    fn present<'a>(&self, name: &str, col: &'a ArrayRef) -> Result<&'a ArrayRef, RpcError> {
        if col.is_null(0) {
            return Err(type_error(format!("parameter '{name}' must not be None")));
        }
        Ok(col)
    }

    fn wrong_type(&self, name: &str, want: &str) -> RpcError {
        type_error(format!("parameter '{name}' must be {want}"))
    }

    /// A `str` parameter.
    pub fn string(&self, name: &str) -> Result<String, RpcError> {
        let col = self.present(name, self.arg(name)?)?;
        if let Some(a) = col.as_string_opt::<i32>() {
            return Ok(a.value(0).to_string());
        }
        if let Some(a) = col.as_string_opt::<i64>() {
            return Ok(a.value(0).to_string());
        }
        Err(self.wrong_type(name, "a string"))
    }

    /// An `int` parameter (int64 on the wire).
    pub fn int(&self, name: &str) -> Result<i64, RpcError> {
        let col = self.present(name, self.arg(name)?)?;
        col.as_primitive_opt::<Int64Type>()
            .map(|a| a.value(0))
            .ok_or_else(|| self.wrong_type(name, "an int64"))
    }

    /// A `float` parameter (float64 on the wire).
    pub fn float(&self, name: &str) -> Result<f64, RpcError> {
        let col = self.present(name, self.arg(name)?)?;
        col.as_primitive_opt::<arrow_array::types::Float64Type>()
            .map(|a| a.value(0))
            .ok_or_else(|| self.wrong_type(name, "a float64"))
    }

    /// A `bool` parameter.
    pub fn boolean(&self, name: &str) -> Result<bool, RpcError> {
        let col = self.present(name, self.arg(name)?)?;
        col.as_boolean_opt()
            .map(|a| a.value(0))
            .ok_or_else(|| self.wrong_type(name, "a bool"))
    }

    /// A `bytes` parameter (also how a dataclass travels); `None` when it is null.
    pub fn optional_bytes(&self, name: &str) -> Result<Option<&[u8]>, RpcError> {
        let col = self.arg(name)?;
        if col.is_null(0) {
            return Ok(None);
        }
        col.as_binary_opt::<i32>()
            .map(|a| Some(a.value(0)))
            .ok_or_else(|| self.wrong_type(name, "binary"))
    }

    /// A non-null `bytes` parameter.
    pub fn bytes(&self, name: &str) -> Result<&[u8], RpcError> {
        self.optional_bytes(name)?
            .ok_or_else(|| type_error(format!("parameter '{name}' must not be None")))
    }

    /// The result batch holding `column` as `result`. A column whose type differs from the
    /// declared one only in nested field names or nullability (a peer's spelling) is cast.
    pub fn reply(&self, column: ArrayRef) -> HandlerResult {
        let want = self
            .result
            .fields()
            .first()
            .ok_or_else(|| RpcError::internal("reply() on a void method"))?
            .data_type();
        let column = conform(column, want)?;
        RecordBatch::try_new(self.result.clone(), vec![column])
            .map_err(|e| RpcError::internal(format!("building the result: {e}")))
    }

    /// The result of a void method.
    pub fn reply_void(&self) -> HandlerResult {
        Ok(RecordBatch::new_empty(Arc::new(Schema::empty())))
    }
}

/// `column` as type `want`: unchanged if it already is, cast otherwise.
pub fn conform(column: ArrayRef, want: &DataType) -> Result<ArrayRef, RpcError> {
    if column.data_type() == want {
        return Ok(column);
    }
    arrow_cast::cast(&column, want).map_err(|e| {
        RpcError::internal(format!(
            "cannot convert {} to {want}: {e}",
            column.data_type()
        ))
    })
}
