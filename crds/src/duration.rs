//! Durations as users write them (`500ms`, `30s`, `5m`, `1h30m`): Go / Kubernetes duration syntax.
//!
//! The text is kept as written so that the apiserver stores, and `kubectl get -o yaml` shows,
//! exactly what the user (or our defaults) wrote, while the program works with the parsed value.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD enforces: one or more `<number><unit>` groups, no sign.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A non-negative duration written with a unit, e.g. `500ms`, `30s`, `5m`, `1h30m`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: StdDuration,
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected a number with a unit, e.g. 500ms, 30s, 5m, 1h30m)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// The parsed value.
    pub fn get(&self) -> StdDuration {
        self.value
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A duration from a literal known to be valid (used for defaults).
    ///
    /// # Panics
    /// When `text` is not a valid duration; only call it with literals.
    pub fn from_static(text: &'static str) -> Self {
        match text.parse() {
            Ok(d) => d,
            Err(e) => panic!("invalid duration literal: {e}"),
        }
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError { input: s.to_owned(), reason };
        if s.is_empty() {
            return Err(err("empty"));
        }
        let mut total_nanos: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            if num_len == 0 {
                return Err(err("a unit must follow a number"));
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            let (int_part, frac_part) = match num.split_once('.') {
                Some((i, f)) if !i.is_empty() && !f.is_empty() && !f.contains('.') => (i, f),
                Some(_) => return Err(err("malformed number")),
                None => (num, ""),
            };
            let int: u128 = int_part.parse().map_err(|_| err("number too large"))?;
            let mut nanos = int.checked_mul(unit_nanos).ok_or_else(|| err("too large"))?;
            if !frac_part.is_empty() {
                // Keep at most 18 fractional digits: enough below a nanosecond for every unit.
                let digits = &frac_part[..frac_part.len().min(18)];
                let frac: u128 = digits.parse().map_err(|_| err("malformed number"))?;
                let scale = 10u128.pow(digits.len() as u32);
                nanos = nanos.checked_add(frac * unit_nanos / scale).ok_or_else(|| err("too large"))?;
            }
            total_nanos = total_nanos.checked_add(nanos).ok_or_else(|| err("too large"))?;
            rest = after;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        let value = StdDuration::new(secs, (total_nanos % 1_000_000_000) as u32);
        Ok(Duration { text: s.to_owned(), value })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({})", self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("500ms", StdDuration::from_millis(500)),
            ("30s", StdDuration::from_secs(30)),
            ("5m", StdDuration::from_secs(300)),
            ("1h30m", StdDuration::from_secs(5400)),
            ("1.5s", StdDuration::from_millis(1500)),
            ("250us", StdDuration::from_micros(250)),
            ("0s", StdDuration::ZERO),
        ];
        for (text, expected) in cases {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.get(), expected, "{text}");
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_durations() {
        for text in ["", "5", "m", "5x", "-5s", "1..5s", "1.s", "s5", "5 s", "99999999999999999999999h"] {
            assert!(text.parse::<Duration>().is_err(), "{text:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn pattern_and_parser_agree(s in "[0-9.]{0,4}(ns|us|ms|s|m|h|x|)[0-9]{0,2}(s|m|)") {
            let re_ok = regex_lite_match(&s);
            prop_assert_eq!(s.parse::<Duration>().is_ok(), re_ok, "{:?}", s);
        }
    }

    /// A hand check of [`DURATION_PATTERN`] for the strings the property generates (no regex crate
    /// in this library): groups of digits with an optional single-dot fraction and a unit.
    fn regex_lite_match(s: &str) -> bool {
        if s.is_empty() {
            return false;
        }
        let mut rest = s;
        while !rest.is_empty() {
            let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let num = &rest[..n];
            let ok_num = match num.split_once('.') {
                None => !num.is_empty(),
                Some((i, f)) => !i.is_empty() && !f.is_empty() && !f.contains('.'),
            };
            if !ok_num {
                return false;
            }
            rest = &rest[n..];
            let unit = ["ns", "us", "µs", "ms", "s", "m", "h"].iter().find(|u| rest.starts_with(**u));
            match unit {
                // `ms` before `m`, `ns`/`us` before `s`: take the longest unit that fits.
                Some(_) => {
                    let u =
                        ["ns", "us", "µs", "ms"].iter().find(|u| rest.starts_with(**u)).copied().unwrap_or(&rest[..1]);
                    rest = &rest[u.len()..];
                }
                None => return false,
            }
        }
        true
    }
}
