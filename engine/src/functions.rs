//! Scalar functions: resolution of a call against the argument types (with ksqlDB's implicit
//! widening INT → BIGINT → DECIMAL → DOUBLE), and evaluation.

use std::str::FromStr;

use bigdecimal::{BigDecimal, RoundingMode, ToPrimitive};
use sluice_sql::SqlType;

use crate::value::{self, Value};

/// How a resolved function computes: the arguments already converted to `params`, the result
/// type resolved.
pub type EvalFn = fn(&[Value], &SqlType) -> Result<Value, String>;

/// A call bound to one signature.
#[derive(Clone)]
pub struct Resolved {
    /// The function's name.
    pub name: String,
    /// The types the arguments are converted to before the call.
    pub params: Vec<SqlType>,
    /// The result type.
    pub ret: SqlType,
    /// The implementation.
    pub eval: EvalFn,
    /// Whether a NULL argument makes the result NULL without calling `eval`.
    pub null_in_null_out: bool,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("name", &self.name)
            .field("params", &self.params)
            .field("ret", &self.ret)
            .finish()
    }
}

/// Whether `from` converts to `to` implicitly when calling a function or mixing operands.
pub fn widens(from: &SqlType, to: &SqlType) -> bool {
    use SqlType::*;
    if from == to {
        return true;
    }
    match (from, to) {
        (Int, Bigint | Double | Decimal { .. }) => true,
        (Bigint, Double | Decimal { .. }) => true,
        (Decimal { .. }, Double | Decimal { .. }) => true,
        (Array(a), Array(b)) => widens(a, b),
        (Map(k1, v1), Map(k2, v2)) => widens(k1, k2) && widens(v1, v2),
        _ => false,
    }
}

/// The common type two operands widen to, if any.
pub fn common_type(a: &SqlType, b: &SqlType) -> Option<SqlType> {
    use SqlType::*;
    if a == b {
        return Some(a.clone());
    }
    Some(match (a, b) {
        (Double, t) | (t, Double) if t.is_numeric() => Double,
        (Decimal { .. }, _) | (_, Decimal { .. }) if a.is_numeric() && b.is_numeric() => {
            let (p1, s1) = decimal_shape(a)?;
            let (p2, s2) = decimal_shape(b)?;
            let scale = s1.max(s2);
            let int = (p1 - s1).max(p2 - s2);
            Decimal { precision: (int + scale).min(38), scale }
        }
        (Bigint, Int) | (Int, Bigint) => Bigint,
        _ => return None,
    })
}

/// The precision and scale a numeric type has as a decimal (`INT` = `DECIMAL(10, 0)`, `BIGINT` =
/// `DECIMAL(19, 0)`).
pub fn decimal_shape(t: &SqlType) -> Option<(u8, u8)> {
    match t {
        SqlType::Int => Some((10, 0)),
        SqlType::Bigint => Some((19, 0)),
        SqlType::Decimal { precision, scale } => Some((*precision, *scale)),
        _ => None,
    }
}

/// Convert a value to a type it widens to.
pub fn coerce(v: Value, to: &SqlType) -> Value {
    match (&v, to) {
        (Value::Null, _) => Value::Null,
        (Value::Int(_), SqlType::Int)
        | (Value::Bigint(_), SqlType::Bigint)
        | (Value::Double(_), SqlType::Double)
        | (Value::String(_), SqlType::String) => v,
        _ => value::cast(&v, to).unwrap_or(Value::Null),
    }
}

/// Argument type patterns.
#[derive(Clone, Copy)]
enum P {
    Int,
    Bigint,
    Double,
    /// Any decimal, kept as it is.
    Decimal,
    Str,
    Ts,
}

impl P {
    fn accepts(self, t: &SqlType) -> Option<SqlType> {
        let target = match self {
            P::Int => SqlType::Int,
            P::Bigint => SqlType::Bigint,
            P::Double => SqlType::Double,
            P::Decimal => match t {
                SqlType::Decimal { .. } => return Some(t.clone()),
                _ => return None,
            },
            P::Str => SqlType::String,
            P::Ts => SqlType::Timestamp,
        };
        widens(t, &target).then_some(target)
    }
}

/// A signature: parameter patterns, whether the last repeats, the result type from the
/// parameters, and the body.
struct Sig {
    params: &'static [P],
    variadic: bool,
    ret: fn(&[SqlType]) -> SqlType,
    eval: EvalFn,
}

