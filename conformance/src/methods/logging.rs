//! Methods that log to the client before answering (client-directed logging).

use super::Registrar;
use crate::error::Result;

/// The levels `echo_with_all_log_levels` emits, in order (EXCEPTION is reserved for errors).
const ALL_LEVELS: &[&str] = &["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

pub(super) fn register(r: Registrar) -> Result<Registrar> {
    r.sync("echo_with_info_log", |call| {
        let value = call.string("value")?;
        call.ctx.log("INFO", format!("info: {value}"));
        call.reply(call.params.column(0).clone())
    })?
    .sync("echo_with_multi_logs", |call| {
        let value = call.string("value")?;
        call.ctx.log("DEBUG", format!("debug: {value}"));
        call.ctx.log("INFO", format!("info: {value}"));
        call.ctx.log("WARN", format!("warn: {value}"));
        call.reply(call.params.column(0).clone())
    })?
    .sync("echo_with_log_extras", |call| {
        let value = call.string("value")?;
        let mut extra = serde_json::Map::new();
        extra.insert("source".into(), "conformance".into());
        extra.insert("detail".into(), value.clone().into());
        call.ctx
            .log_with_extra("INFO", format!("info: {value}"), extra);
        call.reply(call.params.column(0).clone())
    })?
    .sync("echo_with_all_log_levels", |call| {
        let value = call.string("value")?;
        for level in ALL_LEVELS {
            call.ctx
                .log(level, format!("{}: {value}", level.to_ascii_lowercase()));
        }
        call.reply(call.params.column(0).clone())
    })
}
