//! The built-in functions of rule SQL (EMQX's names and behaviour). [`arity`] is checked when a
//! rule is compiled, so a call with the wrong number of arguments never reaches [`call`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{Map, Value};

use crate::eval::{as_number, float, text, topic_matches};

/// The fewest and most arguments of function `name`; `None` for an unknown function.
pub fn arity(name: &str) -> Option<(usize, usize)> {
    Some(match name {
        "now_timestamp" | "now_rfc3339" | "uuid_v4" => (0, 1),
        "json_decode" | "json_encode" | "base64_encode" | "base64_decode" | "bin2hexstr"
        | "hexstr2bin" | "str" | "int" | "float" | "bool" | "lower" | "upper" | "trim"
        | "first" | "last" | "length" | "abs" | "round" | "floor" | "ceil" | "sqrt" | "md5"
        | "sha" | "sha256" | "is_null" | "rfc3339_to_unix_ts" => (1, 1),
        "unix_ts_to_rfc3339" => (1, 2),
        "split" | "tokens" => (2, 3),
        "substr" => (2, 3),
        "replace" => (3, 3),
        "regex_match" | "nth" | "contains" | "power" | "map_get" | "topic_match" => (2, 2),
        "regex_replace" | "map_put" => (3, 3),
        "concat" | "coalesce" => (1, usize::MAX),
        "sprintf" => (1, usize::MAX),
        "format_date" => (4, 4),
        _ => return None,
    })
}

/// Calls `name` with `args` (their number already checked).
pub fn call(name: &str, args: Vec<Value>) -> Result<Value, String> {
    let a = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
    let s = |i: usize| text(&args.get(i).cloned().unwrap_or(Value::Null));
    let n = |i: usize| {
        let v = args.get(i).cloned().unwrap_or(Value::Null);
        as_number(&v).ok_or_else(|| format!("{name}: {v} is not a number"))
    };
    Ok(match name {
        "json_decode" => serde_json::from_str(&s(0)).map_err(|e| format!("json_decode: {e}"))?,
        "json_encode" => Value::String(a(0).to_string()),
        "base64_encode" => Value::String(B64.encode(s(0))),
        "base64_decode" => {
            let bytes = B64
                .decode(s(0))
                .map_err(|e| format!("base64_decode: {e}"))?;
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }
        "bin2hexstr" => Value::String(s(0).bytes().map(|b| format!("{b:02X}")).collect()),
        "hexstr2bin" => Value::String(hex_decode(&s(0))?),
        "str" => Value::String(s(0)),
        "int" => to_int(&a(0))?,
        "float" => float(n(0)?),
        "bool" => to_bool(&a(0))?,
        "lower" => Value::String(s(0).to_lowercase()),
        "upper" => Value::String(s(0).to_uppercase()),
        "trim" => Value::String(s(0).trim().to_string()),
        "concat" => Value::String(args.iter().map(text).collect()),
        "split" | "tokens" => split(name, &s(0), &s(1), args.len() == 3),
        "substr" => substr(&s(0), n(1)?, args.get(2).and_then(as_number)),
        "replace" => Value::String(s(0).replace(&s(1), &s(2))),
        "regex_match" => Value::Bool(regex(&s(1))?.is_match(&s(0))),
        "regex_replace" => Value::String(regex(&s(1))?.replace_all(&s(0), s(2)).into_owned()),
        "sprintf" => Value::String(sprintf(&s(0), &args[1.min(args.len())..])),
        "map_get" => map_get(&a(1), &s(0)),
        "map_put" => map_put(a(2), &s(0), a(1))?,
        "nth" => nth(n(0)?, a(1)),
        "first" | "last" => end_of(name, a(0)),
        "length" => Value::from(length(&a(0))),
        "contains" => Value::Bool(matches!(a(1), Value::Array(items) if items.contains(&a(0)))),
        "abs" => number_fn(&a(0), f64::abs)?,
        "round" => float(n(0)?.round()),
        "floor" => float(n(0)?.floor()),
        "ceil" => float(n(0)?.ceil()),
        "power" => float(n(0)?.powf(n(1)?)),
        "sqrt" => float(n(0)?.sqrt()),
        "md5" => Value::String(hex_of(&md5_digest(s(0).as_bytes()))),
        "sha" => Value::String(hex_of(&sha1_digest(s(0).as_bytes()))),
        "sha256" => Value::String(hex_of(&sha256_digest(s(0).as_bytes()))),
        "now_timestamp" => Value::from(now(&s(0))),
        "now_rfc3339" => Value::String(rfc3339(now(&s(0)), &s(0))?),
        "unix_ts_to_rfc3339" => Value::String(rfc3339(n(0)? as i64, &s(1))?),
        "rfc3339_to_unix_ts" => Value::from(from_rfc3339(&s(0))?),
        "format_date" => Value::String(format_date(&s(0), &s(1), &s(2), n(3)? as i64)?),
        "uuid_v4" => Value::String(uuid_v4()?),
        "coalesce" => args
            .into_iter()
            .find(|v| !v.is_null())
            .unwrap_or(Value::Null),
        "is_null" => Value::Bool(a(0).is_null()),
        "topic_match" => Value::Bool(topic_matches(&s(1), &s(0))),
        other => return Err(format!("unknown function {other}")),
    })
}

