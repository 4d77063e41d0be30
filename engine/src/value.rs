//! Values of ksqlDB's types, with the comparisons, casts and text forms ksqlDB gives them.

use std::{cmp::Ordering, fmt::Write, str::FromStr};

use bigdecimal::{BigDecimal, RoundingMode, ToPrimitive, num_bigint::BigInt};
use sluice_sql::SqlType;

/// One value. `Null` is a value of every type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `BOOLEAN`.
    Boolean(bool),
    /// `INT`.
    Int(i32),
    /// `BIGINT`.
    Bigint(i64),
    /// `DOUBLE`.
    Double(f64),
    /// `DECIMAL(p, s)`: the value carries its scale.
    Decimal(BigDecimal),
    /// `STRING`.
    String(String),
    /// `BYTES`.
    Bytes(Vec<u8>),
    /// `TIMESTAMP`: milliseconds since the epoch.
    Timestamp(i64),
    /// `DATE`: days since the epoch.
    Date(i32),
    /// `TIME`: milliseconds since midnight.
    Time(i64),
    /// `ARRAY`.
    Array(Vec<Value>),
    /// `MAP`, in insertion order.
    Map(Vec<(Value, Value)>),
    /// `STRUCT`: every field of the type, in order.
    Struct(Vec<(String, Value)>),
}

impl Value {
    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a 64-bit integer, for integral values.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(i64::from(*v)),
            Value::Bigint(v) | Value::Timestamp(v) | Value::Time(v) => Some(*v),
            Value::Date(v) => Some(i64::from(*v)),
            _ => None,
        }
    }

    /// The value as a double, for numeric values.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(f64::from(*v)),
            Value::Bigint(v) => Some(*v as f64),
            Value::Double(v) => Some(*v),
            Value::Decimal(d) => d.to_f64(),
            _ => None,
        }
    }

    /// The value as a decimal, for exact numeric values (and doubles, exactly as written by Java's
    /// `BigDecimal.valueOf(double)`).
    pub fn as_decimal(&self) -> Option<BigDecimal> {
        match self {
            Value::Int(v) => Some(BigDecimal::from(*v)),
            Value::Bigint(v) => Some(BigDecimal::from(*v)),
            Value::Decimal(d) => Some(d.clone()),
            Value::Double(v) if v.is_finite() => BigDecimal::from_str(&java_double(*v)).ok(),
            _ => None,
        }
    }

    /// The value as text, for strings.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, treating NULL as false (how WHERE and HAVING read a condition).
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Boolean(true))
    }
}

/// Compare two non-null values as ksqlDB does: numbers across types, strings, booleans, temporal
/// values of one type, and TIMESTAMP against an ISO-8601 string. `None` when incomparable.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use Value::*;
    match (a, b) {
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (Int(_) | Bigint(_), Int(_) | Bigint(_)) => Some(a.as_i64()?.cmp(&b.as_i64()?)),
        (Double(_), _) | (_, Double(_)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Decimal(_) | Int(_) | Bigint(_), Decimal(_) | Int(_) | Bigint(_)) => {
            Some(a.as_decimal()?.cmp(&b.as_decimal()?))
        }
        (String(x), String(y)) => Some(x.cmp(y)),
        (Boolean(x), Boolean(y)) => Some(x.cmp(y)),
        (Bytes(x), Bytes(y)) => Some(x.cmp(y)),
        (Timestamp(x), Timestamp(y)) | (Time(x), Time(y)) => Some(x.cmp(y)),
        (Date(x), Date(y)) => Some(x.cmp(y)),
        (Timestamp(x), String(s)) => Some(x.cmp(&parse_timestamp(s).ok()?)),
        (String(s), Timestamp(y)) => Some(parse_timestamp(s).ok()?.cmp(y)),
        (Array(x), Array(y)) => {
            for (l, r) in x.iter().zip(y) {
                match (l.is_null(), r.is_null()) {
                    (true, true) => continue,
                    (true, false) => return Some(Ordering::Less),
                    (false, true) => return Some(Ordering::Greater),
                    _ => {}
                }
                let o = compare(l, r)?;
                if o != Ordering::Equal {
                    return Some(o);
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => {
            if a == b {
                Some(Ordering::Equal)
            } else {
                None
            }
        }
    }
}

/// Equality as `=` means it (numbers across types; structs, maps and arrays deeply).
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Struct(x), Value::Struct(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((n1, v1), (n2, v2))| n1 == n2 && null_safe_equal(v1, v2))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.iter().any(|(k2, v2)| equal(k, k2) && null_safe_equal(v, v2)))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(l, r)| null_safe_equal(l, r)),
        _ => compare(a, b) == Some(Ordering::Equal),
    }
}

