//! Python's text forms of values, for methods whose result is text the reference formats with
//! an f-string (`inspect_point` answers `f"Point({x}, {y})"`, `fail` says `f"{code!r} is ..."`).

/// `repr(x)` / `str(x)` of a Python float: the shortest digits that round-trip, in fixed
/// notation when the decimal exponent is in `[-4, 16)` (always with a fractional part, `2.0`),
/// otherwise in scientific notation with a signed exponent of at least two digits (`1e+16`,
/// `1.5e-05`).
///
/// ```
/// use spillway_conformance::pyrepr::float_repr;
/// assert_eq!(float_repr(2.0), "2.0");
/// assert_eq!(float_repr(1e16), "1e+16");
/// assert_eq!(float_repr(0.00001), "1e-05");
/// ```
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` writes the shortest round-tripping digits, as Python's repr does; only the
    // layout differs.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{exp_sign}{:02}", exp.unsigned_abs());
    }
    // Position of the decimal point relative to the start of `digits`.
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else {
        let point = point as usize;
        if point >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    format!("{sign}{body}")
}

/// `repr(s)` of a Python `str`: single quotes unless the text holds a single quote and no
/// double quote; backslash, the quote, `\n`, `\r`, `\t` and other control characters escaped
/// (`\xNN`). Other characters are kept, as Python keeps printable ones; Python also escapes a
/// few non-printable non-control code points (e.g. U+2028), which this does not.
///
/// ```
/// use spillway_conformance::pyrepr::str_repr;
/// assert_eq!(str_repr("NOT_A_CODE"), "'NOT_A_CODE'");
/// assert_eq!(str_repr("it's"), "\"it's\"");
/// ```
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::{float_repr, str_repr};

    #[test]
    fn str_repr_matches_python() {
        // Expected values are Python 3's repr() of the same strings.
        for (s, want) in [
            ("", "''"),
            ("abc", "'abc'"),
            ("it's", "\"it's\""),
            ("both ' and \"", "'both \\' and \"'"),
            ("a\\b", "'a\\\\b'"),
            ("line\nnext\t", "'line\\nnext\\t'"),
            ("\u{1}\u{7f}", "'\\x01\\x7f'"),
            ("ünï", "'ünï'"),
        ] {
            assert_eq!(str_repr(s), want, "{s:?}");
        }
    }

    #[test]
    fn matches_python_repr() {
        // Expected values are Python 3's repr() of the same doubles.
        for (x, want) in [
            (1.5, "1.5"),
            (2.0, "2.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-1.5e-7, "-1.5e-07"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
            (100.0, "100.0"),
            (9007199254740993.0, "9007199254740992.0"),
        ] {
            assert_eq!(float_repr(x), want, "{x:e}");
        }
    }
}