fn same_as_first(p: &[SqlType]) -> SqlType {
    p[0].clone()
}
fn string(_: &[SqlType]) -> SqlType {
    SqlType::String
}
fn int(_: &[SqlType]) -> SqlType {
    SqlType::Int
}
fn bigint(_: &[SqlType]) -> SqlType {
    SqlType::Bigint
}
fn double(_: &[SqlType]) -> SqlType {
    SqlType::Double
}
fn decimal_scale0(p: &[SqlType]) -> SqlType {
    match p[0] {
        SqlType::Decimal { precision, scale } => {
            SqlType::Decimal { precision: (precision - scale + 1).clamp(1, 38), scale: 0 }
        }
        _ => p[0].clone(),
    }
}

/// `ROUND(DECIMAL(p, s))`: the integral digits only, `DECIMAL(p - s, 0)` as ksqlDB types it.
fn decimal_integral(p: &[SqlType]) -> SqlType {
    match p[0] {
        SqlType::Decimal { precision, scale } => {
            SqlType::Decimal { precision: (precision - scale).clamp(1, 38), scale: 0 }
        }
        _ => p[0].clone(),
    }
}

/// Java's `$1` group references become the regex crate's `${1}`.
fn java_replacement(r: &str) -> String {
    let mut out = String::new();
    let mut chars = r.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if n == '$' {
                        out.push_str("$$");
                    } else {
                        out.push(n);
                    }
                }
            }
            '$' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{digits}}}"));
            }
            other => out.push(other),
        }
    }
    out
}

fn timestamp_to_string(ms: i64, pattern: &str, zone: Option<&str>) -> Result<Value, String> {
    let t = chrono::DateTime::from_timestamp_millis(ms).ok_or_else(|| format!("timestamp {ms} is out of range"))?;
    let fmt = crate::source::java_pattern(pattern);
    let text = match zone.map(str::trim) {
        None | Some("UTC") | Some("Z") | Some("GMT") => t.naive_utc().format(&fmt).to_string(),
        Some(z) => {
            let offset =
                parse_offset(z).ok_or_else(|| format!("Unknown time zone '{z}': use UTC or an offset like +02:00"))?;
            t.with_timezone(&offset).format(&fmt).to_string()
        }
    };
    Ok(Value::String(text))
}

fn parse_offset(z: &str) -> Option<chrono::FixedOffset> {
    let z = z.strip_prefix("UTC").or_else(|| z.strip_prefix("GMT")).unwrap_or(z);
    let sign = match z.chars().next()? {
        '+' => 1,
        '-' => -1,
        _ => return None,
    };
    let (h, m) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
    chrono::FixedOffset::east_opt(sign * (h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60))
}

macro_rules! sig {
    ([$($p:ident),*], $ret:expr, $eval:expr) => {
        Sig { params: &[$(P::$p),*], variadic: false, ret: $ret, eval: $eval }
    };
    ([$($p:ident),*] ..., $ret:expr, $eval:expr) => {
        Sig { params: &[$(P::$p),*], variadic: true, ret: $ret, eval: $eval }
    };
}

