//! The state-store seam: ordered byte keys and values in named stores, with prefix ranges. The
//! processor backs it with RocksDB (and changelog topics); tests and `sluice-processor test` use
//! [`MemoryStore`]. Rows and aggregate states are written with [`encode_row`].

use std::collections::{BTreeMap, HashMap};

use bigdecimal::{BigDecimal, num_bigint::BigInt};

use crate::value::Value;

/// Ordered key-value state, in named stores.
pub trait StateStore {
    /// The value under a key.
    fn get(&self, store: &str, key: &[u8]) -> Option<Vec<u8>>;
    /// Write a value.
    fn put(&mut self, store: &str, key: Vec<u8>, value: Vec<u8>);
    /// Remove a key.
    fn delete(&mut self, store: &str, key: &[u8]);
    /// Every entry whose key starts with `prefix`, in key order.
    fn range(&self, store: &str, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// Every entry whose key sorts before `end`, in key order (stores override it to stop early).
    fn range_to(&self, store: &str, end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.range(store, &[]).into_iter().take_while(|(k, _)| k.as_slice() < end).collect()
    }
    /// The input partition whose record is being processed: a partitioned store keeps each
    /// partition's state apart (and changelogs it to that partition). `None`: reads span every
    /// partition (pull queries).
    fn set_partition(&mut self, _partition: Option<i32>) {}
}

/// An in-memory [`StateStore`].
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    stores: HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl StateStore for MemoryStore {
    fn get(&self, store: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.stores.get(store)?.get(key).cloned()
    }

    fn put(&mut self, store: &str, key: Vec<u8>, value: Vec<u8>) {
        self.stores.entry(store.to_owned()).or_default().insert(key, value);
    }

    fn delete(&mut self, store: &str, key: &[u8]) {
        if let Some(s) = self.stores.get_mut(store) {
            s.remove(key);
        }
    }

    fn range(&self, store: &str, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(s) = self.stores.get(store) else { return Vec::new() };
        s.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn range_to(&self, store: &str, end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(s) = self.stores.get(store) else { return Vec::new() };
        s.range(..end.to_vec()).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Encode values (a row, a key, or aggregate states) to bytes. Length-prefixed, so that an
/// encoded key is a prefix only of encodings that extend it.
pub fn encode_row(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, values.len());
    for v in values {
        encode_value(&mut out, v);
    }
    out
}

/// Decode what [`encode_row`] wrote.
pub fn decode_row(bytes: &[u8]) -> Option<Vec<Value>> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.value()?);
    }
    Some(out)
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Boolean(b) => {
            out.push(1);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Bigint(i) => {
            out.push(3);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Double(d) => {
            out.push(4);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::Decimal(d) => {
            out.push(5);
            let (int, scale) = d.as_bigint_and_exponent();
            out.extend_from_slice(&scale.to_be_bytes());
            put_bytes(out, &int.to_signed_bytes_be());
        }
        Value::String(s) => {
            out.push(6);
            put_bytes(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(7);
            put_bytes(out, b);
        }
        Value::Timestamp(t) => {
            out.push(8);
            out.extend_from_slice(&t.to_be_bytes());
        }
        Value::Date(d) => {
            out.push(9);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::Time(t) => {
            out.push(10);
            out.extend_from_slice(&t.to_be_bytes());
        }
        Value::Array(items) => {
            out.push(11);
            put_len(out, items.len());
            for i in items {
                encode_value(out, i);
            }
        }
        Value::Map(entries) => {
            out.push(12);
            put_len(out, entries.len());
            for (k, v) in entries {
                encode_value(out, k);
                encode_value(out, v);
            }
        }
        Value::Struct(fields) => {
            out.push(13);
            put_len(out, fields.len());
            for (k, v) in fields {
                put_bytes(out, k.as_bytes());
                encode_value(out, v);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn len(&mut self) -> Option<usize> {
        Some(u32::from_be_bytes(self.fixed()?) as usize)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.len()?;
        Some(self.take(n)?.to_vec())
    }
    fn value(&mut self) -> Option<Value> {
        let tag = self.take(1)?[0];
        Some(match tag {
            0 => Value::Null,
            1 => Value::Boolean(self.take(1)?[0] != 0),
            2 => Value::Int(i32::from_be_bytes(self.fixed()?)),
            3 => Value::Bigint(i64::from_be_bytes(self.fixed()?)),
            4 => Value::Double(f64::from_be_bytes(self.fixed()?)),
            5 => {
                let scale = i64::from_be_bytes(self.fixed()?);
                let int = BigInt::from_signed_bytes_be(&self.bytes()?);
                Value::Decimal(BigDecimal::new(int, scale))
            }
            6 => Value::String(String::from_utf8(self.bytes()?).ok()?),
            7 => Value::Bytes(self.bytes()?),
            8 => Value::Timestamp(i64::from_be_bytes(self.fixed()?)),
            9 => Value::Date(i32::from_be_bytes(self.fixed()?)),
            10 => Value::Time(i64::from_be_bytes(self.fixed()?)),
            11 => {
                let n = self.len()?;
                Value::Array((0..n).map(|_| self.value()).collect::<Option<_>>()?)
            }
            12 => {
                let n = self.len()?;
                Value::Map((0..n).map(|_| Some((self.value()?, self.value()?))).collect::<Option<_>>()?)
            }
            13 => {
                let n = self.len()?;
                Value::Struct(
                    (0..n)
                        .map(|_| Some((String::from_utf8(self.bytes()?).ok()?, self.value()?)))
                        .collect::<Option<_>>()?,
                )
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use proptest::prelude::*;

    use super::*;

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            any::<i32>().prop_map(Value::Int),
            any::<i64>().prop_map(Value::Bigint),
            any::<f64>().prop_filter("NaN != NaN", |d| !d.is_nan()).prop_map(Value::Double),
            "[0-9]{1,20}\\.[0-9]{0,5}".prop_map(|s| Value::Decimal(BigDecimal::from_str(&s).unwrap())),
            ".*".prop_map(Value::String),
            any::<Vec<u8>>().prop_map(Value::Bytes),
            any::<i64>().prop_map(Value::Timestamp),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[A-Z]{1,3}", inner.clone()), 0..3).prop_map(Value::Struct),
                prop::collection::vec((inner.clone(), inner), 0..3).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn rows_round_trip(row in prop::collection::vec(value(), 0..5)) {
            prop_assert_eq!(decode_row(&encode_row(&row)), Some(row));
        }
    }

    #[test]
    fn ranges_by_prefix() {
        let mut s = MemoryStore::default();
        s.put("a", b"k1x".to_vec(), b"1".to_vec());
        s.put("a", b"k1y".to_vec(), b"2".to_vec());
        s.put("a", b"k2".to_vec(), b"3".to_vec());
        assert_eq!(s.range("a", b"k1").len(), 2);
        s.delete("a", b"k1x");
        assert_eq!(s.range("a", b"k1").len(), 1);
        assert_eq!(s.get("a", b"k2"), Some(b"3".to_vec()));
    }
}
