//! How `spillway call` shows results: text tables, JSON lines or an Arrow IPC stream, one
//! batch at a time, to stdout or a file; and the one-line summaries on stderr.

use std::io::Write;
use std::path::Path;

use arrow_array::{Array, BinaryArray, RecordBatch};
use arrow_schema::SchemaRef;

use super::OutputFormat;
use crate::error::{Error, Result};

/// Objects at least this large get a progress bar while they download.
pub(super) const PROGRESS_BAR_MIN_BYTES: u64 = 16 * 1024 * 1024;

pub(super) fn fetch_progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "fetching {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The one-line summary of a resolved pointer: size, time, throughput, chunks, retries and
/// hedges.
pub fn fetch_summary(stats: &crate::fetch::FetchStats, url: &str) -> String {
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    format!(
        "externalized result: {} stored ({} decoded) fetched in {:.1} ms ({}/s; {} {}, {} {}, hedges {} launched / {} won) from {}",
        human_bytes(stats.encoded_bytes),
        human_bytes(stats.decoded_bytes),
        secs * 1000.0,
        human_bytes((stats.encoded_bytes as f64 / secs) as u64),
        stats.chunks,
        if stats.chunks == 1 { "chunk" } else { "chunks" },
        stats.retries,
        if stats.retries == 1 { "retry" } else { "retries" },
        stats.hedges_launched,
        stats.hedges_won,
        url
    )
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Most characters shown per cell; longer values are summarized.
const MAX_CELL_CHARS: usize = 64;
/// Most rows printed.
const MAX_ROWS: usize = 50;

/// A table of the batch, with long cells summarized (a 1 GiB binary prints as its size and
/// first bytes, not as 2 GiB of hex).
pub fn format_table(batch: &RecordBatch) -> Result<String> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_FULL_CONDENSED);
    let schema = batch.schema();
    table.set_header(
        schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type())),
    );
    let options = arrow_cast::display::FormatOptions::default().with_null("null");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for row in 0..batch.num_rows().min(MAX_ROWS) {
        let mut cells = Vec::new();
        for (col, fmt) in batch.columns().iter().zip(&formatters) {
            cells.push(cell_text(col.as_ref(), fmt, row));
        }
        table.add_row(cells);
    }
    let mut out = table.to_string();
    if batch.num_rows() > MAX_ROWS {
        out.push_str(&format!(
            "\n... {} more rows (use --output FILE for all of them)",
            batch.num_rows() - MAX_ROWS
        ));
    }
    Ok(out)
}

fn cell_text(col: &dyn Array, fmt: &arrow_cast::display::ArrayFormatter<'_>, row: usize) -> String {
    if let Some(b) = col.as_any().downcast_ref::<BinaryArray>() {
        if b.is_valid(row) && b.value(row).len() * 2 > MAX_CELL_CHARS {
            let v = b.value(row);
            let head: String = v.iter().take(8).map(|x| format!("{x:02x}")).collect();
            return format!("<{} bytes: {head}...>", v.len());
        }
    }
    let text = fmt.value(row).to_string();
    if text.chars().count() > MAX_CELL_CHARS {
        let head: String = text.chars().take(MAX_CELL_CHARS).collect();
        format!("{head}... ({} chars)", text.chars().count())
    } else {
        text
    }
}

/// Where results go, in one [`OutputFormat`]: every batch is written (and flushed) as it
/// arrives, so a long stream shows progress and a killed call keeps what it received.
pub(super) struct Sink {
    format: OutputFormat,
    out: Box<dyn Write + Send>,
    /// The open Arrow IPC stream of data batches, and its schema.
    arrow: Option<(arrow_ipc::writer::StreamWriter<CountingWriter>, SchemaRef)>,
    batches: usize,
}

/// Counts the bytes of an Arrow stream on their way to the sink's writer.
pub(super) struct CountingWriter {
    bytes: u64,
    buf: Vec<u8>,
}