fn signatures(name: &str) -> Option<Vec<Sig>> {
    Some(match name {
        "ABS" => vec![
            sig!([Int], same_as_first, |a, _| Ok(Value::Int(int_of(&a[0]).wrapping_abs()))),
            sig!([Bigint], same_as_first, |a, _| Ok(Value::Bigint(long_of(&a[0]).wrapping_abs()))),
            sig!([Decimal], same_as_first, |a, _| Ok(Value::Decimal(dec_of(&a[0]).abs()))),
            sig!([Double], same_as_first, |a, _| Ok(Value::Double(dbl_of(&a[0]).abs()))),
        ],
        "CEIL" | "FLOOR" => {
            if name == "CEIL" {
                vec![
                    sig!([Int], same_as_first, |a, _| Ok(a[0].clone())),
                    sig!([Bigint], same_as_first, |a, _| Ok(a[0].clone())),
                    sig!([Decimal], decimal_scale0, |a, _| Ok(Value::Decimal(
                        dec_of(&a[0]).with_scale_round(0, RoundingMode::Ceiling)
                    ))),
                    sig!([Double], same_as_first, |a, _| Ok(Value::Double(dbl_of(&a[0]).ceil()))),
                ]
            } else {
                vec![
                    sig!([Int], same_as_first, |a, _| Ok(a[0].clone())),
                    sig!([Bigint], same_as_first, |a, _| Ok(a[0].clone())),
                    sig!([Decimal], decimal_scale0, |a, _| Ok(Value::Decimal(
                        dec_of(&a[0]).with_scale_round(0, RoundingMode::Floor)
                    ))),
                    sig!([Double], same_as_first, |a, _| Ok(Value::Double(dbl_of(&a[0]).floor()))),
                ]
            }
        }
        "ROUND" => vec![
            sig!([Int], same_as_first, |a, _| Ok(a[0].clone())),
            sig!([Bigint], same_as_first, |a, _| Ok(a[0].clone())),
            sig!([Decimal], decimal_integral, |a, _| Ok(Value::Decimal(value::rescale(&dec_of(&a[0]), 0)))),
            sig!([Double], bigint, |a, _| Ok(Value::Bigint(round_half_up(dbl_of(&a[0]), 0) as i64))),
            sig!([Int, Int], same_as_first, |a, _| Ok(Value::Int(round_int(long_of(&a[0]), int_of(&a[1])) as i32))),
            sig!([Bigint, Int], same_as_first, |a, _| Ok(Value::Bigint(round_int(long_of(&a[0]), int_of(&a[1]))))),
            sig!([Decimal, Int], same_as_first, |a, ret| {
                let d = dec_of(&a[0]).with_scale_round(places(&a[1]), RoundingMode::HalfUp);
                let scale = match ret {
                    SqlType::Decimal { scale, .. } => *scale,
                    _ => 0,
                };
                Ok(Value::Decimal(value::rescale(&d, scale)))
            }),
            sig!([Double, Int], double, |a, _| Ok(Value::Double(round_half_up(dbl_of(&a[0]), int_of(&a[1]))))),
        ],
        "TRUNC" | "TRUNCATE" => vec![
            sig!([Int], same_as_first, |a, _| Ok(a[0].clone())),
            sig!([Bigint], same_as_first, |a, _| Ok(a[0].clone())),
            sig!([Decimal], decimal_scale0, |a, _| Ok(Value::Decimal(
                dec_of(&a[0]).with_scale_round(0, RoundingMode::Down)
            ))),
            sig!([Double], bigint, |a, _| Ok(Value::Bigint(dbl_of(&a[0]).trunc() as i64))),
            sig!([Decimal, Int], same_as_first, |a, ret| {
                let d = dec_of(&a[0]).with_scale_round(places(&a[1]), RoundingMode::Down);
                let scale = match ret {
                    SqlType::Decimal { scale, .. } => *scale,
                    _ => 0,
                };
                Ok(Value::Decimal(value::rescale(&d, scale)))
            }),
            sig!([Double, Int], double, |a, _| {
                let v = dbl_of(&a[0]);
                let d = BigDecimal::from_str(&value::java_double(v)).map_err(|e| e.to_string())?;
                Ok(Value::Double(d.with_scale_round(places(&a[1]), RoundingMode::Down).to_f64().unwrap_or(v)))
            }),
        ],
        "SIGN" => vec![
            sig!([Int], int, |a, _| Ok(Value::Int(int_of(&a[0]).signum()))),
            sig!([Bigint], int, |a, _| Ok(Value::Int(long_of(&a[0]).signum() as i32))),
            sig!([Decimal], int, |a, _| {
                let d = dec_of(&a[0]);
                Ok(Value::Int(match d.sign() {
                    bigdecimal::num_bigint::Sign::Minus => -1,
                    bigdecimal::num_bigint::Sign::NoSign => 0,
                    bigdecimal::num_bigint::Sign::Plus => 1,
                }))
            }),
            sig!([Double], int, |a, _| {
                let v = dbl_of(&a[0]);
                Ok(Value::Int(if v > 0.0 {
                    1
                } else if v < 0.0 {
                    -1
                } else {
                    0
                }))
            }),
        ],
        "SIN" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).sin())))],
        "COS" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).cos())))],
        "TAN" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).tan())))],
        "COT" => vec![sig!([Double], double, |a, _| Ok(Value::Double(1.0 / dbl_of(&a[0]).tan())))],
        "ASIN" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).asin())))],
        "ACOS" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).acos())))],
        "ATAN" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).atan())))],
        "ATAN2" => vec![sig!([Double, Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).atan2(dbl_of(&a[1])))))],
        "SINH" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).sinh())))],
        "COSH" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).cosh())))],
        "TANH" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).tanh())))],
        "REGEXP_REPLACE" => vec![sig!([Str, Str, Str], string, |a, _| {
            let re = regex::Regex::new(str_of(&a[1]).unwrap_or("")).map_err(|e| format!("REGEXP_REPLACE: {e}"))?;
            let replacement = java_replacement(str_of(&a[2]).unwrap_or(""));
            Ok(Value::String(re.replace_all(str_of(&a[0]).unwrap_or(""), replacement.as_str()).into_owned()))
        })],
        "TIMESTAMPTOSTRING" => vec![
            sig!([Bigint, Str], string, |a, _| timestamp_to_string(long_of(&a[0]), str_of(&a[1]).unwrap_or(""), None)),
            sig!([Bigint, Str, Str], string, |a, _| {
                timestamp_to_string(long_of(&a[0]), str_of(&a[1]).unwrap_or(""), str_of(&a[2]))
            }),
        ],
        "STRINGTOTIMESTAMP" => vec![sig!([Str, Str], bigint, |a, _| {
            Ok(Value::Bigint(crate::source::parse_with_format(
                str_of(&a[0]).unwrap_or(""),
                str_of(&a[1]).unwrap_or(""),
            )?))
        })],
        "SQRT" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).sqrt())))],
        "EXP" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).exp())))],
        "LN" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).ln())))],
        "LOG" => vec![
            sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).ln()))),
            sig!([Double, Double], double, |a, _| Ok(Value::Double(dbl_of(&a[1]).ln() / dbl_of(&a[0]).ln()))),
        ],
        "POWER" => vec![sig!([Double, Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).powf(dbl_of(&a[1])))))],
        "CBRT" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).cbrt())))],
        "RANDOM" => vec![sig!([], double, |_, _| Ok(Value::Double(rand::random::<f64>())))],
        "PI" => vec![sig!([], double, |_, _| Ok(Value::Double(std::f64::consts::PI)))],
        "RADIANS" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).to_radians())))],
        "DEGREES" => vec![sig!([Double], double, |a, _| Ok(Value::Double(dbl_of(&a[0]).to_degrees())))],
        "GEO_DISTANCE" => vec![
            sig!([Double, Double, Double, Double], double, |a, _| geo_distance(a, None)),
            sig!([Double, Double, Double, Double, Str], double, |a, _| geo_distance(a, str_of(&a[4]))),
        ],
        "LEN" | "LENGTH" => {
            vec![sig!([Str], int, |a, _| Ok(Value::Int(str_of(&a[0]).unwrap_or("").chars().count() as i32)))]
        }
        "LCASE" => vec![sig!([Str], string, |a, _| Ok(Value::String(str_of(&a[0]).unwrap_or("").to_lowercase())))],
        "UCASE" => vec![sig!([Str], string, |a, _| Ok(Value::String(str_of(&a[0]).unwrap_or("").to_uppercase())))],
        "TRIM" => vec![sig!([Str], string, |a, _| Ok(Value::String(str_of(&a[0]).unwrap_or("").trim().to_owned())))],
        "LTRIM" => {
            vec![sig!([Str], string, |a, _| Ok(Value::String(str_of(&a[0]).unwrap_or("").trim_start().to_owned())))]
        }
        "RTRIM" => {
            vec![sig!([Str], string, |a, _| Ok(Value::String(str_of(&a[0]).unwrap_or("").trim_end().to_owned())))]
        }
        "INITCAP" => vec![sig!([Str], string, |a, _| Ok(Value::String(initcap(str_of(&a[0]).unwrap_or("")))))],
        "REVERSE" => {
            vec![sig!([Str], string, |a, _| Ok(Value::String(str_of(&a[0]).unwrap_or("").chars().rev().collect())))]
        }
        "CONCAT" => vec![sig!([Str]..., string, |a, _| {
            Ok(Value::String(a.iter().filter_map(str_of).collect::<String>()))
        })],
        "CONCAT_WS" => vec![sig!([Str, Str]..., string, |a, _| {
            let Some(sep) = str_of(&a[0]) else { return Ok(Value::Null) };
            Ok(Value::String(a[1..].iter().filter_map(str_of).collect::<Vec<_>>().join(sep)))
        })],
        "SUBSTRING" => vec![
            sig!([Str, Int], string, |a, _| Ok(substring(str_of(&a[0]).unwrap_or(""), int_of(&a[1]), None))),
            sig!([Str, Int, Int], string, |a, _| {
                Ok(substring(str_of(&a[0]).unwrap_or(""), int_of(&a[1]), Some(int_of(&a[2]))))
            }),
        ],
        "INSTR" => vec![
            sig!([Str, Str], int, |a, _| Ok(Value::Int(instr(
                str_of(&a[0]).unwrap_or(""),
                str_of(&a[1]).unwrap_or(""),
                1,
                1
            )))),
            sig!([Str, Str, Int], int, |a, _| {
                Ok(Value::Int(instr(str_of(&a[0]).unwrap_or(""), str_of(&a[1]).unwrap_or(""), int_of(&a[2]), 1)))
            }),
            sig!([Str, Str, Int, Int], int, |a, _| {
                Ok(Value::Int(instr(
                    str_of(&a[0]).unwrap_or(""),
                    str_of(&a[1]).unwrap_or(""),
                    int_of(&a[2]),
                    int_of(&a[3]),
                )))
            }),
        ],
        "LPAD" | "RPAD" => {
            if name == "LPAD" {
                vec![sig!([Str, Int, Str], string, |a, _| pad(a, true))]
            } else {
                vec![sig!([Str, Int, Str], string, |a, _| pad(a, false))]
            }
        }
        "REPLACE" => vec![sig!([Str, Str, Str], string, |a, _| {
            Ok(Value::String(
                str_of(&a[0]).unwrap_or("").replace(str_of(&a[1]).unwrap_or(""), str_of(&a[2]).unwrap_or("")),
            ))
        })],
        "UNIX_TIMESTAMP" => vec![
            sig!([], bigint, |_, _| Ok(Value::Bigint(chrono::Utc::now().timestamp_millis()))),
            sig!([Ts], bigint, |a, _| Ok(Value::Bigint(long_of(&a[0])))),
        ],
        "FROM_UNIXTIME" => vec![sig!([Bigint], |_| SqlType::Timestamp, |a, _| Ok(Value::Timestamp(long_of(&a[0]))))],
        _ => return None,
    })
}

