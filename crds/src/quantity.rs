//! Byte sizes written as Kubernetes quantities (`6Mi`, `1Gi`, `500k`, `1048576`).
//!
//! The CRD accepts an integer or a string (as Kubernetes' own `Quantity` does) and its CEL rule
//! checks the string with the apiserver's own `isQuantity`; this type parses the value to bytes
//! for the data plane and keeps the text so the stored object shows what the user wrote.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The CEL rule attached to every byte-size field.
/// `string(self)` covers both forms: an integer becomes its decimal text, itself a quantity.
pub const BYTE_SIZE_RULE: &str =
    "isQuantity(string(self)) && quantity(string(self)).isInteger() && quantity(string(self)).asInteger() > 0";

/// A positive whole number of bytes, written as a Kubernetes quantity.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ByteSize {
    repr: Repr,
    bytes: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Int,
    Text(String),
}

/// Why a quantity was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (expected a whole number of bytes such as 6Mi, 512Ki, 1G or 1048576)")]
pub struct ByteSizeError {
    input: String,
    reason: &'static str,
}

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The quantity as text (`6Mi`, or the number of bytes when it was given as an integer).
    pub fn to_quantity_string(&self) -> String {
        match &self.repr {
            Repr::Int => self.bytes.to_string(),
            Repr::Text(t) => t.clone(),
        }
    }

    /// A size from a literal known to be valid (used for defaults).
    ///
    /// # Panics
    /// When `text` is not a valid size; only call it with literals.
    pub fn from_static(text: &'static str) -> Self {
        match text.parse() {
            Ok(v) => v,
            Err(e) => panic!("invalid size literal: {e}"),
        }
    }

    fn from_int(n: i64) -> Result<Self, ByteSizeError> {
        if n <= 0 {
            return Err(ByteSizeError { input: n.to_string(), reason: "must be positive" });
        }
        Ok(ByteSize { repr: Repr::Int, bytes: n as u64 })
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ByteSizeError { input: s.to_owned(), reason };
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        if number.is_empty() {
            return Err(err(if s.starts_with('-') { "must be positive" } else { "missing number" }));
        }
        // Work in units of 1/10^9 bytes so that `1.5Gi` or `0.5k` are exact.
        let (int_part, frac_part) = match number.split_once('.') {
            None => (number, ""),
            Some((i, f)) if !(f.contains('.') || (i.is_empty() && f.is_empty())) => (i, f),
            Some(_) => return Err(err("malformed number")),
        };
        if frac_part.len() > 9 {
            return Err(err("too many decimal places"));
        }
        let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| err("too large"))? };
        let frac: u128 = if frac_part.is_empty() {
            0
        } else {
            frac_part.parse::<u128>().map_err(|_| err("malformed number"))? * 10u128.pow(9 - frac_part.len() as u32)
        };
        let nano = int.checked_mul(1_000_000_000).and_then(|v| v.checked_add(frac)).ok_or_else(|| err("too large"))?;
        let multiplier: u128 = match suffix {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "Pi" => 1 << 50,
            "Ei" => 1 << 60,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "P" => 1_000_000_000_000_000,
            "E" => 1_000_000_000_000_000_000,
            "m" => return Err(err("a size cannot be a fraction of a byte")),
            s if s.starts_with(['e', 'E']) => {
                let exp: u32 = s[1..].parse().map_err(|_| err("malformed exponent"))?;
                10u128.checked_pow(exp).ok_or_else(|| err("too large"))?
            }
            _ => return Err(err("unknown suffix")),
        };
        let total = nano.checked_mul(multiplier).ok_or_else(|| err("too large"))?;
        if total % 1_000_000_000 != 0 {
            return Err(err("not a whole number of bytes"));
        }
        let bytes = u64::try_from(total / 1_000_000_000).map_err(|_| err("too large"))?;
        if bytes == 0 {
            return Err(err("must be positive"));
        }
        Ok(ByteSize { repr: Repr::Text(s.to_owned()), bytes })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_quantity_string())
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ByteSize({} = {} bytes)", self.to_quantity_string(), self.bytes)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.repr {
            Repr::Int => serializer.serialize_u64(self.bytes),
            Repr::Text(t) => serializer.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 6Mi or a number of bytes")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                ByteSize::from_int(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                let v = i64::try_from(v).map_err(|_| E::custom("size too large"))?;
                ByteSize::from_int(v).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // maxLength bounds the CEL cost estimate of `string(self)` (the apiserver refuses rules
        // whose estimated cost is unbounded); 32 characters hold any quantity that fits in i64.
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": BYTE_SIZE_RULE,
                "message": "must be a positive whole number of bytes, as an integer or a quantity such as 6Mi",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantities() {
        let cases = [
            ("6Mi", 6 * 1024 * 1024),
            ("1Gi", 1 << 30),
            ("512Ki", 512 * 1024),
            ("1G", 1_000_000_000),
            ("500k", 500_000),
            ("1.5Ki", 1536),
            ("1048576", 1_048_576),
            ("1e3", 1000),
        ];
        for (text, bytes) in cases {
            let q: ByteSize = text.parse().unwrap();
            assert_eq!(q.bytes(), bytes, "{text}");
            assert_eq!(q.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_quantities() {
        for text in ["", "Mi", "-1Mi", "0", "0Mi", "1.5", "100m", "5MB", "1..5Mi", "99999999999Ei"] {
            assert!(text.parse::<ByteSize>().is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn integers_round_trip_as_integers() {
        let q: ByteSize = serde_json::from_str("1024").unwrap();
        assert_eq!(q.bytes(), 1024);
        assert_eq!(serde_json::to_string(&q).unwrap(), "1024");
        assert!(serde_json::from_str::<ByteSize>("-5").is_err());
    }
}
