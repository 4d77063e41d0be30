//! Aggregate functions. Their running state is itself a [`Value`], so a state store keeps it
//! with the same codec as rows.

use sluice_sql::SqlType;

use crate::{
    functions::{self, common_type},
    value::{self, Value},
};

const NAMES: &[&str] = &[
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "COUNT_DISTINCT",
    "LATEST_BY_OFFSET",
    "EARLIEST_BY_OFFSET",
    "COLLECT_LIST",
    "COLLECT_SET",
    "TOPK",
    "TOPKDISTINCT",
];

/// Whether `name` (upper case) is an aggregate function.
pub fn is_aggregate(name: &str) -> bool {
    NAMES.contains(&name)
}

/// Which aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Kind {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    CountDistinct,
    Latest,
    Earliest,
    CollectList,
    CollectSet,
    TopK,
    TopKDistinct,
}

/// A resolved aggregate call.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Which one.
    pub kind: Kind,
    /// The type its (first) argument is converted to.
    pub arg: Option<SqlType>,
    /// Its result type.
    pub ret: SqlType,
    /// `TOPK`'s k; `LATEST_BY_OFFSET`'s ignore-nulls flag as 1/0.
    pub param: i64,
}

impl Aggregate {
    /// Resolve `name(args)`; `star` for `COUNT(*)`. `literal_args` are the values of the
    /// arguments after the first when they are literals.
    pub fn resolve(
        name: &str,
        args: &[Option<SqlType>],
        star: bool,
        literal_args: &[Option<Value>],
    ) -> Result<Aggregate, String> {
        let first = args.first().cloned().flatten();
        let want = |n: usize| -> Result<(), String> {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("Function '{name}' does not accept {} arguments", args.len()))
            }
        };
        let numeric = |t: &Option<SqlType>| -> Result<SqlType, String> {
            match t {
                Some(t) if t.is_numeric() => Ok(t.clone()),
                Some(t) => Err(format!("Function '{name}' does not accept parameters ({t})")),
                None => Err(format!("Function '{name}' does not accept NULL")),
            }
        };
        let comparable = |t: &Option<SqlType>| -> Result<SqlType, String> {
            match t {
                Some(t)
                    if t.is_numeric()
                        || matches!(
                            t,
                            SqlType::String | SqlType::Timestamp | SqlType::Date | SqlType::Time | SqlType::Bytes
                        ) =>
                {
                    Ok(t.clone())
                }
                Some(t) => Err(format!("Function '{name}' does not accept parameters ({t})")),
                None => Err(format!("Function '{name}' does not accept NULL")),
            }
        };
        let mk = |kind, arg: Option<SqlType>, ret| Aggregate { kind, arg, ret, param: 0 };
        Ok(match name {
            "COUNT" if star || args.is_empty() => mk(Kind::CountStar, None, SqlType::Bigint),
            "COUNT" => {
                want(1)?;
                // COUNT(literal) counts every row.
                if literal_args.first().is_some_and(|l| l.as_ref().is_some_and(|v| !v.is_null())) {
                    mk(Kind::CountStar, None, SqlType::Bigint)
                } else {
                    mk(Kind::Count, first, SqlType::Bigint)
                }
            }
            "SUM" => {
                want(1)?;
                let t = numeric(&first)?;
                mk(Kind::Sum, Some(t.clone()), t)
            }
            "AVG" => {
                want(1)?;
                let t = numeric(&first)?;
                mk(Kind::Avg, Some(t), SqlType::Double)
            }
            "MIN" | "MAX" => {
                want(1)?;
                let t = comparable(&first)?;
                mk(if name == "MIN" { Kind::Min } else { Kind::Max }, Some(t.clone()), t)
            }
            "COUNT_DISTINCT" => {
                want(1)?;
                mk(Kind::CountDistinct, first, SqlType::Bigint)
            }
            "LATEST_BY_OFFSET" | "EARLIEST_BY_OFFSET" => {
                if args.is_empty() || args.len() > 3 {
                    return Err(format!("Function '{name}' does not accept {} arguments", args.len()));
                }
                let t = first.clone().ok_or_else(|| format!("Function '{name}' does not accept NULL"))?;
                let ignore_nulls = match literal_args.get(1).cloned().flatten() {
                    Some(Value::Boolean(b)) => b,
                    _ => true,
                };
                let kind = if name == "LATEST_BY_OFFSET" { Kind::Latest } else { Kind::Earliest };
                Aggregate { kind, arg: Some(t.clone()), ret: t, param: i64::from(ignore_nulls) }
            }
            "COLLECT_LIST" | "COLLECT_SET" => {
                want(1)?;
                let t = first.ok_or_else(|| format!("Function '{name}' does not accept NULL"))?;
                let kind = if name == "COLLECT_LIST" { Kind::CollectList } else { Kind::CollectSet };
                mk(kind, Some(t.clone()), SqlType::Array(Box::new(t)))
            }
            "TOPK" | "TOPKDISTINCT" => {
                want(2)?;
                let t = comparable(&first)?;
                let k = match literal_args.get(1).cloned().flatten().and_then(|v| v.as_i64()) {
                    Some(k) if k > 0 => k,
                    _ => return Err(format!("Function '{name}' needs a positive literal k as its second argument")),
                };
                let kind = if name == "TOPK" { Kind::TopK } else { Kind::TopKDistinct };
                Aggregate { kind, arg: Some(t.clone()), ret: SqlType::Array(Box::new(t)), param: k }
            }
            _ => return Err(format!("Unknown aggregate function '{name}'")),
        })
    }

    /// Whether it can retract a value (required when aggregating a table).
    pub fn can_undo(&self) -> bool {
        matches!(
            self.kind,
            Kind::CountStar | Kind::Count | Kind::Sum | Kind::Avg | Kind::CollectList | Kind::CollectSet
        )
    }

    /// The state before any value.
    pub fn init(&self) -> Value {
        match self.kind {
            Kind::CountStar | Kind::Count => Value::Bigint(0),
            Kind::Sum => zero(self.arg.as_ref()),
            Kind::Avg => {
                Value::Struct(vec![("SUM".into(), zero(self.arg.as_ref())), ("COUNT".into(), Value::Bigint(0))])
            }
            Kind::Min | Kind::Max | Kind::Latest | Kind::Earliest => Value::Null,
            Kind::CountDistinct | Kind::CollectList | Kind::CollectSet | Kind::TopK | Kind::TopKDistinct => {
                Value::Array(Vec::new())
            }
        }
    }

    /// Fold one value in.
    pub fn add(&self, state: Value, v: &Value) -> Value {
        let v = match &self.arg {
            Some(t) => functions::coerce(v.clone(), t),
            None => v.clone(),
        };
        match self.kind {
            Kind::CountStar => Value::Bigint(state.as_i64().unwrap_or(0) + 1),
            Kind::Count => Value::Bigint(state.as_i64().unwrap_or(0) + i64::from(!v.is_null())),
            Kind::Sum => {
                if v.is_null() {
                    state
                } else {
                    plus(&state, &v, self.arg.as_ref(), 1)
                }
            }
            Kind::Avg => {
                if v.is_null() {
                    return state;
                }
                let (sum, count) = avg_parts(&state);
                Value::Struct(vec![
                    ("SUM".into(), plus(&sum, &v, self.arg.as_ref(), 1)),
                    ("COUNT".into(), Value::Bigint(count + 1)),
                ])
            }
            Kind::Min | Kind::Max => {
                if v.is_null() {
                    return state;
                }
                if state.is_null() {
                    return v;
                }
                let o = value::compare(&v, &state);
                let better = if self.kind == Kind::Min {
                    o == Some(std::cmp::Ordering::Less)
                } else {
                    o == Some(std::cmp::Ordering::Greater)
                };
                if better { v } else { state }
            }
            Kind::Latest => {
                if v.is_null() && self.param == 1 {
                    state
                } else {
                    v
                }
            }
            Kind::Earliest => {
                // The state is wrapped so that an earliest NULL (when NULLs count) sticks.
                match state {
                    Value::Null if !(v.is_null() && self.param == 1) => Value::Array(vec![v]),
                    other => other,
                }
            }
            Kind::CountDistinct | Kind::CollectSet | Kind::TopKDistinct => {
                let Value::Array(mut items) = state else { return state };
                if !v.is_null() && !items.iter().any(|i| value::null_safe_equal(i, &v)) {
                    items.push(v);
                    if self.kind == Kind::TopKDistinct {
                        top(&mut items, self.param);
                    }
                }
                Value::Array(items)
            }
            Kind::CollectList => {
                let Value::Array(mut items) = state else { return state };
                items.push(v);
                Value::Array(items)
            }
            Kind::TopK => {
                let Value::Array(mut items) = state else { return state };
                if !v.is_null() {
                    items.push(v);
                    top(&mut items, self.param);
                }
                Value::Array(items)
            }
        }
    }

    /// Retract one value (a table row that changed or went away).
    pub fn undo(&self, state: Value, v: &Value) -> Value {
        let v = match &self.arg {
            Some(t) => functions::coerce(v.clone(), t),
            None => v.clone(),
        };
        match self.kind {
            Kind::CountStar => Value::Bigint(state.as_i64().unwrap_or(0) - 1),
            Kind::Count => Value::Bigint(state.as_i64().unwrap_or(0) - i64::from(!v.is_null())),
            Kind::Sum if !v.is_null() => plus(&state, &v, self.arg.as_ref(), -1),
            Kind::Avg if !v.is_null() => {
                let (sum, count) = avg_parts(&state);
                Value::Struct(vec![
                    ("SUM".into(), plus(&sum, &v, self.arg.as_ref(), -1)),
                    ("COUNT".into(), Value::Bigint(count - 1)),
                ])
            }
            Kind::CollectList | Kind::CollectSet => {
                let Value::Array(mut items) = state else { return state };
                if let Some(i) = items.iter().position(|i| value::null_safe_equal(i, &v)) {
                    items.remove(i);
                }
                Value::Array(items)
            }
            _ => state,
        }
    }

    /// Merge two states (session windows joining).
    pub fn merge(&self, a: Value, b: Value) -> Value {
        match self.kind {
            Kind::CountStar | Kind::Count => Value::Bigint(a.as_i64().unwrap_or(0) + b.as_i64().unwrap_or(0)),
            Kind::Sum => plus(&a, &b, self.arg.as_ref(), 1),
            Kind::Avg => {
                let ((s1, c1), (s2, c2)) = (avg_parts(&a), avg_parts(&b));
                Value::Struct(vec![
                    ("SUM".into(), plus(&s1, &s2, self.arg.as_ref(), 1)),
                    ("COUNT".into(), Value::Bigint(c1 + c2)),
                ])
            }
            Kind::Min | Kind::Max => {
                if b.is_null() {
                    a
                } else {
                    self.add(a, &b)
                }
            }
            Kind::Latest => {
                if b.is_null() {
                    a
                } else {
                    b
                }
            }
            Kind::Earliest => {
                if a.is_null() {
                    b
                } else {
                    a
                }
            }
            Kind::CollectList => match (a, b) {
                (Value::Array(mut x), Value::Array(y)) => {
                    x.extend(y);
                    Value::Array(x)
                }
                (x, _) => x,
            },
            Kind::CountDistinct | Kind::CollectSet | Kind::TopK | Kind::TopKDistinct => match b {
                Value::Array(items) => items.iter().fold(a, |acc, v| self.add(acc, v)),
                _ => a,
            },
        }
    }

    /// The aggregate's value for a state.
    pub fn result(&self, state: &Value) -> Value {
        match self.kind {
            Kind::Avg => {
                let (sum, count) = avg_parts(state);
                if count == 0 {
                    return Value::Null;
                }
                Value::Double(sum.as_f64().unwrap_or(0.0) / count as f64)
            }
            Kind::CountDistinct => match state {
                Value::Array(items) => Value::Bigint(items.len() as i64),
                _ => Value::Bigint(0),
            },
            Kind::Earliest => match state {
                Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
                _ => Value::Null,
            },
            _ => state.clone(),
        }
    }
}