/// Functions whose signatures are generic in their argument types.
fn generic(name: &str, args: &[Option<SqlType>]) -> Option<Result<Resolved, String>> {
    let common = || -> Result<Option<SqlType>, String> {
        let mut acc: Option<SqlType> = None;
        for t in args.iter().flatten() {
            acc = Some(match acc {
                None => t.clone(),
                Some(a) => common_type(&a, t).ok_or_else(|| {
                    format!("Function '{name}' cannot mix {a} and {t}: all its arguments must share a type")
                })?,
            });
        }
        Ok(acc)
    };
    Some(match name {
        "GREATEST" | "LEAST" => (|| {
            if args.is_empty() {
                return Err(format!("Function '{}' does not accept parameters ().", name.to_ascii_lowercase()));
            }
            let t = extreme_type(name, args)?;
            let eval: EvalFn =
                if name == "GREATEST" { |a, _| Ok(extreme(a, true)) } else { |a, _| Ok(extreme(a, false)) };
            Ok(Resolved {
                name: name.into(),
                params: vec![t.clone(); args.len()],
                ret: t,
                eval,
                null_in_null_out: false,
            })
        })(),
        "COALESCE" | "IFNULL" => (|| {
            if args.is_empty() || (name == "IFNULL" && args.len() != 2) {
                return Err(format!("Function '{name}' does not accept {} arguments", args.len()));
            }
            let t = common()?.unwrap_or(SqlType::String);
            Ok(Resolved {
                name: name.into(),
                params: vec![t.clone(); args.len()],
                ret: t,
                eval: |a, _| Ok(a.iter().find(|v| !v.is_null()).cloned().unwrap_or(Value::Null)),
                null_in_null_out: false,
            })
        })(),
        "AS_VALUE" => (|| {
            if args.len() != 1 {
                return Err("Function 'AS_VALUE' takes one argument".into());
            }
            let t = args[0].clone().unwrap_or(SqlType::String);
            Ok(Resolved {
                name: name.into(),
                params: vec![t.clone()],
                ret: t,
                eval: |a, _| Ok(a[0].clone()),
                null_in_null_out: false,
            })
        })(),
        "NULLIF" => (|| {
            if args.len() != 2 {
                return Err("Function 'NULLIF' takes two arguments".into());
            }
            let t = common()?.unwrap_or(SqlType::String);
            Ok(Resolved {
                name: name.into(),
                params: vec![t.clone(); 2],
                ret: t,
                eval: |a, _| Ok(if value::null_safe_equal(&a[0], &a[1]) { Value::Null } else { a[0].clone() }),
                null_in_null_out: false,
            })
        })(),
        _ => return None,
    })
}

