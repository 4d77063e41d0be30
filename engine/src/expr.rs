//! Expressions: name resolution against a scope, typing with ksqlDB's rules, and evaluation.

use std::{cmp::Ordering, str::FromStr};

use bigdecimal::{BigDecimal, Zero};
use regex::Regex;
use sluice_sql::{
    SqlError, SqlType,
    ast::{self, BinaryOp, ExprKind, Ident, Literal, UnaryOp},
    error::Pos,
};

use crate::{
    functions::{self, Resolved},
    value::{self, Value},
};

/// One column visible to an expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The source name or alias it belongs to, when qualified access is allowed.
    pub qualifier: Option<String>,
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: SqlType,
}

/// The columns an expression can see, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    /// Fields; a row evaluated in this scope has one value per field.
    pub fields: Vec<Field>,
}

impl Scope {
    /// Add a field.
    pub fn push(&mut self, qualifier: Option<&str>, name: impl Into<String>, ty: SqlType) {
        self.fields.push(Field { qualifier: qualifier.map(str::to_owned), name: name.into(), ty });
    }

    /// The index of a column reference.
    pub fn resolve(&self, qualifier: Option<&Ident>, name: &Ident) -> Result<usize, SqlError> {
        let matches: Vec<usize> = self
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                f.name == name.name
                    && match qualifier {
                        Some(q) => f.qualifier.as_deref() == Some(q.name.as_str()),
                        None => true,
                    }
            })
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            [] => {
                if let Some(q) = qualifier
                    && !self.fields.iter().any(|f| f.qualifier.as_deref() == Some(q.name.as_str()))
                {
                    return Err(SqlError::new(
                        q.pos,
                        format!("'{}' is not a valid stream/table name or alias.", q.name),
                    ));
                }
                let shown = match qualifier {
                    Some(q) => format!("{}.{}", q.name, name.name),
                    None => name.name.clone(),
                };
                Err(SqlError::new(name.pos, format!("Column '{shown}' cannot be resolved.")))
            }
            _ => Err(SqlError::new(
                name.pos,
                format!("Column '{}' is ambiguous. Could be any of: {}", name.name, {
                    let names: Vec<String> = matches
                        .iter()
                        .map(|i| format!("{}.{}", self.fields[*i].qualifier.as_deref().unwrap_or("?"), name.name))
                        .collect();
                    names.join(", ")
                }),
            )),
        }
    }
}