fn to_int(v: &Value) -> Result<Value, String> {
    match v {
        Value::Bool(b) => Ok(Value::from(i64::from(*b))),
        _ => as_number(v)
            .map(|x| Value::from(x.trunc() as i64))
            .ok_or_else(|| format!("int: {v} is not a number")),
    }
}

fn to_bool(v: &Value) -> Result<Value, String> {
    match v {
        Value::Bool(b) => Ok(Value::Bool(*b)),
        Value::String(s) if s == "true" => Ok(Value::Bool(true)),
        Value::String(s) if s == "false" => Ok(Value::Bool(false)),
        _ => match as_number(v) {
            Some(x) => Ok(Value::Bool(x != 0.0)),
            None => Err(format!("bool: {v} is not a boolean")),
        },
    }
}

fn number_fn(v: &Value, f: fn(f64) -> f64) -> Result<Value, String> {
    match v.as_i64() {
        Some(i) => Ok(Value::from(i.saturating_abs())),
        None => as_number(v)
            .map(|x| float(f(x)))
            .ok_or_else(|| format!("{v} is not a number")),
    }
}

/// `split(s, sep)` drops empty parts (EMQX), `split(s, sep, 'notrim')` keeps them;
/// `tokens(s, chars)` splits at any of the separator characters.
fn split(name: &str, s: &str, sep: &str, keep_empty: bool) -> Value {
    let parts: Vec<&str> = match name {
        "tokens" => s.split(|c| sep.contains(c)).collect(),
        _ if sep.is_empty() => vec![s],
        _ => s.split(sep).collect(),
    };
    let keep = keep_empty && name == "split";
    Value::Array(
        parts
            .into_iter()
            .filter(|p| keep || !p.is_empty())
            .map(|p| Value::String(p.to_string()))
            .collect(),
    )
}

/// `substr(s, start[, length])`, 0-based, in characters.
fn substr(s: &str, start: f64, len: Option<f64>) -> Value {
    let start = start.max(0.0) as usize;
    let chars = s.chars().skip(start);
    Value::String(match len {
        Some(l) => chars.take(l.max(0.0) as usize).collect(),
        None => chars.collect(),
    })
}

fn regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("regex: {e}"))
}

/// EMQX's sprintf: `~s` and `~p` take the next argument, `~~` is a tilde.
fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut next = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('~', Some('s' | 'p')) => {
                chars.next();
                out.push_str(&next.next().map(text).unwrap_or_default());
            }
            ('~', Some('~')) => {
                chars.next();
                out.push('~');
            }
            (c, _) => out.push(c),
        }
    }
    out
}

fn map_get(map: &Value, key: &str) -> Value {
    let mut v = map.clone();
    for part in key.split('.') {
        v = match v {
            Value::Object(mut m) => m.remove(part).unwrap_or(Value::Null),
            _ => return Value::Null,
        };
    }
    v
}

fn map_put(map: Value, key: &str, value: Value) -> Result<Value, String> {
    let mut m = match map {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => return Err(format!("map_put: {other} is not a map")),
    };
    m.insert(key.to_string(), value);
    Ok(Value::Object(m))
}