/// The argument type of `GREATEST`/`LEAST`: one type, decimals widened to a common decimal,
/// anything numeric widened to DOUBLE when a DOUBLE is present, and strings read as the
/// temporal type they are compared with; INT with BIGINT is ambiguous, as in ksqlDB.
fn extreme_type(name: &str, args: &[Option<SqlType>]) -> Result<SqlType, String> {
    let mut types: Vec<SqlType> = Vec::new();
    for t in args.iter().flatten() {
        if !types.contains(t) {
            types.push(t.clone());
        }
    }
    let shown = || {
        let all: Vec<String> = args.iter().map(|a| a.as_ref().map_or("NULL".into(), |t| t.to_string())).collect();
        all.join(", ")
    };
    let ambiguous = || {
        format!(
            "Function '{}' cannot be resolved due to ambiguous method parameters ({}).",
            name.to_ascii_lowercase(),
            shown()
        )
    };
    let t = match types.as_slice() {
        [] => SqlType::String,
        [t] => t.clone(),
        many if many.iter().all(|t| matches!(t, SqlType::Decimal { .. })) => {
            let mut acc = many[0].clone();
            for t in &many[1..] {
                acc = common_type(&acc, t).ok_or_else(ambiguous)?;
            }
            acc
        }
        many if many.iter().all(SqlType::is_numeric) && many.contains(&SqlType::Double) => SqlType::Double,
        many if many.iter().all(SqlType::is_numeric) => return Err(ambiguous()),
        many => {
            let temporal: Vec<&SqlType> = many.iter().filter(|t| **t != SqlType::String).collect();
            match temporal.as_slice() {
                [t] if matches!(t, SqlType::Date | SqlType::Time | SqlType::Timestamp) => (*t).clone(),
                _ => {
                    return Err(format!(
                        "Function '{}' does not accept parameters ({}).",
                        name.to_ascii_lowercase(),
                        shown()
                    ));
                }
            }
        }
    };
    if !(t.is_numeric()
        || matches!(t, SqlType::String | SqlType::Timestamp | SqlType::Date | SqlType::Time | SqlType::Bytes))
    {
        return Err(format!("Function '{name}' does not accept parameters of type {t}"));
    }
    Ok(t)
}

