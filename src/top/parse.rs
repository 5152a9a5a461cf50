//! A bounded parser of the Prometheus text exposition format (version 0.0.4), reduced to what
//! `spillway top` reads: the samples (`name{label="value",...} value [timestamp]`). Comments
//! (`# HELP`, `# TYPE`) are skipped: a histogram's series are recognised by their `_bucket`,
//! `_sum` and `_count` suffixes.
//!
//! Why not a crate: the Rust parsers of this format pull a regex engine and a date library in
//! for the timestamps, and none bounds its input; this one reads at most [`MAX_SAMPLES`]
//! samples and fails on the first malformed line (a replica answering garbage is shown as down
//! with the line, not half-read).

/// The most samples one exposition may hold (a Spillway replica exposes a few hundred; a
/// scrape of something else is refused rather than held in memory).
pub(crate) const MAX_SAMPLES: usize = 200_000;
/// The most labels one sample may carry.
const MAX_LABELS: usize = 32;

/// One sample of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// The series name, e.g. `spillway_rpc_calls_total` or `..._bucket`.
    pub(crate) name: String,
    /// Its labels, in exposition order.
    pub(crate) labels: Vec<(String, String)>,
    /// Its value (`NaN`, `+Inf` and `-Inf` included).
    pub(crate) value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why an exposition could not be read: the 1-based line and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    /// The line (1-based), 0 for the whole body.
    pub(crate) line: usize,
    /// What was wrong, lowercase.
    pub(crate) what: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "not a prometheus exposition: {}", self.what)
        } else {
            write!(
                f,
                "not a prometheus exposition: line {}: {}",
                self.line, self.what
            )
        }
    }
}

/// Parses a whole exposition.
pub(crate) fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if samples.len() >= MAX_SAMPLES {
            return Err(ParseError {
                line: 0,
                what: format!("more than {MAX_SAMPLES} samples"),
            });
        }
        let sample = parse_line(line).map_err(|what| ParseError { line: i + 1, what })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or_else(|| "a sample without a value".to_string())?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("invalid metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| "a sample without a value".to_string())?;
    let value = parse_value(value).ok_or_else(|| "a value that is not a number".to_string())?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| "a timestamp that is not an integer".to_string())?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the value".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Metric and label names: `[a-zA-Z_:][a-zA-Z0-9_:]*` (label names without the colon, which
/// is accepted here too: it never appears in a label name Spillway writes).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A histogram bucket's `le` bound.
pub(crate) fn parse_le(v: &str) -> Option<f64> {
    parse_value(v).filter(|b| !b.is_nan())
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse::<f64>().ok(),
    }
}

/// Parses `k="v",...}` (the opening brace already consumed); returns the labels and the text
/// after the closing brace.
/// Labels in exposition order.
type Labels = Vec<(String, String)>;

fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Ok((labels, tail));
        }
        if labels.len() >= MAX_LABELS {
            return Err(format!("more than {MAX_LABELS} labels"));
        }
        let eq = s
            .find('=')
            .ok_or_else(|| "a label without a value".to_string())?;
        let key = s[..eq].trim();
        if !valid_name(key) {
            return Err("invalid label name".into());
        }
        s = s[eq + 1..].trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| "a label value without quotes".to_string())?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("an invalid escape in a label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(tail) = s.strip_prefix(',') {
            s = tail;
        } else if !s.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_labels_escapes_and_special_values() {
        let text = "# HELP x a help\n# TYPE x counter\nx 1\n\
                    y{a=\"1\",b=\"q\\\"uo\\\\te\\n\"} 2.5 1700000000000\n\
                    z_bucket{le=\"+Inf\",} +Inf\nw NaN\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "x");
        assert_eq!(s[0].value, 1.0);
        assert_eq!(s[1].label("a"), Some("1"));
        assert_eq!(s[1].label("b"), Some("q\"uo\\te\n"));
        assert_eq!(s[1].value, 2.5);
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!(s[2].value.is_infinite());
        assert!(s[3].value.is_nan());
    }

    #[test]
    fn garbage_is_refused_with_its_line() {
        for (text, line) in [
            ("ok 1\n<html>hello</html>\n", 2),
            ("a{b=\"c} 1\n", 1),
            ("a{b=c} 1\n", 1),
            ("a one\n", 1),
            ("a 1 2 3\n", 1),
            ("9a 1\n", 1),
            ("a{b=\"\\x\"} 1\n", 1),
            ("a\n", 1),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().starts_with("not a prometheus exposition"));
        }
    }

    #[test]
    fn too_many_samples_or_labels_are_refused() {
        let many = "a 1\n".repeat(MAX_SAMPLES + 1);
        assert_eq!(parse(&many).unwrap_err().line, 0);
        let labels: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}=\"v\"")).collect();
        let line = format!("a{{{}}} 1\n", labels.join(","));
        assert!(parse(&line).unwrap_err().what.contains("labels"));
    }
}