fn nth(n: f64, list: Value) -> Value {
    match list {
        Value::Array(items) if n >= 1.0 => {
            items.into_iter().nth(n as usize - 1).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    }
}

fn end_of(name: &str, list: Value) -> Value {
    match list {
        Value::Array(mut items) if name == "first" && !items.is_empty() => items.swap_remove(0),
        Value::Array(mut items) => items.pop().unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn length(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.len(),
        Value::Object(m) => m.len(),
        Value::String(s) => s.chars().count(),
        _ => 0,
    }
}

fn hex_decode(s: &str) -> Result<String, String> {
    if !s.len().is_multiple_of(2) {
        return Err("hexstr2bin: odd length".into());
    }
    let bytes: Result<Vec<u8>, _> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16))
        .collect();
    let bytes = bytes.map_err(|_| "hexstr2bin: not hexadecimal".to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_digest(b: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(b).to_vec()
}

fn sha1_digest(b: &[u8]) -> Vec<u8> {
    use sha1::Digest;
    sha1::Sha1::digest(b).to_vec()
}

fn sha256_digest(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

/// Now in `unit`: second (the default), millisecond, microsecond or nanosecond.
fn now(unit: &str) -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    match unit {
        "millisecond" => d.as_millis() as i64,
        "microsecond" => d.as_micros() as i64,
        "nanosecond" => d.as_nanos() as i64,
        _ => d.as_secs() as i64,
    }
}

/// A Unix timestamp in `unit` (second by default) in nanoseconds.
fn nanos_of(ts: i64, unit: &str) -> i128 {
    let scale = match unit {
        "millisecond" => 1_000_000,
        "microsecond" => 1_000,
        "nanosecond" => 1,
        _ => 1_000_000_000,
    };
    i128::from(ts) * scale
}

/// A Unix timestamp in `unit` (second by default) as RFC 3339.
fn rfc3339(ts: i64, unit: &str) -> Result<String, String> {
    let nanos = nanos_of(ts, unit);
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|e| format!("timestamp: {e}"))?;
    at.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("timestamp: {e}"))
}

fn from_rfc3339(s: &str) -> Result<i64, String> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("rfc3339_to_unix_ts: {e}"))?;
    Ok(at.unix_timestamp())
}

fn uuid_v4() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| format!("uuid_v4: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex_of(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A UTC offset: `Z`, `+hh:mm`, `-hh:mm`, or whole seconds.
fn offset(text: &str) -> Result<time::UtcOffset, String> {
    let bad = || format!("format_date: offset {text:?} is not Z, +hh:mm, -hh:mm or seconds");
    if text.is_empty() || text == "Z" || text == "z" {
        return Ok(time::UtcOffset::UTC);
    }
    if let Ok(secs) = text.parse::<i32>() {
        return time::UtcOffset::from_whole_seconds(secs).map_err(|_| bad());
    }
    let (sign, rest) = match text.split_at_checked(1) {
        Some(("+", r)) => (1, r),
        Some(("-", r)) => (-1, r),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    time::UtcOffset::from_whole_seconds(sign * (h * 3600 + m * 60)).map_err(|_| bad())
}

/// EMQX's `format_date(unit, offset, format, timestamp)`: `%Y %m %d %H %M %S`, `%N` (nanoseconds),
/// `%3N` / `%6N` (milli-, microseconds), `%z` (+hhmm), `%:z` (+hh:mm), `%::z` (+hh:mm:ss), `%%`.
fn format_date(unit: &str, offset_text: &str, format: &str, ts: i64) -> Result<String, String> {
    let nanos = nanos_of(ts, unit);
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|e| format!("format_date: {e}"))?
        .to_offset(offset(offset_text)?);
    let (oh, om, os) = at.offset().as_hms();
    let sign = if at.offset().is_negative() { '-' } else { '+' };
    let (oh, om, os) = (oh.abs(), om.abs(), os.abs());
    let mut out = String::new();
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        const SPECS: [&str; 13] = [
            "::z", ":z", "3N", "6N", "Y", "m", "d", "H", "M", "S", "N", "z", "%",
        ];
        let Some(spec) = SPECS.iter().find(|s| rest.starts_with(**s)) else {
            out.push('%');
            continue;
        };
        rest = &rest[spec.len()..];
        let text = match *spec {
            "Y" => format!("{:04}", at.year()),
            "m" => format!("{:02}", u8::from(at.month())),
            "d" => format!("{:02}", at.day()),
            "H" => format!("{:02}", at.hour()),
            "M" => format!("{:02}", at.minute()),
            "S" => format!("{:02}", at.second()),
            "N" => format!("{:09}", at.nanosecond()),
            "3N" => format!("{:03}", at.millisecond()),
            "6N" => format!("{:06}", at.microsecond()),
            "z" => format!("{sign}{oh:02}{om:02}"),
            ":z" => format!("{sign}{oh:02}:{om:02}"),
            "::z" => format!("{sign}{oh:02}:{om:02}:{os:02}"),
            _ => "%".to_string(),
        };
        out.push_str(&text);
    }
    out.push_str(rest);
    Ok(out)
}