/// Equality where NULL equals NULL (grouping, keys, `IS NOT DISTINCT FROM`).
pub fn null_safe_equal(a: &Value, b: &Value) -> bool {
    match (a.is_null(), b.is_null()) {
        (true, true) => true,
        (false, false) => equal(a, b),
        _ => false,
    }
}

/// A double as Java's `Double.toString` writes it (`1.0`, `1.0E7`, `1.2E-4`), which is how ksqlDB
/// turns doubles into strings.
pub fn java_double(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Java prints the smallest subnormal with two digits.
    if v.abs() == f64::from_bits(1) {
        return if v < 0.0 { "-4.9E-324".into() } else { "4.9E-324".into() };
    }
    // Shortest round-trip digits, then Java's layout.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if v < 0.0 { "-" } else { "" };
    let abs = v.abs();
    if (1e-3..1e7).contains(&abs) {
        let point = exp + 1; // digits before the decimal point
        let mut out = String::from(sign);
        if point <= 0 {
            out.push_str("0.");
            for _ in 0..(-point) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let point = point as usize;
            if digits.len() <= point {
                out.push_str(&digits);
                for _ in digits.len()..point {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
        out
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        format!("{sign}{first}.{rest}E{exp}")
    }
}

/// A decimal as Java's `BigDecimal.toPlainString` writes it (keeping the scale's trailing zeros).
pub fn plain_decimal(d: &BigDecimal) -> String {
    let (int, scale) = d.as_bigint_and_exponent();
    if scale <= 0 {
        let mut s = int.to_string();
        if int != BigInt::from(0) {
            for _ in 0..(-scale) {
                s.push('0');
            }
        }
        return s;
    }
    let negative = int < BigInt::from(0);
    let digits = int.magnitude().to_string();
    let scale = scale as usize;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if digits.len() <= scale {
        out.push_str("0.");
        for _ in digits.len()..scale {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..digits.len() - scale]);
        out.push('.');
        out.push_str(&digits[digits.len() - scale..]);
    }
    out
}

/// Round a decimal to a scale, half up (ksqlDB's rounding for DECIMAL).
pub fn rescale(d: &BigDecimal, scale: u8) -> BigDecimal {
    d.with_scale_round(i64::from(scale), RoundingMode::HalfUp)
}

/// Whether a decimal fits `DECIMAL(precision, scale)` once rescaled.
pub fn fits(d: &BigDecimal, precision: u8, scale: u8) -> bool {
    let (int, _) = rescale(d, scale).as_bigint_and_exponent();
    let digits = int.magnitude().to_string();
    let digits = if digits == "0" { 0 } else { digits.len() };
    digits <= usize::from(precision)
}

const MS_PER_DAY: i64 = 86_400_000;

/// Milliseconds since the epoch from ISO-8601 text as ksqlDB accepts it in comparisons and casts
/// (`2020-01-01`, `2020-01-01T10:00`, `2020-01-01T10:00:00.123`, with optional zone `Z` or
/// `+hh:mm`).
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("Failed to parse timestamp '{text}': expected yyyy-MM-dd['T'HH:mm:ss[.SSS]][zone]");
    let (date, rest) = match t.find('T') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, ""),
    };
    let days = parse_date(date).map_err(|_| bad())?;
    let mut ms = i64::from(days) * MS_PER_DAY;
    if !rest.is_empty() {
        let (time, offset) = split_zone(rest).ok_or_else(bad)?;
        ms += parse_time(time).map_err(|_| bad())?;
        ms -= offset;
    }
    Ok(ms)
}