/// Resolve a call of `name` (upper case) on arguments of these types (`None`: an untyped NULL).
/// `None` when no scalar function has that name.
pub fn resolve(name: &str, args: &[Option<SqlType>]) -> Option<Result<Resolved, String>> {
    if let Some(r) = generic(name, args) {
        return Some(r);
    }
    let sigs = signatures(name)?;
    // Prefer an exact match, then the first signature every argument widens to, in order.
    for exact in [true, false] {
        'sig: for s in &sigs {
            let arity_ok = if s.variadic { args.len() + 1 >= s.params.len() } else { args.len() == s.params.len() };
            if !arity_ok {
                continue;
            }
            let mut params = Vec::with_capacity(args.len());
            for (i, a) in args.iter().enumerate() {
                let p = s.params[i.min(s.params.len() - 1)];
                let target = match a {
                    None => match p.accepts(&SqlType::String).or_else(|| p.accepts(&SqlType::Int)) {
                        Some(t) => t,
                        None => match p {
                            P::Decimal => SqlType::Decimal { precision: 38, scale: 18 },
                            P::Double => SqlType::Double,
                            _ => SqlType::String,
                        },
                    },
                    Some(t) => match p.accepts(t) {
                        Some(target) if !exact || &target == t => target,
                        _ => continue 'sig,
                    },
                };
                params.push(target);
            }
            let ret = (s.ret)(&params);
            let null_in_null_out = !matches!(name, "CONCAT" | "CONCAT_WS" | "GEO_DISTANCE");
            return Some(Ok(Resolved { name: name.into(), params, ret, eval: s.eval, null_in_null_out }));
        }
    }
    let types: Vec<String> = args.iter().map(|a| a.as_ref().map_or("NULL".into(), |t| t.to_string())).collect();
    Some(Err(format!("Function '{name}' does not accept parameters ({})", types.join(", "))))
}

fn int_of(v: &Value) -> i32 {
    match v {
        Value::Int(i) => *i,
        other => other.as_i64().unwrap_or_default() as i32,
    }
}
fn long_of(v: &Value) -> i64 {
    v.as_i64().unwrap_or_default()
}
fn dbl_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_default()
}
fn dec_of(v: &Value) -> BigDecimal {
    v.as_decimal().unwrap_or_default()
}
fn str_of(v: &Value) -> Option<&str> {
    v.as_str()
}

fn round_half_up(v: f64, places: i32) -> f64 {
    if !v.is_finite() {
        return v;
    }
    // Java's Math.round: halves go towards positive infinity.
    let mode = if v < 0.0 { RoundingMode::HalfDown } else { RoundingMode::HalfUp };
    match BigDecimal::from_str(&value::java_double(v)) {
        Ok(d) => d.with_scale_round(i64::from(places).clamp(-MAX_PLACES, MAX_PLACES), mode).to_f64().unwrap_or(v),
        Err(_) => v,
    }
}