impl Write for CountingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    /// A sink writing to `path` (created or truncated), or to stdout. Arrow is refused on a
    /// terminal: binary output would garble it.
    pub(super) fn open(format: OutputFormat, path: Option<&Path>) -> Result<Sink> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .map_err(|e| Error::Config(format!("cannot write {}: {e}", p.display())))?,
            )),
            None => {
                use std::io::IsTerminal;
                if format == OutputFormat::Arrow && std::io::stdout().is_terminal() {
                    return Err(Error::Config(
                        "refusing to write binary Arrow IPC to a terminal: use --output FILE \
                         or redirect stdout"
                            .into(),
                    ));
                }
                Box::new(std::io::stdout())
            }
        };
        Ok(Sink {
            format,
            out,
            arrow: None,
            batches: 0,
        })
    }

    fn io(e: std::io::Error) -> Error {
        Error::Config(format!("cannot write the output: {e}"))
    }

    /// Writes `bytes` and flushes.
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(Self::io)?;
        self.out.flush().map_err(Self::io)
    }

    /// The stream header: a `header:` table, a `{"__header__": {...}}` line, or (Arrow) a
    /// complete IPC stream of its own ahead of the data stream, as the reference CLI writes.
    pub(super) fn header(&mut self, batch: &RecordBatch) -> Result<()> {
        match self.format {
            OutputFormat::Table => {
                let text = format!("header:\n{}\n", format_table(batch)?);
                self.put(text.as_bytes())
            }
            OutputFormat::Json => {
                let rows = json_rows(batch)?;
                let first = rows.first().map(String::as_str).unwrap_or("{}");
                self.put(format!("{{\"__header__\":{first}}}\n").as_bytes())
            }
            OutputFormat::Arrow => {
                let bytes = crate::wire::write_stream(
                    &batch.schema(),
                    &[crate::wire::MetaBatch::plain(batch.clone())],
                )?;
                self.put(&bytes)
            }
        }
    }

    /// One data batch.
    pub(super) fn batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.batches += 1;
        match self.format {
            OutputFormat::Table => {
                let text = format!("{}\n", format_table(batch)?);
                self.put(text.as_bytes())
            }
            OutputFormat::Json => {
                let mut text = String::new();
                if batch.num_columns() == 0 {
                    // A void result, as the reference prints it.
                    text.push_str("null\n");
                }
                for row in json_rows(batch)? {
                    text.push_str(&row);
                    text.push('\n');
                }
                self.put(text.as_bytes())
            }
            OutputFormat::Arrow => {
                // A batch on another schema closes the stream and starts the next one.
                if self
                    .arrow
                    .as_ref()
                    .is_some_and(|(_, s)| s.as_ref() != batch.schema_ref().as_ref())
                {
                    self.finish_arrow()?;
                }
                if self.arrow.is_none() {
                    let w = arrow_ipc::writer::StreamWriter::try_new(
                        CountingWriter {
                            bytes: 0,
                            buf: Vec::new(),
                        },
                        batch.schema_ref(),
                    )?;
                    self.arrow = Some((w, batch.schema()));
                }
                let bytes = match self.arrow.as_mut() {
                    Some((w, _)) => {
                        w.write(batch)?;
                        std::mem::take(&mut w.get_mut().buf)
                    }
                    None => Vec::new(),
                };
                self.put(&bytes)
            }
        }
    }

    fn finish_arrow(&mut self) -> Result<()> {
        if let Some((mut w, _)) = self.arrow.take() {
            w.finish()?;
            let bytes = std::mem::take(&mut w.get_mut().buf);
            self.put(&bytes)?;
        }
        Ok(())
    }

    /// Ends the output. `schema` is the stream's output schema, so that an Arrow stream
    /// without batches is still a valid, empty stream.
    pub(super) fn finish(mut self, schema: Option<&SchemaRef>) -> Result<()> {
        if self.format == OutputFormat::Arrow && self.arrow.is_none() && self.batches == 0 {
            if let Some(schema) = schema {
                let bytes = crate::wire::write_stream(schema, &[])?;
                self.put(&bytes)?;
            }
        }
        self.finish_arrow()?;
        self.out.flush().map_err(Self::io)
    }
}

/// The rows of `batch` as JSON objects (every column present, nulls as `null`).
pub(super) fn json_rows(batch: &RecordBatch) -> Result<Vec<String>> {
    if batch.num_columns() == 0 {
        return Ok(Vec::new());
    }
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    let text =
        String::from_utf8(buf).map_err(|_| Error::Internal("json output is not utf-8".into()))?;
    Ok(text.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fetch_summary_line() {
        let stats = crate::fetch::FetchStats {
            encoded_bytes: 64 * 1024 * 1024,
            decoded_bytes: 64 * 1024 * 1024,
            elapsed: Duration::from_millis(500),
            chunks: 8,
            retries: 1,
            hedges_launched: 2,
            hedges_won: 1,
            ..Default::default()
        };
        assert_eq!(
            fetch_summary(&stats, "http://h/k"),
            "externalized result: 64.0 MiB stored (64.0 MiB decoded) fetched in 500.0 ms \
             (128.0 MiB/s; 8 chunks, 1 retry, hedges 2 launched / 1 won) from http://h/k"
        );
    }

    #[test]
    fn big_binary_cells_are_summarized() {
        let b = crate::demo::binary_result_batch(vec![0xab; 1000]).unwrap();
        let t = format_table(&b).unwrap();
        assert!(t.contains("<1000 bytes: abababababababab...>"), "{t}");
        assert!(t.len() < 400);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