fn split_zone(text: &str) -> Option<(&str, i64)> {
    if let Some(t) = text.strip_suffix('Z') {
        return Some((t, 0));
    }
    if let Some(i) = text.rfind(['+', '-']) {
        let (time, zone) = text.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let z = &zone[1..];
        let (h, m) = match z.split_once(':') {
            Some((h, m)) => (h, m),
            None if z.len() == 4 => z.split_at(2),
            None => (z, "0"),
        };
        let minutes = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
        return Some((time, sign * minutes * 60_000));
    }
    Some((text, 0))
}

/// Days since the epoch from `yyyy-MM-dd`.
pub fn parse_date(text: &str) -> Result<i32, String> {
    let mut parts = text.trim().splitn(3, '-');
    let bad = || format!("Failed to parse date '{text}'");
    let y: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let m: u32 = parts.next().map_or(Some(1), |p| p.parse().ok()).ok_or_else(bad)?;
    let d: u32 = parts.next().map_or(Some(1), |p| p.parse().ok()).ok_or_else(bad)?;
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(y).map_err(|_| bad())?, m, d).ok_or_else(bad)?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(bad)?;
    i32::try_from((date - epoch).num_days()).map_err(|_| bad())
}

/// Milliseconds since midnight from `HH:mm[:ss[.SSS]]`.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("Failed to parse time '{text}'");
    let mut parts = text.trim().splitn(3, ':');
    let h: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let m: i64 = match parts.next() {
        None => 0,
        Some(p) => p.parse().map_err(|_| bad())?,
    };
    let (s, frac) = match parts.next() {
        None => (0, 0),
        Some(sec) => {
            let (s, f) = sec.split_once('.').unwrap_or((sec, ""));
            let s: i64 = s.parse().map_err(|_| bad())?;
            let f = if f.is_empty() {
                0
            } else {
                let digits: String = f.chars().chain(std::iter::repeat('0')).take(3).collect();
                digits.parse().map_err(|_| bad())?
            };
            (s, f)
        }
    };
    // `T24` (the end of a day) is accepted, as ksqlDB's partial datetimes do.
    let end_of_day = h == 24 && m == 0 && s == 0 && frac == 0;
    if !(end_of_day || (0..24).contains(&h)) || !(0..60).contains(&m) || !(0..60).contains(&s) {
        return Err(bad());
    }
    Ok(((h * 60 + m) * 60 + s) * 1000 + frac)
}

/// A timestamp as ksqlDB prints it: `yyyy-MM-ddTHH:mm:ss.SSS` in UTC.
pub fn format_timestamp(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
        None => ms.to_string(),
    }
}

/// A date as `yyyy-MM-dd`.
pub fn format_date(days: i32) -> String {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    match epoch.checked_add_signed(chrono::Duration::days(i64::from(days))) {
        Some(d) => d.format("%Y-%m-%d").to_string(),
        None => days.to_string(),
    }
}

/// A time as `HH:mm[:ss[.SSS]]` (Java's `LocalTime.toString`).
pub fn format_time(ms: i64) -> String {
    let (h, m, s, f) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = format!("{h:02}:{m:02}");
    if s != 0 || f != 0 {
        let _ = write!(out, ":{s:02}");
        if f != 0 {
            let _ = write!(out, ".{f:03}");
        }
    }
    out
}

/// A value as `CAST(x AS STRING)` writes it.
pub fn to_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bigint(i) => i.to_string(),
        Value::Double(d) => java_double(*d),
        Value::Decimal(d) => plain_decimal(d),
        Value::String(s) => s.clone(),
        Value::Bytes(b) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        }
        Value::Timestamp(t) => format_timestamp(*t),
        Value::Date(d) => format_date(*d),
        Value::Time(t) => format_time(*t),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(|i| to_text(i).unwrap_or_else(|| "null".into())).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Map(entries) => {
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        to_text(k).unwrap_or_else(|| "null".into()),
                        to_text(v).unwrap_or_else(|| "null".into())
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Struct(fields) => {
            let parts: Vec<String> =
                fields.iter().map(|(k, v)| format!("{k}={}", to_text(v).unwrap_or_else(|| "null".into()))).collect();
            format!("Struct{{{}}}", parts.join(","))
        }
    })
}