/// Decimal places beyond any value's digits (a DOUBLE has at most ~340; an i64 19): rounding to
/// more would only build ever larger numbers — `ROUND(x, 2147483647)` never finishing.
const MAX_PLACES: i64 = 400;

/// A ROUND/TRUNC places argument, clamped to what can change a value.
fn places(v: &Value) -> i64 {
    i64::from(int_of(v)).clamp(-MAX_PLACES, MAX_PLACES)
}

fn round_int(v: i64, places: i32) -> i64 {
    if places >= 0 {
        return v;
    }
    BigDecimal::from(v).with_scale_round(i64::from(places).max(-MAX_PLACES), RoundingMode::HalfUp).to_i64().unwrap_or(v)
}

fn geo_distance(a: &[Value], unit: Option<&str>) -> Result<Value, String> {
    if a[..4].iter().any(Value::is_null) {
        return Ok(Value::Null);
    }
    let radius = match unit.map(|u| u.trim().to_ascii_lowercase()) {
        None => 6371.0,
        Some(u) if u == "km" || u == "kilometers" || u == "kilometres" => 6371.0,
        Some(u) if u == "mi" || u == "miles" => 3959.0,
        Some(u) => return Err(format!("GEO_DISTANCE: unknown unit '{u}': use 'KM' or 'MILES'")),
    };
    let (lat1, lon1, lat2, lon2) = (dbl_of(&a[0]), dbl_of(&a[1]), dbl_of(&a[2]), dbl_of(&a[3]));
    for (v, range, what) in
        [(lat1, 90.0, "latitude"), (lat2, 90.0, "latitude"), (lon1, 180.0, "longitude"), (lon2, 180.0, "longitude")]
    {
        if !(-range..=range).contains(&v) {
            return Err(format!("GEO_DISTANCE: {what} {v} is out of range"));
        }
    }
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let dphi = (lat2 - lat1).to_radians();
    let dlambda = (lon2 - lon1).to_radians();
    let h = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    Ok(Value::Double(2.0 * radius * h.sqrt().asin()))
}