fn zero(t: Option<&SqlType>) -> Value {
    match t {
        Some(SqlType::Int) => Value::Int(0),
        Some(SqlType::Bigint) => Value::Bigint(0),
        Some(SqlType::Decimal { scale, .. }) => {
            Value::Decimal(value::rescale(&bigdecimal::BigDecimal::from(0), *scale))
        }
        _ => Value::Double(0.0),
    }
}

fn plus(a: &Value, b: &Value, t: Option<&SqlType>, sign: i32) -> Value {
    match t {
        Some(SqlType::Int) => {
            let (x, y) = (a.as_i64().unwrap_or(0) as i32, b.as_i64().unwrap_or(0) as i32);
            Value::Int(if sign > 0 { x.wrapping_add(y) } else { x.wrapping_sub(y) })
        }
        Some(SqlType::Bigint) => {
            let (x, y) = (a.as_i64().unwrap_or(0), b.as_i64().unwrap_or(0));
            Value::Bigint(if sign > 0 { x.wrapping_add(y) } else { x.wrapping_sub(y) })
        }
        Some(SqlType::Decimal { scale, .. }) => {
            let (x, y) = (a.as_decimal().unwrap_or_default(), b.as_decimal().unwrap_or_default());
            Value::Decimal(value::rescale(&if sign > 0 { x + y } else { x - y }, *scale))
        }
        _ => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            Value::Double(if sign > 0 { x + y } else { x - y })
        }
    }
}