/// `CAST(v AS ty)`, as ksqlDB casts. NULL casts to NULL.
pub fn cast(v: &Value, ty: &SqlType) -> Result<Value, String> {
    use Value as V;
    if v.is_null() {
        return Ok(V::Null);
    }
    let fail = || format!("Cannot cast {} to {ty}", describe(v));
    Ok(match ty {
        SqlType::Boolean => match v {
            V::Boolean(b) => V::Boolean(*b),
            V::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" => V::Boolean(true),
                "false" | "f" | "no" | "n" => V::Boolean(false),
                _ => return Err(format!("Cannot cast '{s}' to BOOLEAN")),
            },
            _ => return Err(fail()),
        },
        SqlType::Int => match v {
            V::Int(i) => V::Int(*i),
            V::Bigint(i) => V::Int(*i as i32),
            V::Double(d) => V::Int(*d as i32),
            V::Decimal(d) => V::Int(d.to_i64().unwrap_or_default() as i32),
            V::String(s) => V::Int(parse_int(s).ok_or_else(|| format!("Cannot cast '{s}' to INTEGER"))? as i32),
            _ => return Err(fail()),
        },
        SqlType::Bigint => match v {
            V::Int(i) => V::Bigint(i64::from(*i)),
            V::Bigint(i) => V::Bigint(*i),
            V::Double(d) => V::Bigint(*d as i64),
            V::Decimal(d) => V::Bigint(d.with_scale_round(0, RoundingMode::Down).to_i64().unwrap_or_default()),
            V::String(s) => V::Bigint(parse_int(s).ok_or_else(|| format!("Cannot cast '{s}' to BIGINT"))?),
            V::Timestamp(t) => V::Bigint(*t),
            _ => return Err(fail()),
        },
        SqlType::Double => match v {
            V::String(s) => V::Double(s.trim().parse().map_err(|_| format!("Cannot cast '{s}' to DOUBLE"))?),
            _ => V::Double(v.as_f64().ok_or_else(fail)?),
        },
        SqlType::Decimal { precision, scale } => {
            let d = match v {
                V::String(s) => BigDecimal::from_str(s.trim()).map_err(|_| format!("Cannot cast '{s}' to {ty}"))?,
                _ => v.as_decimal().ok_or_else(fail)?,
            };
            if !fits(&d, *precision, *scale) {
                return Err(format!("Numeric field overflow: value {} does not fit {ty}", plain_decimal(&d)));
            }
            V::Decimal(rescale(&d, *scale))
        }
        SqlType::String => V::String(to_text(v).ok_or_else(fail)?),
        SqlType::Bytes => match v {
            V::Bytes(b) => V::Bytes(b.clone()),
            _ => return Err(fail()),
        },
        SqlType::Timestamp => match v {
            V::Timestamp(t) => V::Timestamp(*t),
            V::String(s) => V::Timestamp(parse_timestamp(s)?),
            V::Date(d) => V::Timestamp(i64::from(*d) * MS_PER_DAY),
            _ => return Err(fail()),
        },
        SqlType::Date => match v {
            V::Date(d) => V::Date(*d),
            V::String(s) => V::Date(parse_date(s)?),
            V::Timestamp(t) => V::Date(t.div_euclid(MS_PER_DAY) as i32),
            _ => return Err(fail()),
        },
        SqlType::Time => match v {
            V::Time(t) => V::Time(*t),
            V::String(s) => V::Time(parse_time(s)?),
            V::Timestamp(t) => V::Time(t.rem_euclid(MS_PER_DAY)),
            _ => return Err(fail()),
        },
        SqlType::Array(item) => match v {
            V::Array(items) => V::Array(items.iter().map(|i| cast(i, item)).collect::<Result<_, _>>()?),
            _ => return Err(fail()),
        },
        SqlType::Map(kt, vt) => match v {
            V::Map(entries) => {
                V::Map(entries.iter().map(|(k, v)| Ok((cast(k, kt)?, cast(v, vt)?))).collect::<Result<_, String>>()?)
            }
            _ => return Err(fail()),
        },
        SqlType::Struct(fields) => match v {
            V::Struct(have) => V::Struct(
                fields
                    .iter()
                    .map(|(name, t)| {
                        let value = have.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or(V::Null);
                        Ok((name.clone(), cast(&value, t)?))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            _ => return Err(fail()),
        },
    })
}

fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim();
    t.parse::<i64>().ok().or_else(|| BigDecimal::from_str(t).ok().and_then(|d| d.to_i64()))
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => to_text(other).unwrap_or_else(|| "null".into()),
    }
}