fn initcap(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if c.is_whitespace() {
            start = true;
            out.push(c);
        } else if start {
            out.extend(c.to_uppercase());
            start = false;
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `SUBSTRING(s, pos[, len])`: 1-based; a negative position counts from the end.
fn substring(s: &str, pos: i32, len: Option<i32>) -> Value {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len() as i64;
    let start = if pos > 0 {
        i64::from(pos) - 1
    } else if pos < 0 {
        n + i64::from(pos)
    } else {
        0
    };
    let start = start.clamp(0, n);
    let end = match len {
        None => n,
        Some(l) if l < 0 => return Value::String(String::new()),
        Some(l) => (start + i64::from(l)).min(n),
    };
    if start >= end {
        return Value::String(String::new());
    }
    Value::String(chars[start as usize..end as usize].iter().collect())
}

/// `INSTR(s, sub[, position[, occurrence]])`: 1-based position of the occurrence, 0 when absent;
/// a negative position searches backwards from the end.
fn instr(s: &str, sub: &str, position: i32, occurrence: i32) -> i32 {
    let hay: Vec<char> = s.chars().collect();
    let needle: Vec<char> = sub.chars().collect();
    if occurrence <= 0 || needle.len() > hay.len() {
        return 0;
    }
    let matches_at = |i: usize| hay[i..].starts_with(&needle);
    let last = hay.len() - needle.len();
    let mut found = 0;
    if position > 0 {
        let mut i = (position - 1) as usize;
        while i <= last {
            if matches_at(i) {
                found += 1;
                if found == occurrence {
                    return i as i32 + 1;
                }
            }
            i += 1;
        }
    } else if position < 0 {
        let from = hay.len() as i64 + i64::from(position);
        let mut i = from.min(last as i64);
        while i >= 0 {
            if matches_at(i as usize) {
                found += 1;
                if found == occurrence {
                    return i as i32 + 1;
                }
            }
            i -= 1;
        }
    }
    0
}

fn pad(a: &[Value], left: bool) -> Result<Value, String> {
    let s = str_of(&a[0]).unwrap_or("");
    let len = int_of(&a[1]);
    let padding = str_of(&a[2]).unwrap_or("");
    if len < 0 || (padding.is_empty() && s.chars().count() < len as usize) {
        return Ok(Value::Null);
    }
    let len = len as usize;
    let chars: Vec<char> = s.chars().collect();
    if chars.len() >= len {
        return Ok(Value::String(chars[..len].iter().collect()));
    }
    let fill: String = padding.chars().cycle().take(len - chars.len()).collect();
    Ok(Value::String(if left { format!("{fill}{s}") } else { format!("{s}{fill}") }))
}

fn extreme(args: &[Value], greatest: bool) -> Value {
    let mut best: Option<&Value> = None;
    for v in args.iter().filter(|v| !v.is_null()) {
        best = match best {
            None => Some(v),
            Some(b) => {
                let ord = value::compare(v, b);
                let better = match ord {
                    Some(std::cmp::Ordering::Greater) => greatest,
                    Some(std::cmp::Ordering::Less) => !greatest,
                    _ => false,
                };
                Some(if better { v } else { b })
            }
        };
    }
    best.cloned().unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: Vec<Value>) -> Value {
        let types: Vec<Option<SqlType>> = args.iter().map(value::type_of).collect();
        let r = resolve(name, &types).unwrap().unwrap();
        let args: Vec<Value> = args.into_iter().zip(&r.params).map(|(v, t)| coerce(v, t)).collect();
        if r.null_in_null_out && args.iter().any(Value::is_null) {
            return Value::Null;
        }
        (r.eval)(&args, &r.ret).unwrap()
    }

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    #[test]
    fn strings() {
        assert_eq!(call("SUBSTRING", vec![s("hello"), Value::Int(2), Value::Int(3)]), s("ell"));
        assert_eq!(call("SUBSTRING", vec![s("hello"), Value::Int(-3)]), s("llo"));
        assert_eq!(call("INSTR", vec![s("CORPORATE FLOOR"), s("OR")]), Value::Int(2));
        assert_eq!(call("INSTR", vec![s("CORPORATE FLOOR"), s("OR"), Value::Int(3), Value::Int(2)]), Value::Int(14));
        assert_eq!(call("INSTR", vec![s("CORPORATE FLOOR"), s("OR"), Value::Int(-3), Value::Int(2)]), Value::Int(2));
        assert_eq!(call("LPAD", vec![s("ab"), Value::Int(5), s("xy")]), s("xyxab"));
        assert_eq!(call("RPAD", vec![s("abcdef"), Value::Int(3), s("x")]), s("abc"));
        assert_eq!(call("INITCAP", vec![s("hello wORLD")]), s("Hello World"));
        assert_eq!(call("CONCAT", vec![s("a"), Value::Null, s("b")]), s("ab"));
        assert_eq!(call("CONCAT_WS", vec![s("-"), s("a"), Value::Null, s("b")]), s("a-b"));
        assert_eq!(call("LEN", vec![s("héllo")]), Value::Int(5));
    }

    #[test]
    fn maths() {
        assert_eq!(call("ABS", vec![Value::Int(-3)]), Value::Int(3));
        assert_eq!(call("ROUND", vec![Value::Double(2.5)]), Value::Bigint(3));
        assert_eq!(call("ROUND", vec![Value::Double(-2.5)]), Value::Bigint(-2));
        assert_eq!(call("ROUND", vec![Value::Double(1.2345), Value::Int(2)]), Value::Double(1.23));
        // Huge places finish at once (they are clamped) and change nothing.
        assert_eq!(call("ROUND", vec![Value::Double(1.2345), Value::Int(i32::MAX)]), Value::Double(1.2345));
        assert_eq!(call("ROUND", vec![Value::Bigint(12), Value::Int(i32::MIN)]), Value::Bigint(0));
        assert_eq!(call("FLOOR", vec![Value::Double(-1.5)]), Value::Double(-2.0));
        assert_eq!(call("SIGN", vec![Value::Double(-0.5)]), Value::Int(-1));
        assert_eq!(call("GREATEST", vec![Value::Int(1), Value::Int(5), Value::Null]), Value::Int(5));
        assert_eq!(call("GREATEST", vec![Value::Int(1), Value::Double(0.5)]), Value::Double(1.0));
        // INT with BIGINT is ambiguous in ksqlDB.
        assert!(resolve("LEAST", &[Some(SqlType::Int), Some(SqlType::Bigint)]).unwrap().is_err());
        assert_eq!(call("LEAST", vec![s("b"), s("a")]), s("a"));
        let Value::Double(d) = call(
            "GEO_DISTANCE",
            vec![Value::Double(37.4439), Value::Double(-122.1663), Value::Double(51.5257), Value::Double(-0.1271)],
        ) else {
            panic!()
        };
        assert!((d - 8634.6).abs() < 1.0, "{d}");
    }
}