/// A typed, resolved expression.
#[derive(Debug, Clone)]
pub struct Expr {
    /// What it computes.
    pub node: Node,
    /// Its type; `None` for an untyped `NULL`.
    pub ty: Option<SqlType>,
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Compiled expression nodes.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Node {
    Column(usize),
    Literal(Value),
    Neg(Box<Expr>),
    Arith { op: Arith, left: Box<Expr>, right: Box<Expr> },
    Concat(Box<Expr>, Box<Expr>),
    Compare { op: Cmp, left: Box<Expr>, right: Box<Expr> },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull { expr: Box<Expr>, negated: bool },
    IsDistinct { left: Box<Expr>, right: Box<Expr>, negated: bool },
    Between { expr: Box<Expr>, low: Box<Expr>, high: Box<Expr>, negated: bool },
    In { expr: Box<Expr>, list: Vec<Expr>, negated: bool },
    Like { expr: Box<Expr>, pattern: Box<Expr>, compiled: Option<Regex>, escape: Option<char>, negated: bool },
    Case { operand: Option<Box<Expr>>, whens: Vec<(Expr, Expr)>, otherwise: Option<Box<Expr>> },
    Cast { expr: Box<Expr>, ty: SqlType },
    Call { function: Resolved, args: Vec<Expr> },
    Field { expr: Box<Expr>, index: usize },
    Subscript { expr: Box<Expr>, index: Box<Expr> },
    Array(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
    Struct(Vec<(String, Expr)>),
}

/// The type of a literal as ksqlDB types it.
pub fn literal(l: &Literal, pos: Pos) -> Result<(Value, Option<SqlType>), SqlError> {
    Ok(match l {
        Literal::Null => (Value::Null, None),
        Literal::Boolean(b) => (Value::Boolean(*b), Some(SqlType::Boolean)),
        Literal::Integer(text) => match text.parse::<i32>() {
            Ok(i) => (Value::Int(i), Some(SqlType::Int)),
            Err(_) => match text.parse::<i64>() {
                Ok(i) => (Value::Bigint(i), Some(SqlType::Bigint)),
                Err(_) => return Err(SqlError::new(pos, format!("Invalid numeric literal: {text}"))),
            },
        },
        Literal::Decimal(text) => {
            let d = BigDecimal::from_str(text).map_err(|e| SqlError::new(pos, e.to_string()))?;
            let ty = value::type_of(&Value::Decimal(d.clone()));
            (Value::Decimal(d), ty)
        }
        Literal::Double(text) => {
            let d: f64 = text.parse().map_err(|_| SqlError::new(pos, format!("Invalid number: {text}")))?;
            let exact =
                BigDecimal::from_str(text).map_err(|_| SqlError::new(pos, format!("Invalid number: {text}")))?;
            let max = BigDecimal::from_str(&format!("{:e}", f64::MAX)).unwrap_or_default();
            if d.is_infinite() || exact.abs() > max {
                return Err(SqlError::new(pos, format!("Number overflows DOUBLE: {text}")));
            }
            (Value::Double(d), Some(SqlType::Double))
        }
        Literal::String(s) => (Value::String(s.clone()), Some(SqlType::String)),
    })
}

fn ty_name(t: &Option<SqlType>) -> String {
    t.as_ref().map_or_else(|| "NULL".into(), |t| t.to_string())
}

/// Compile an expression against a scope.
pub fn compile(e: &ast::Expr, scope: &Scope) -> Result<Expr, SqlError> {
    let pos = e.pos;
    let c = |e: &ast::Expr| compile(e, scope);
    let b = |e: &ast::Expr| compile(e, scope).map(Box::new);
    Ok(match &e.kind {
        ExprKind::Column { qualifier, name } => {
            let i = scope.resolve(qualifier.as_ref(), name)?;
            Expr { node: Node::Column(i), ty: Some(scope.fields[i].ty.clone()) }
        }
        ExprKind::Literal(l) => {
            let (v, ty) = literal(l, pos)?;
            Expr { node: Node::Literal(v), ty }
        }
        ExprKind::Unary { op, expr } => {
            if *op == UnaryOp::Minus
                && let ExprKind::Literal(Literal::Integer(text)) = &expr.kind
            {
                let negated = format!("-{text}");
                if let Ok(v) = negated.parse::<i64>() {
                    let (value, ty) = match i32::try_from(v) {
                        Ok(i) => (Value::Int(i), SqlType::Int),
                        Err(_) => (Value::Bigint(v), SqlType::Bigint),
                    };
                    return Ok(Expr { node: Node::Literal(value), ty: Some(ty) });
                }
                return Err(SqlError::new(pos, format!("Invalid numeric literal: {negated}")));
            }
            let inner = c(expr)?;
            if let Some(t) = &inner.ty
                && !t.is_numeric()
            {
                return Err(SqlError::new(pos, format!("Unsupported arithmetic on type {t}")));
            }
            if *op == UnaryOp::Plus {
                inner
            } else {
                // Fold negative literals so that `-2147483648` stays an INT.
                if let Node::Literal(v) = &inner.node {
                    let folded = match v {
                        Value::Int(i) => Some(Value::Int(-i)),
                        Value::Bigint(i) => Some(Value::Bigint(-i)),
                        Value::Double(d) => Some(Value::Double(-d)),
                        Value::Decimal(d) => Some(Value::Decimal(-d.clone())),
                        _ => None,
                    };
                    if let Some(v) = folded {
                        return Ok(Expr { ty: inner.ty.clone(), node: Node::Literal(v) });
                    }
                }
                Expr { ty: inner.ty.clone(), node: Node::Neg(Box::new(inner)) }
            }
        }
        ExprKind::Binary { op, left, right } => {
            let (mut l, mut r) = (c(left)?, c(right)?);
            if !matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Concat) {
                magic_timestamp(left, &mut r)?;
                magic_timestamp(right, &mut l)?;
            }
            binary(*op, l, r, pos)?
        }
        ExprKind::Not(inner) => {
            let inner = c(inner)?;
            expect_boolean(&inner, pos, "NOT")?;
            Expr { node: Node::Not(Box::new(inner)), ty: Some(SqlType::Boolean) }
        }
        ExprKind::IsNull { expr, negated } => {
            Expr { node: Node::IsNull { expr: b(expr)?, negated: *negated }, ty: Some(SqlType::Boolean) }
        }
        ExprKind::IsDistinctFrom { left, right, negated } => {
            let (l, r) = (c(left)?, c(right)?);
            check_comparable(&l, &r, pos, "IS DISTINCT FROM")?;
            Expr {
                node: Node::IsDistinct { left: Box::new(l), right: Box::new(r), negated: *negated },
                ty: Some(SqlType::Boolean),
            }
        }
        ExprKind::Between { expr, low, high, negated } => {
            let (x, mut lo, mut hi) = (c(expr)?, c(low)?, c(high)?);
            magic_timestamp(expr, &mut lo)?;
            magic_timestamp(expr, &mut hi)?;
            check_comparable(&x, &lo, pos, "BETWEEN")?;
            check_comparable(&x, &hi, pos, "BETWEEN")?;
            Expr {
                node: Node::Between { expr: Box::new(x), low: Box::new(lo), high: Box::new(hi), negated: *negated },
                ty: Some(SqlType::Boolean),
            }
        }
        ExprKind::InList { expr, list, negated } => {
            let x = c(expr)?;
            let mut items = Vec::new();
            for item in list {
                let i = c(item)?;
                check_comparable(&x, &i, item.pos, "IN")?;
                items.push(i);
            }
            Expr { node: Node::In { expr: Box::new(x), list: items, negated: *negated }, ty: Some(SqlType::Boolean) }
        }
        ExprKind::Like { expr, pattern, escape, negated } => {
            let (x, p) = (c(expr)?, c(pattern)?);
            for (side, what) in [(&x, "value"), (&p, "pattern")] {
                if let Some(t) = &side.ty
                    && *t != SqlType::String
                {
                    return Err(SqlError::new(
                        pos,
                        format!("LIKE can only be applied to STRING, but the {what} is {t}"),
                    ));
                }
            }
            let compiled = match &p.node {
                Node::Literal(Value::String(s)) => Some(like_regex(s, *escape)),
                _ => None,
            };
            Expr {
                node: Node::Like {
                    expr: Box::new(x),
                    pattern: Box::new(p),
                    compiled,
                    escape: *escape,
                    negated: *negated,
                },
                ty: Some(SqlType::Boolean),
            }
        }
        ExprKind::Case { operand, whens, otherwise } => {
            let operand = operand.as_ref().map(|o| b(o)).transpose()?;
            let mut compiled = Vec::new();
            let mut result_ty: Option<SqlType> = None;
            for (cond, result) in whens {
                let cond = c(cond)?;
                match &operand {
                    Some(o) => check_comparable(o, &cond, pos, "CASE")?,
                    None => expect_boolean(&cond, cond_pos(whens, &cond, pos), "WHEN")?,
                }
                let r = c(result)?;
                result_ty = unify(result_ty, &r.ty, result.pos, "THEN")?;
                compiled.push((cond, r));
            }
            let otherwise = match otherwise {
                Some(o) => {
                    let r = c(o)?;
                    result_ty = unify(result_ty, &r.ty, o.pos, "ELSE")?;
                    Some(Box::new(r))
                }
                None => None,
            };
            // Convert every branch to the common result type.
            if let Some(t) = &result_ty {
                for (_, r) in &mut compiled {
                    convert(r, t);
                }
                if let Some(o) = otherwise.as_deref().cloned() {
                    let mut o = o;
                    convert(&mut o, t);
                    return Ok(Expr {
                        node: Node::Case { operand, whens: compiled, otherwise: Some(Box::new(o)) },
                        ty: result_ty,
                    });
                }
            }
            Expr { node: Node::Case { operand, whens: compiled, otherwise }, ty: result_ty }
        }
        ExprKind::Cast { expr, ty } => {
            let inner = c(expr)?;
            if let Some(from) = &inner.ty
                && !castable(from, ty)
            {
                return Err(SqlError::new(pos, format!("Cast of {from} to {ty} is not supported")));
            }
            Expr { node: Node::Cast { expr: Box::new(inner), ty: ty.clone() }, ty: Some(ty.clone()) }
        }
        ExprKind::Function { name, args, star } => {
            if crate::aggregate::is_aggregate(&name.name) {
                return Err(SqlError::new(
                    pos,
                    format!(
                        "Aggregate function {} is not allowed here: use it in the projection or HAVING of a GROUP BY query",
                        name.name
                    ),
                ));
            }
            if *star {
                return Err(SqlError::new(pos, format!("{}(*) is only valid for COUNT", name.name)));
            }
            let args = args.iter().map(c).collect::<Result<Vec<_>, _>>()?;
            let types: Vec<Option<SqlType>> = args.iter().map(|a| a.ty.clone()).collect();
            let resolved = functions::resolve(&name.name, &types)
                .ok_or_else(|| {
                    SqlError::new(name.pos, format!("Can't find any functions with the name '{}'", name.name))
                })?
                .map_err(|m| SqlError::new(pos, m))?;
            let mut args = args;
            for (a, t) in args.iter_mut().zip(&resolved.params) {
                convert(a, t);
            }
            let ty = Some(resolved.ret.clone());
            Expr { node: Node::Call { function: resolved, args }, ty }
        }
        ExprKind::Dereference { expr, field } => {
            let inner = c(expr)?;
            match &inner.ty {
                Some(SqlType::Struct(fields)) => {
                    let index = fields.iter().position(|(n, _)| *n == field.name).ok_or_else(|| {
                        SqlError::new(
                            field.pos,
                            format!("Could not find field '{}' in '{}'.", field.name, render(expr)),
                        )
                    })?;
                    let ty = Some(fields[index].1.clone());
                    Expr { node: Node::Field { expr: Box::new(inner), index }, ty }
                }
                other => {
                    return Err(SqlError::new(
                        pos,
                        format!("Can't dereference a field of {}: not a STRUCT", ty_name(other)),
                    ));
                }
            }
        }
        ExprKind::Subscript { expr, index } => {
            let (x, i) = (c(expr)?, c(index)?);
            let ty = match &x.ty {
                Some(SqlType::Array(item)) => {
                    if !matches!(i.ty, Some(SqlType::Int | SqlType::Bigint) | None) {
                        return Err(SqlError::new(index.pos, "Array index must be an INT"));
                    }
                    Some((**item).clone())
                }
                Some(SqlType::Map(_, v)) => Some((**v).clone()),
                other => return Err(SqlError::new(pos, format!("Can't subscript {}", ty_name(other)))),
            };
            Expr { node: Node::Subscript { expr: Box::new(x), index: Box::new(i) }, ty }
        }
        ExprKind::Array(items) => {
            let mut compiled = items.iter().map(c).collect::<Result<Vec<_>, _>>()?;
            let mut ty = None;
            for (item, ast) in compiled.iter().zip(items) {
                ty = unify(ty, &item.ty, ast.pos, "ARRAY element")?;
            }
            let ty = ty.ok_or_else(|| SqlError::new(pos, "Cannot construct an array with all NULL elements"))?;
            for item in &mut compiled {
                convert(item, &ty);
            }
            Expr { node: Node::Array(compiled), ty: Some(SqlType::Array(Box::new(ty))) }
        }
        ExprKind::Map(entries) => {
            let mut kt = None;
            let mut vt = None;
            let mut compiled = Vec::new();
            for (k, v) in entries {
                let (ck, cv) = (c(k)?, c(v)?);
                kt = unify(kt, &ck.ty, k.pos, "MAP key")?;
                vt = unify(vt, &cv.ty, v.pos, "MAP value")?;
                compiled.push((ck, cv));
            }
            let (Some(kt), Some(vt)) = (kt, vt) else {
                return Err(SqlError::new(pos, "Cannot construct a map with all NULL keys or values"));
            };
            for (k, v) in &mut compiled {
                convert(k, &kt);
                convert(v, &vt);
            }
            Expr { node: Node::Map(compiled), ty: Some(SqlType::Map(Box::new(kt), Box::new(vt))) }
        }
        ExprKind::Struct(fields) => {
            let mut compiled = Vec::new();
            let mut types = Vec::new();
            for (name, v) in fields {
                let cv = c(v)?;
                let t = cv.ty.clone().unwrap_or(SqlType::String);
                types.push((name.name.clone(), t));
                compiled.push((name.name.clone(), cv));
            }
            Expr { node: Node::Struct(compiled), ty: Some(SqlType::Struct(types)) }
        }
        ExprKind::Lambda { .. } => {
            return Err(SqlError::new(pos, "Lambda expressions are only supported as arguments of lambda functions"));
        }
    })
}

/// ksqlDB reads a string compared with `ROWTIME`, `WINDOWSTART` or `WINDOWEND` as a timestamp.
fn magic_timestamp(column: &ast::Expr, other: &mut Expr) -> Result<(), SqlError> {
    let ExprKind::Column { name, .. } = &column.kind else { return Ok(()) };
    if !matches!(name.name.as_str(), "ROWTIME" | "WINDOWSTART" | "WINDOWEND") {
        return Ok(());
    }
    if let Node::Literal(Value::String(text)) = &other.node {
        let ms = value::parse_timestamp(text).map_err(|m| SqlError::new(column.pos, m))?;
        *other = Expr { node: Node::Literal(Value::Bigint(ms)), ty: Some(SqlType::Bigint) };
    }
    Ok(())
}

fn cond_pos(_whens: &[(ast::Expr, ast::Expr)], _cond: &Expr, pos: Pos) -> Pos {
    pos
}

/// A SQL rendering of an expression, for messages.
pub fn render(e: &ast::Expr) -> String {
    e.to_string()
}

fn expect_boolean(e: &Expr, pos: Pos, what: &str) -> Result<(), SqlError> {
    match &e.ty {
        Some(SqlType::Boolean) | None => Ok(()),
        Some(t) => Err(SqlError::new(pos, format!("{what} expects a BOOLEAN expression, but got {t}"))),
    }
}

/// The common type of two branches (`None` while only NULLs have been seen).
fn unify(acc: Option<SqlType>, next: &Option<SqlType>, pos: Pos, what: &str) -> Result<Option<SqlType>, SqlError> {
    Ok(match (acc, next) {
        (None, t) => t.clone(),
        (Some(a), None) => Some(a),
        (Some(a), Some(b)) => Some(functions::common_type(&a, b).ok_or_else(|| {
            SqlError::new(pos, format!("Invalid {what}: all results must have the same type, but found {a} and {b}"))
        })?),
    })
}

/// Wrap an expression in an implicit conversion to `to` when its type differs.
fn convert(e: &mut Expr, to: &SqlType) {
    if e.ty.as_ref() == Some(to) {
        return;
    }
    let inner = std::mem::replace(e, Expr { node: Node::Literal(Value::Null), ty: None });
    *e = Expr { node: Node::Cast { expr: Box::new(inner), ty: to.clone() }, ty: Some(to.clone()) };
}

fn castable(from: &SqlType, to: &SqlType) -> bool {
    use SqlType::*;
    if from == to {
        return true;
    }
    match (from, to) {
        (_, String) => !matches!(from, Bytes),
        (String, _) => !matches!(to, Array(_) | Map(..) | Struct(_) | Bytes),
        (a, b) if a.is_numeric() && b.is_numeric() => true,
        (Timestamp, Date | Time) | (Date, Timestamp) => true,
        (Array(a), Array(b)) => castable(a, b),
        (Map(k1, v1), Map(k2, v2)) => castable(k1, k2) && castable(v1, v2),
        (Struct(_), Struct(_)) => true,
        _ => false,
    }
}

fn comparable(a: &SqlType, b: &SqlType) -> bool {
    use SqlType::*;
    (a.is_numeric() && b.is_numeric())
        || a == b
        || matches!(
            (a, b),
            (Timestamp, String)
                | (String, Timestamp)
                | (Date, String)
                | (String, Date)
                | (Time, String)
                | (String, Time)
        )
        || matches!((a, b), (Timestamp | Date, Timestamp | Date))
}

fn check_comparable(l: &Expr, r: &Expr, pos: Pos, op: &str) -> Result<(), SqlError> {
    if let (Some(a), Some(b)) = (&l.ty, &r.ty)
        && !comparable(a, b)
    {
        return Err(SqlError::new(pos, format!("Cannot compare {a} to {b} with {op}.")));
    }
    Ok(())
}

fn binary(op: BinaryOp, mut l: Expr, mut r: Expr, pos: Pos) -> Result<Expr, SqlError> {
    let bx = Box::new;
    Ok(match op {
        BinaryOp::And | BinaryOp::Or => {
            expect_boolean(&l, pos, op.as_str())?;
            expect_boolean(&r, pos, op.as_str())?;
            let node = if op == BinaryOp::And { Node::And(bx(l), bx(r)) } else { Node::Or(bx(l), bx(r)) };
            Expr { node, ty: Some(SqlType::Boolean) }
        }
        BinaryOp::Eq | BinaryOp::NotEq | BinaryOp::Lt | BinaryOp::LtEq | BinaryOp::Gt | BinaryOp::GtEq => {
            check_comparable(&l, &r, pos, op.as_str())?;
            if let (Some(a), Some(b)) = (&l.ty, &r.ty)
                && matches!(a, SqlType::Array(_) | SqlType::Map(..) | SqlType::Struct(_) | SqlType::Boolean)
                && !matches!(op, BinaryOp::Eq | BinaryOp::NotEq)
            {
                let _ = b;
                return Err(SqlError::new(pos, format!("Cannot compare {a} to {b} with {}.", op.as_str())));
            }
            let cmp = match op {
                BinaryOp::Eq => Cmp::Eq,
                BinaryOp::NotEq => Cmp::Ne,
                BinaryOp::Lt => Cmp::Lt,
                BinaryOp::LtEq => Cmp::Le,
                BinaryOp::Gt => Cmp::Gt,
                _ => Cmp::Ge,
            };
            Expr { node: Node::Compare { op: cmp, left: bx(l), right: bx(r) }, ty: Some(SqlType::Boolean) }
        }
        BinaryOp::Concat => {
            for side in [&l, &r] {
                if let Some(t) = &side.ty
                    && *t != SqlType::String
                {
                    return Err(SqlError::new(pos, format!("|| requires STRING operands, not {t}")));
                }
            }
            Expr { node: Node::Concat(bx(l), bx(r)), ty: Some(SqlType::String) }
        }
        BinaryOp::Add | BinaryOp::Subtract | BinaryOp::Multiply | BinaryOp::Divide | BinaryOp::Modulo => {
            let arith = match op {
                BinaryOp::Add => Arith::Add,
                BinaryOp::Subtract => Arith::Sub,
                BinaryOp::Multiply => Arith::Mul,
                BinaryOp::Divide => Arith::Div,
                _ => Arith::Mod,
            };
            if arith == Arith::Add && (l.ty == Some(SqlType::String) || r.ty == Some(SqlType::String)) {
                if l.ty.as_ref().is_some_and(|t| *t != SqlType::String)
                    || r.ty.as_ref().is_some_and(|t| *t != SqlType::String)
                {
                    return Err(SqlError::new(
                        pos,
                        format!(
                            "Error processing expression: Unsupported arithmetic types. {} {}",
                            ty_name(&l.ty),
                            ty_name(&r.ty)
                        ),
                    ));
                }
                return Ok(Expr { node: Node::Concat(bx(l), bx(r)), ty: Some(SqlType::String) });
            }
            let ty = match (&l.ty, &r.ty) {
                (None, None) => None,
                (Some(t), None) | (None, Some(t)) if t.is_numeric() => Some(t.clone()),
                (Some(a), Some(b)) if a.is_numeric() && b.is_numeric() => Some(arith_type(arith, a, b)),
                _ => {
                    return Err(SqlError::new(
                        pos,
                        format!(
                            "Error processing expression: Unsupported arithmetic types. {} {}",
                            ty_name(&l.ty),
                            ty_name(&r.ty)
                        ),
                    ));
                }
            };
            // Operands are converted to the operation's type (decimals: to a decimal of their own
            // precision, the result is rescaled after the operation).
            if let Some(t) = &ty {
                match t {
                    SqlType::Decimal { .. } => {
                        for side in [&mut l, &mut r] {
                            if let Some(st) = side.ty.clone()
                                && !matches!(st, SqlType::Decimal { .. })
                                && let Some((p, s)) = functions::decimal_shape(&st)
                            {
                                convert(side, &SqlType::Decimal { precision: p, scale: s });
                            }
                        }
                    }
                    t => {
                        convert(&mut l, t);
                        convert(&mut r, t);
                    }
                }
            }
            Expr { node: Node::Arith { op: arith, left: bx(l), right: bx(r) }, ty }
        }
    })
}

/// The result type of arithmetic, per ksqlDB (decimal precision and scale as SQL Server does).
pub fn arith_type(op: Arith, a: &SqlType, b: &SqlType) -> SqlType {
    use SqlType::*;
    match (a, b) {
        (Double, _) | (_, Double) => Double,
        (Decimal { .. }, _) | (_, Decimal { .. }) => {
            let (p1, s1) = functions::decimal_shape(a).unwrap_or((38, 0));
            let (p2, s2) = functions::decimal_shape(b).unwrap_or((38, 0));
            let (p1, s1, p2, s2) = (i32::from(p1), i32::from(s1), i32::from(p2), i32::from(s2));
            let (p, s) = match op {
                Arith::Add | Arith::Sub => {
                    let s = s1.max(s2);
                    ((p1 - s1).max(p2 - s2) + s + 1, s)
                }
                Arith::Mul => (p1 + p2 + 1, s1 + s2),
                Arith::Div => {
                    let s = 6.max(s1 + p2 + 1);
                    (p1 - s1 + s2 + s, s)
                }
                Arith::Mod => {
                    let s = s1.max(s2);
                    ((p1 - s1).min(p2 - s2) + s, s)
                }
            };
            let p = p.clamp(1, 38);
            Decimal { precision: p as u8, scale: s.clamp(0, p) as u8 }
        }
        (Bigint, _) | (_, Bigint) => Bigint,
        _ => Int,
    }
}

/// Build the regular expression for a LIKE pattern (`%`, `_`, and the escape character).
pub fn like_regex(pattern: &str, escape: Option<char>) -> Regex {
    let mut re = String::from("(?s)^");
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        if Some(ch) == escape {
            if let Some(next) = chars.next() {
                re.push_str(&regex::escape(&next.to_string()));
            }
            continue;
        }
        match ch {
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            other => re.push_str(&regex::escape(&other.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).unwrap_or_else(|_| Regex::new("^$").expect("static regex"))
}

/// Why an evaluation produced no value (ksqlDB logs these and uses NULL).
pub type EvalError = String;

impl Expr {
    /// Evaluate over a row of the scope this was compiled against.
    pub fn eval(&self, row: &[Value]) -> Result<Value, EvalError> {
        Ok(match &self.node {
            Node::Column(i) => row.get(*i).cloned().unwrap_or(Value::Null),
            Node::Literal(v) => v.clone(),
            Node::Neg(e) => match e.eval(row)? {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::Bigint(i) => Value::Bigint(i.wrapping_neg()),
                Value::Double(d) => Value::Double(-d),
                Value::Decimal(d) => Value::Decimal(-d),
                _ => Value::Null,
            },
            Node::Arith { op, left, right } => {
                let (l, r) = (left.eval(row)?, right.eval(row)?);
                if l.is_null() || r.is_null() {
                    return Ok(Value::Null);
                }
                arithmetic(*op, &l, &r, self.ty.as_ref())?
            }
            Node::Concat(l, r) => match (l.eval(row)?, r.eval(row)?) {
                (Value::String(a), Value::String(b)) => Value::String(a + &b),
                _ => Value::Null,
            },
            Node::Compare { op, left, right } => {
                let (l, r) = (left.eval(row)?, right.eval(row)?);
                if l.is_null() || r.is_null() {
                    // ksqlDB: a comparison with NULL is false, not unknown.
                    return Ok(Value::Boolean(false));
                }
                let result = match op {
                    Cmp::Eq => value::equal(&l, &r),
                    Cmp::Ne => !value::equal(&l, &r),
                    _ => {
                        let Some(o) = value::compare(&l, &r) else { return Ok(Value::Boolean(false)) };
                        match op {
                            Cmp::Lt => o == Ordering::Less,
                            Cmp::Le => o != Ordering::Greater,
                            Cmp::Gt => o == Ordering::Greater,
                            _ => o != Ordering::Less,
                        }
                    }
                };
                Value::Boolean(result)
            }
            Node::And(l, r) => match l.eval(row)? {
                Value::Boolean(false) => Value::Boolean(false),
                lv => match (lv, r.eval(row)?) {
                    (_, Value::Boolean(false)) => Value::Boolean(false),
                    (Value::Boolean(true), Value::Boolean(true)) => Value::Boolean(true),
                    _ => Value::Null,
                },
            },
            Node::Or(l, r) => match l.eval(row)? {
                Value::Boolean(true) => Value::Boolean(true),
                lv => match (lv, r.eval(row)?) {
                    (_, Value::Boolean(true)) => Value::Boolean(true),
                    (Value::Boolean(false), Value::Boolean(false)) => Value::Boolean(false),
                    _ => Value::Null,
                },
            },
            Node::Not(e) => match e.eval(row)? {
                Value::Boolean(b) => Value::Boolean(!b),
                _ => Value::Null,
            },
            Node::IsNull { expr, negated } => Value::Boolean(expr.eval(row)?.is_null() != *negated),
            Node::IsDistinct { left, right, negated } => {
                let same = value::null_safe_equal(&left.eval(row)?, &right.eval(row)?);
                Value::Boolean(same == *negated)
            }
            Node::Between { expr, low, high, negated } => {
                let (x, lo, hi) = (expr.eval(row)?, low.eval(row)?, high.eval(row)?);
                if x.is_null() || lo.is_null() || hi.is_null() {
                    return Ok(Value::Boolean(false));
                }
                let inside = value::compare(&x, &lo).is_some_and(|o| o != Ordering::Less)
                    && value::compare(&x, &hi).is_some_and(|o| o != Ordering::Greater);
                Value::Boolean(inside != *negated)
            }
            Node::In { expr, list, negated } => {
                let x = expr.eval(row)?;
                if x.is_null() {
                    return Ok(Value::Boolean(false));
                }
                let mut found = false;
                for item in list {
                    let v = item.eval(row)?;
                    if !v.is_null() && value::equal(&x, &v) {
                        found = true;
                        break;
                    }
                }
                Value::Boolean(found != *negated)
            }
            Node::Like { expr, pattern, compiled, escape, negated } => {
                let x = expr.eval(row)?;
                let Value::String(s) = x else { return Ok(Value::Boolean(false)) };
                let matched = match compiled {
                    Some(re) => re.is_match(&s),
                    None => match pattern.eval(row)? {
                        Value::String(p) => like_regex(&p, *escape).is_match(&s),
                        _ => return Ok(Value::Null),
                    },
                };
                Value::Boolean(matched != *negated)
            }
            Node::Case { operand, whens, otherwise } => {
                let subject = operand.as_ref().map(|o| o.eval(row)).transpose()?;
                for (cond, result) in whens {
                    let c = cond.eval(row)?;
                    let hit = match &subject {
                        Some(s) => !s.is_null() && !c.is_null() && value::equal(s, &c),
                        None => c.is_true(),
                    };
                    if hit {
                        return result.eval(row);
                    }
                }
                match otherwise {
                    Some(o) => o.eval(row)?,
                    None => Value::Null,
                }
            }
            Node::Cast { expr, ty } => value::cast(&expr.eval(row)?, ty)?,
            Node::Call { function, args } => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(a.eval(row)?);
                }
                if function.null_in_null_out && values.iter().any(Value::is_null) {
                    return Ok(Value::Null);
                }
                (function.eval)(&values, &function.ret)?
            }
            Node::Field { expr, index } => match expr.eval(row)? {
                Value::Struct(fields) => fields.into_iter().nth(*index).map(|(_, v)| v).unwrap_or(Value::Null),
                _ => Value::Null,
            },
            Node::Subscript { expr, index } => match (expr.eval(row)?, index.eval(row)?) {
                (Value::Array(items), i) => {
                    let Some(i) = i.as_i64() else { return Ok(Value::Null) };
                    let n = items.len() as i64;
                    // 1-based; negative counts from the end.
                    let at = if i > 0 { i - 1 } else { n + i };
                    if (0..n).contains(&at) { items[at as usize].clone() } else { Value::Null }
                }
                (Value::Map(entries), k) => entries
                    .into_iter()
                    .find(|(key, _)| value::null_safe_equal(key, &k))
                    .map(|(_, v)| v)
                    .unwrap_or(Value::Null),
                _ => Value::Null,
            },
            Node::Array(items) => Value::Array(items.iter().map(|i| i.eval(row)).collect::<Result<_, _>>()?),
            Node::Map(entries) => {
                let mut out: Vec<(Value, Value)> = Vec::new();
                for (k, v) in entries {
                    let (k, v) = (k.eval(row)?, v.eval(row)?);
                    out.retain(|(existing, _)| !value::null_safe_equal(existing, &k));
                    out.push((k, v));
                }
                Value::Map(out)
            }
            Node::Struct(fields) => Value::Struct(
                fields.iter().map(|(n, e)| Ok((n.clone(), e.eval(row)?))).collect::<Result<_, EvalError>>()?,
            ),
        })
    }
}

fn arithmetic(op: Arith, l: &Value, r: &Value, ty: Option<&SqlType>) -> Result<Value, EvalError> {
    Ok(match ty {
        Some(SqlType::Int) => {
            let (a, b) = (l.as_i64().unwrap_or_default() as i32, r.as_i64().unwrap_or_default() as i32);
            Value::Int(match op {
                Arith::Add => a.wrapping_add(b),
                Arith::Sub => a.wrapping_sub(b),
                Arith::Mul => a.wrapping_mul(b),
                Arith::Div => a.checked_div(b).ok_or("/ by zero")?,
                Arith::Mod => a.checked_rem(b).ok_or("/ by zero")?,
            })
        }
        Some(SqlType::Bigint) => {
            let (a, b) = (l.as_i64().unwrap_or_default(), r.as_i64().unwrap_or_default());
            Value::Bigint(match op {
                Arith::Add => a.wrapping_add(b),
                Arith::Sub => a.wrapping_sub(b),
                Arith::Mul => a.wrapping_mul(b),
                Arith::Div => a.checked_div(b).ok_or("/ by zero")?,
                Arith::Mod => a.checked_rem(b).ok_or("/ by zero")?,
            })
        }
        Some(SqlType::Decimal { precision, scale }) => {
            let (a, b) = (l.as_decimal().unwrap_or_default(), r.as_decimal().unwrap_or_default());
            let v = match op {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
                Arith::Div => {
                    if b.is_zero() {
                        return Err("Division by zero".into());
                    }
                    a.with_scale(i64::from(*scale) + 40) / b
                }
                Arith::Mod => {
                    if b.is_zero() {
                        return Err("Division by zero".into());
                    }
                    a % b
                }
            };
            if !value::fits(&v, *precision, *scale) {
                return Err(format!("Numeric field overflow: DECIMAL({precision}, {scale})"));
            }
            Value::Decimal(value::rescale(&v, *scale))
        }
        _ => {
            let (a, b) = (l.as_f64().unwrap_or_default(), r.as_f64().unwrap_or_default());
            Value::Double(match op {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
                Arith::Div => a / b,
                Arith::Mod => a % b,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        let mut s = Scope::default();
        s.push(Some("T"), "A", SqlType::Int);
        s.push(Some("T"), "B", SqlType::String);
        s.push(Some("T"), "C", SqlType::Double);
        s
    }

    fn eval(sql: &str, row: &[Value]) -> Value {
        let e = sluice_sql::parse_expression(sql).unwrap();
        compile(&e, &scope()).unwrap().eval(row).unwrap_or(Value::Null)
    }

    #[test]
    fn evaluates() {
        let row = [Value::Int(7), Value::String("hello".into()), Value::Double(1.5)];
        assert_eq!(eval("A / 2", &row), Value::Int(3));
        assert_eq!(eval("A + C", &row), Value::Double(8.5));
        assert_eq!(eval("B LIKE 'h%o'", &row), Value::Boolean(true));
        assert_eq!(eval("CASE WHEN A > 5 THEN 'big' ELSE 'small' END", &row), Value::String("big".into()));
        assert_eq!(eval("A IN (1, 7)", &row), Value::Boolean(true));
        assert_eq!(eval("A / 0", &row), Value::Null);
        assert_eq!(eval("NULL IS NULL", &row), Value::Boolean(true));
        assert_eq!(eval("A * 1.5", &row).as_f64(), Some(10.5));
    }

    #[test]
    fn rejects_with_positions() {
        let e = sluice_sql::parse_expression("A + B").unwrap();
        assert!(compile(&e, &scope()).is_err());
        let e = sluice_sql::parse_expression("nope = 1").unwrap();
        let err = compile(&e, &scope()).unwrap_err();
        assert!(err.message.contains("NOPE"), "{err}");
    }
}