fn avg_parts(state: &Value) -> (Value, i64) {
    match state {
        Value::Struct(fields) if fields.len() == 2 => (fields[0].1.clone(), fields[1].1.as_i64().unwrap_or(0)),
        _ => (Value::Null, 0),
    }
}

fn top(items: &mut Vec<Value>, k: i64) {
    items.sort_by(|a, b| value::compare(b, a).unwrap_or(std::cmp::Ordering::Equal));
    items.truncate(usize::try_from(k).unwrap_or(usize::MAX));
}

/// The common type of several argument types (for messages and checks).
pub fn common(types: &[SqlType]) -> Option<SqlType> {
    let mut it = types.iter();
    let first = it.next()?.clone();
    it.try_fold(first, |acc, t| common_type(&acc, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_sum_avg_undo() {
        let sum = Aggregate::resolve("SUM", &[Some(SqlType::Int)], false, &[None]).unwrap();
        let s = [1, 2, 3].iter().fold(sum.init(), |s, v| sum.add(s, &Value::Int(*v)));
        assert_eq!(sum.result(&s), Value::Int(6));
        assert_eq!(sum.result(&sum.undo(s, &Value::Int(2))), Value::Int(4));
        let avg = Aggregate::resolve("AVG", &[Some(SqlType::Bigint)], false, &[None]).unwrap();
        let s = [1, 2].iter().fold(avg.init(), |s, v| avg.add(s, &Value::Bigint(*v)));
        assert_eq!(avg.result(&s), Value::Double(1.5));
        let count = Aggregate::resolve("COUNT", &[Some(SqlType::String)], false, &[None]).unwrap();
        let s = count.add(count.add(count.init(), &Value::Null), &Value::String("x".into()));
        assert_eq!(count.result(&s), Value::Bigint(1));
    }

    #[test]
    fn topk_keeps_the_largest() {
        let topk =
            Aggregate::resolve("TOPK", &[Some(SqlType::Int), Some(SqlType::Int)], false, &[None, Some(Value::Int(2))])
                .unwrap();
        let s = [5, 1, 9, 7].iter().fold(topk.init(), |s, v| topk.add(s, &Value::Int(*v)));
        assert_eq!(topk.result(&s), Value::Array(vec![Value::Int(9), Value::Int(7)]));
    }
}