/// The type of a value, where it can be told from the value alone.
pub fn type_of(v: &Value) -> Option<SqlType> {
    Some(match v {
        Value::Null => return None,
        Value::Boolean(_) => SqlType::Boolean,
        Value::Int(_) => SqlType::Int,
        Value::Bigint(_) => SqlType::Bigint,
        Value::Double(_) => SqlType::Double,
        Value::Decimal(d) => {
            let (int, scale) = d.as_bigint_and_exponent();
            let digits = int.magnitude().to_string().len() as i64;
            let scale = scale.max(0);
            let precision = digits.max(scale).max(1);
            SqlType::Decimal { precision: precision.min(38) as u8, scale: scale.min(38) as u8 }
        }
        Value::String(_) => SqlType::String,
        Value::Bytes(_) => SqlType::Bytes,
        Value::Timestamp(_) => SqlType::Timestamp,
        Value::Date(_) => SqlType::Date,
        Value::Time(_) => SqlType::Time,
        Value::Array(_) | Value::Map(_) | Value::Struct(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_as_java_does() {
        for (v, s) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (123.456, "123.456"),
            (1e7, "1.0E7"),
            (12345678.9, "1.23456789E7"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
        ] {
            assert_eq!(java_double(v), s, "{v}");
        }
    }

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(plain_decimal(&BigDecimal::from_str("1.50").unwrap()), "1.50");
        assert_eq!(plain_decimal(&BigDecimal::from_str("-0.05").unwrap()), "-0.05");
        assert_eq!(plain_decimal(&rescale(&BigDecimal::from(3), 2)), "3.00");
        assert!(fits(&BigDecimal::from_str("123.45").unwrap(), 5, 2));
        assert!(!fits(&BigDecimal::from_str("1234.5").unwrap(), 5, 2));
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2020-02-03T04:05:06.007").unwrap();
        assert_eq!(format_timestamp(t), "2020-02-03T04:05:06.007");
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_timestamp("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert_eq!(parse_date("1970-01-02").unwrap(), 1);
        assert_eq!(format_time(parse_time("10:11:12.5").unwrap()), "10:11:12.500");
    }

    #[test]
    fn comparisons_cross_numeric_types() {
        assert_eq!(compare(&Value::Int(1), &Value::Double(1.5)), Some(Ordering::Less));
        assert_eq!(compare(&Value::Bigint(2), &Value::Decimal(BigDecimal::from(2))), Some(Ordering::Equal));
        assert_eq!(compare(&Value::String("a".into()), &Value::Int(1)), None);
    }

    #[test]
    fn casts() {
        assert_eq!(cast(&Value::String(" 12 ".into()), &SqlType::Int).unwrap(), Value::Int(12));
        assert_eq!(cast(&Value::Double(2.7), &SqlType::Bigint).unwrap(), Value::Bigint(2));
        assert_eq!(cast(&Value::Int(5), &SqlType::String).unwrap(), Value::String("5".into()));
        assert_eq!(cast(&Value::Double(5.0), &SqlType::String).unwrap(), Value::String("5.0".into()));
        assert!(cast(&Value::String("x".into()), &SqlType::Int).is_err());
    }
}
