//! Exchange input for `spillway call`: batches from an Arrow IPC stream or file, JSON lines,
//! or `--send` rows, read one at a time (a large input is never held whole).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;

use super::call::parse_params;
use crate::error::{Error, Result};

/// Longest JSON line accepted (one exchange step).
const MAX_JSON_LINE_BYTES: u64 = 64 * 1024 * 1024;

/// The Arrow IPC file format's magic.
const ARROW_FILE_MAGIC: &[u8] = b"ARROW1";

/// A source of exchange input batches.
pub(super) enum Input {
    Stream(arrow_ipc::reader::StreamReader<BufReader<Box<dyn Read + Send>>>),
    File(arrow_ipc::reader::FileReader<std::fs::File>),
    Json {
        reader: BufReader<Box<dyn Read + Send>>,
        line: usize,
    },
    Rows(VecDeque<String>),
}

fn cannot(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("cannot read input {}: {e}", path.display()))
}

impl Input {
    /// `--input PATH` (`-` is stdin): Arrow IPC (stream or file format) when it starts like
    /// one, else JSON lines.
    pub(super) fn open(path: &Path) -> Result<Input> {
        let stdin = path.as_os_str() == "-";
        if !stdin {
            let mut f = std::fs::File::open(path).map_err(|e| cannot(path, e))?;
            let mut magic = [0u8; 6];
            let n = f.read(&mut magic).map_err(|e| cannot(path, e))?;
            if n == ARROW_FILE_MAGIC.len() && magic == ARROW_FILE_MAGIC {
                let f = std::fs::File::open(path).map_err(|e| cannot(path, e))?;
                return Ok(Input::File(
                    arrow_ipc::reader::FileReader::try_new(f, None).map_err(|e| cannot(path, e))?,
                ));
            }
        }
        let raw: Box<dyn Read + Send> = if stdin {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(path).map_err(|e| cannot(path, e))?)
        };
        let mut reader = BufReader::new(raw);
        let head = reader.fill_buf().map_err(|e| cannot(path, e))?;
        // An IPC stream starts with the continuation marker; JSON never does.
        if head.starts_with(&[0xff, 0xff, 0xff, 0xff]) {
            Ok(Input::Stream(
                arrow_ipc::reader::StreamReader::try_new(reader, None)
                    .map_err(|e| cannot(path, e))?,
            ))
        } else {
            Ok(Input::Json { reader, line: 0 })
        }
    }

    /// `--send` rows, one step each.
    pub(super) fn rows(rows: &[String]) -> Input {
        Input::Rows(rows.iter().cloned().collect())
    }

    /// The next input batch, or `None` at the end.
    pub(super) fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match self {
            Input::Stream(r) => r.next().transpose().map_err(|e| input_err("arrow", e)),
            Input::File(r) => r.next().transpose().map_err(|e| input_err("arrow", e)),
            Input::Rows(rows) => match rows.pop_front() {
                None => Ok(None),
                Some(row) => {
                    let pairs: Vec<String> = row.split(',').map(str::to_string).collect();
                    parse_params(&pairs)
                        .map(Some)
                        .map_err(|e| Error::Config(format!("--send {row:?}: {}", plain(e))))
                }
            },
            Input::Json { reader, line } => loop {
                let mut text = String::new();
                let n = reader
                    .by_ref()
                    .take(MAX_JSON_LINE_BYTES + 1)
                    .read_line(&mut text)
                    .map_err(|e| input_err("json", e))?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                if n as u64 > MAX_JSON_LINE_BYTES {
                    return Err(Error::Config(format!(
                        "input line {line} is longer than {MAX_JSON_LINE_BYTES} bytes"
                    )));
                }
                if text.trim().is_empty() {
                    continue;
                }
                return json_row(&text)
                    .map(Some)
                    .map_err(|e| Error::Config(format!("input line {line}: {}", plain(e))));
            },
        }
    }
}

/// An error's text without the `configuration error: ` prefix (for wrapping it).
fn plain(e: Error) -> String {
    match e {
        Error::Config(m) => m,
        other => other.to_string(),
    }
}

fn input_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("cannot read {what} input: {e}"))
}

/// One JSON object as a one-row batch, its types inferred (integers are int64, numbers
/// float64: use Arrow IPC input for other types).
fn json_row(text: &str) -> Result<RecordBatch> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::Config(format!("not json: {e}")))?;
    if !value.is_object() {
        return Err(Error::Config("not a json object".into()));
    }
    let schema =
        arrow_json::reader::infer_json_schema_from_iterator(std::iter::once(Ok(value.clone())))?;
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::new(schema)).build_decoder()?;
    decoder.serialize(&[value])?;
    decoder
        .flush()?
        .ok_or_else(|| Error::Config("empty json object".into()))
}
