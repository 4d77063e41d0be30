//! The syntax tree of the ksqlDB dialect.
//!
//! `Display` prints SQL that parses back to an equal tree (the parser's round-trip property);
//! expressions are printed fully parenthesised so that precedence never changes meaning.

use std::fmt::{self, Display, Formatter, Write};

use crate::{error::Pos, types::SqlType};

/// A name: upper-cased when written bare, kept as written when quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    /// The resolved name (`foo` → `FOO`, `` `foo` `` → `foo`).
    pub name: String,
    /// Where it was written.
    pub pos: Pos,
}

impl Ident {
    /// A name as ksqlDB resolves it (no upper-casing: pass the resolved name).
    pub fn new(name: impl Into<String>) -> Self {
        Ident { name: name.into(), pos: Pos::default() }
    }
}

impl Display for Ident {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        // Quote whenever bare text would not read back as the same name.
        let bare = !self.name.is_empty()
            && self.name.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            && self.name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !crate::parser::is_reserved(&self.name);
        if bare { f.write_str(&self.name) } else { write!(f, "`{}`", self.name.replace('`', "``")) }
    }
}

/// A statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE STREAM|TABLE name (columns) WITH (...)`.
    CreateSource(CreateSource),
    /// `CREATE STREAM|TABLE name [WITH (...)] AS SELECT ...`.
    CreateAsSelect(CreateAsSelect),
    /// `INSERT INTO name [WITH (...)] SELECT ...`.
    InsertInto(InsertInto),
    /// A bare `SELECT`: a pull query, or a push query with `EMIT CHANGES`.
    Query(Query),
    /// `SHOW STREAMS|TABLES|QUERIES|TOPICS|PROPERTIES`.
    Show(ShowKind),
    /// `DESCRIBE name [EXTENDED]`.
    Describe {
        /// The stream or table.
        name: Ident,
        /// `EXTENDED`.
        extended: bool,
    },
    /// `EXPLAIN <statement>` or `EXPLAIN <query id>`.
    Explain(Explain),
    /// `DROP STREAM|TABLE [IF EXISTS] name [DELETE TOPIC]`.
    Drop {
        /// Stream or table.
        kind: SourceKind,
        /// The name.
        name: Ident,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `DELETE TOPIC`.
        delete_topic: bool,
    },
    /// `SET 'name' = 'value'`.
    SetProperty {
        /// Property name.
        name: String,
        /// Value.
        value: String,
    },
    /// `UNSET 'name'`.
    UnsetProperty {
        /// Property name.
        name: String,
    },
    /// `TERMINATE query_id` / `TERMINATE ALL`.
    Terminate {
        /// The query id; `None` for `ALL`.
        query: Option<Ident>,
    },
}

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ShowKind {
    Streams,
    Tables,
    Queries,
    Topics,
    Properties,
    Functions,
}

/// What `EXPLAIN` explains.
#[derive(Debug, Clone, PartialEq)]
pub enum Explain {
    /// A statement (its plan is shown, nothing runs).
    Statement(Box<Statement>),
    /// A running query by id.
    QueryId(Ident),
}

/// Stream or table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An unbounded sequence of events.
    Stream,
    /// A changelog: the latest value per key.
    Table,
}

impl Display for SourceKind {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        })
    }
}

/// `WITH (name = value, ...)`: names upper-cased, values literals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties(pub Vec<Property>);

/// One `WITH` property.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    /// Upper-cased name (`KAFKA_TOPIC`).
    pub name: String,
    /// Its value.
    pub value: Literal,
    /// Where it was written.
    pub pos: Pos,
}

impl Properties {
    /// The value of a property, by upper-cased name.
    pub fn get(&self, name: &str) -> Option<&Property> {
        self.0.iter().find(|p| p.name == name)
    }
}

/// `CREATE [OR REPLACE] [SOURCE] STREAM|TABLE [IF NOT EXISTS] name (elements) WITH (...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSource {
    /// Stream or table.
    pub kind: SourceKind,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `SOURCE` (read-only, materialized for pull queries).
    pub source: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// The name.
    pub name: Ident,
    /// Columns (may be empty when a schema registry supplies them).
    pub elements: Vec<TableElement>,
    /// `WITH` properties.
    pub properties: Properties,
    /// Where the statement starts.
    pub pos: Pos,
}

/// A column definition.
#[derive(Debug, Clone, PartialEq)]
pub struct TableElement {
    /// Column name.
    pub name: Ident,
    /// Its type.
    pub ty: SqlType,
    /// `KEY`, `PRIMARY KEY`, `HEADERS`, `HEADER('k')`, or none.
    pub constraint: ColumnConstraint,
}

/// Column role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnConstraint {
    /// A value column.
    None,
    /// A stream's key column.
    Key,
    /// A table's primary key column.
    PrimaryKey,
    /// All headers, as `ARRAY<STRUCT<KEY STRING, VALUE BYTES>>`.
    Headers,
    /// One header's value (`BYTES`).
    Header(String),
}

/// `CREATE ... AS SELECT`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateAsSelect {
    /// Stream or table.
    pub kind: SourceKind,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// The sink's name.
    pub name: Ident,
    /// `WITH` properties of the sink.
    pub properties: Properties,
    /// The query.
    pub query: Query,
    /// Where the statement starts.
    pub pos: Pos,
}

/// `INSERT INTO name [WITH (...)] SELECT ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct InsertInto {
    /// The stream written.
    pub target: Ident,
    /// `WITH` properties (e.g. `QUERY_ID`).
    pub properties: Properties,
    /// The query.
    pub query: Query,
    /// Where the statement starts.
    pub pos: Pos,
}

/// A `SELECT`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The projection.
    pub select: Vec<SelectItem>,
    /// `FROM` (with joins).
    pub from: Relation,
    /// `WINDOW`.
    pub window: Option<WindowExpr>,
    /// `WHERE`.
    pub filter: Option<Expr>,
    /// `GROUP BY`.
    pub group_by: Vec<Expr>,
    /// `PARTITION BY`.
    pub partition_by: Vec<Expr>,
    /// `HAVING`.
    pub having: Option<Expr>,
    /// `EMIT CHANGES` / `EMIT FINAL`.
    pub emit: Option<Emit>,
    /// `LIMIT`.
    pub limit: Option<u64>,
    /// Where `SELECT` is.
    pub pos: Pos,
}

/// `EMIT` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// Every change.
    Changes,
    /// Once per window, when it closes.
    Final,
}

/// One projection item.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*` or `source.*`.
    Wildcard {
        /// The source, for `source.*`.
        qualifier: Option<Ident>,
        /// Where it was written.
        pos: Pos,
    },
    /// An expression with an optional alias.
    Expr {
        /// The expression.
        expr: Expr,
        /// `AS alias`.
        alias: Option<Ident>,
    },
}

/// `FROM` clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Relation {
    /// A stream or table, with an alias.
    Source {
        /// Its name.
        name: Ident,
        /// Alias.
        alias: Option<Ident>,
    },
    /// A join.
    Join(Box<Join>),
}

/// `left [kind] JOIN right [WITHIN ...] ON condition`.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// Left side (itself possibly a join).
    pub left: Relation,
    /// Right side: a source.
    pub right: Relation,
    /// Inner, left, right or full outer.
    pub kind: JoinKind,
    /// `WITHIN` (stream–stream joins).
    pub within: Option<Within>,
    /// `ON` condition.
    pub on: Expr,
    /// Where the join keyword is.
    pub pos: Pos,
}

/// Join kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
}

/// `WITHIN n unit [GRACE PERIOD n unit]` or `WITHIN (before, after) ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Within {
    /// How far the right side may be before the left.
    pub before: Duration,
    /// How far after.
    pub after: Duration,
    /// `GRACE PERIOD`.
    pub grace: Option<Duration>,
}

/// A duration with a time unit, as written (`60 SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration {
    /// The number.
    pub value: i64,
    /// The unit.
    pub unit: TimeUnit,
}

impl Duration {
    /// In milliseconds (saturating).
    pub fn millis(self) -> i64 {
        self.value.saturating_mul(self.unit.millis())
    }
}

/// Time units of window and `WITHIN` clauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum TimeUnit {
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
    Days,
}

impl TimeUnit {
    /// Milliseconds in one unit.
    pub fn millis(self) -> i64 {
        match self {
            TimeUnit::Milliseconds => 1,
            TimeUnit::Seconds => 1_000,
            TimeUnit::Minutes => 60_000,
            TimeUnit::Hours => 3_600_000,
            TimeUnit::Days => 86_400_000,
        }
    }
}

/// `WINDOW ...`.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowExpr {
    /// Fixed, non-overlapping windows.
    Tumbling {
        /// Window size.
        size: Duration,
        /// Options.
        options: WindowOptions,
    },
    /// Fixed windows that advance by less than their size.
    Hopping {
        /// Window size.
        size: Duration,
        /// Advance.
        advance: Duration,
        /// Options.
        options: WindowOptions,
    },
    /// Activity sessions separated by a gap.
    Session {
        /// Inactivity gap.
        gap: Duration,
        /// Options.
        options: WindowOptions,
    },
}

/// `RETENTION` and `GRACE PERIOD`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowOptions {
    /// How long closed windows are kept for queries.
    pub retention: Option<Duration>,
    /// How late a record may arrive after its window ends.
    pub grace: Option<Duration>,
}

/// An expression with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it starts.
    pub pos: Pos,
}

impl Expr {
    /// An expression at no particular position.
    pub fn new(kind: ExprKind) -> Self {
        Expr { kind, pos: Pos::default() }
    }

    /// The operands, in order.
    pub fn children(&self) -> Vec<&Expr> {
        match &self.kind {
            ExprKind::Column { .. } | ExprKind::Literal(_) => Vec::new(),
            ExprKind::Unary { expr, .. }
            | ExprKind::Not(expr)
            | ExprKind::IsNull { expr, .. }
            | ExprKind::Cast { expr, .. }
            | ExprKind::Dereference { expr, .. }
            | ExprKind::Lambda { body: expr, .. } => vec![expr],
            ExprKind::Binary { left, right, .. } | ExprKind::IsDistinctFrom { left, right, .. } => vec![left, right],
            ExprKind::Between { expr, low, high, .. } => vec![expr, low, high],
            ExprKind::InList { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
            ExprKind::Like { expr, pattern, .. } => vec![expr, pattern],
            ExprKind::Case { operand, whens, otherwise } => operand
                .iter()
                .map(|e| &**e)
                .chain(whens.iter().flat_map(|(w, t)| [w, t]))
                .chain(otherwise.iter().map(|e| &**e))
                .collect(),
            ExprKind::Function { args, .. } | ExprKind::Array(args) => args.iter().collect(),
            ExprKind::Subscript { expr, index } => vec![expr, index],
            ExprKind::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
            ExprKind::Struct(fields) => fields.iter().map(|(_, v)| v).collect(),
        }
    }

    /// The depth of the tree (a column or literal is 1), measured without recursion, so that
    /// even a tree too deep to walk recursively can be measured.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1)];
        while let Some((e, d)) = stack.pop() {
            deepest = deepest.max(d);
            stack.extend(e.children().into_iter().map(|c| (c, d + 1)));
        }
        deepest
    }
}

/// Expression kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A column, possibly qualified by a source or alias.
    Column {
        /// `source.` qualifier.
        qualifier: Option<Ident>,
        /// Column name.
        name: Ident,
    },
    /// A literal.
    Literal(Literal),
    /// `-x`, `+x`.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// Operand.
        expr: Box<Expr>,
    },
    /// Arithmetic, comparison, logic.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// `NOT x`.
    Not(Box<Expr>),
    /// `x IS [NOT] NULL`.
    IsNull {
        /// Operand.
        expr: Box<Expr>,
        /// `IS NOT NULL`.
        negated: bool,
    },
    /// `x IS [NOT] DISTINCT FROM y`.
    IsDistinctFrom {
        /// Left.
        left: Box<Expr>,
        /// Right.
        right: Box<Expr>,
        /// `IS NOT DISTINCT FROM`.
        negated: bool,
    },
    /// `x [NOT] BETWEEN low AND high`.
    Between {
        /// Operand.
        expr: Box<Expr>,
        /// Lower bound (inclusive).
        low: Box<Expr>,
        /// Upper bound (inclusive).
        high: Box<Expr>,
        /// `NOT BETWEEN`.
        negated: bool,
    },
    /// `x [NOT] IN (a, b, ...)`.
    InList {
        /// Operand.
        expr: Box<Expr>,
        /// Candidates.
        list: Vec<Expr>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `x [NOT] LIKE pattern [ESCAPE 'c']`.
    Like {
        /// Operand.
        expr: Box<Expr>,
        /// Pattern (`%` any run, `_` one character).
        pattern: Box<Expr>,
        /// Escape character.
        escape: Option<char>,
        /// `NOT LIKE`.
        negated: bool,
    },
    /// `CASE [operand] WHEN ... THEN ... [ELSE ...] END`.
    Case {
        /// Simple-case operand.
        operand: Option<Box<Expr>>,
        /// `WHEN condition THEN result` pairs.
        whens: Vec<(Expr, Expr)>,
        /// `ELSE`.
        otherwise: Option<Box<Expr>>,
    },
    /// `CAST(x AS type)`.
    Cast {
        /// Operand.
        expr: Box<Expr>,
        /// Target type.
        ty: SqlType,
    },
    /// A function call; `COUNT(*)` has `star`.
    Function {
        /// Upper-cased name.
        name: Ident,
        /// Arguments.
        args: Vec<Expr>,
        /// `f(*)`.
        star: bool,
    },
    /// `x->field`.
    Dereference {
        /// Struct.
        expr: Box<Expr>,
        /// Field.
        field: Ident,
    },
    /// `x[index]`.
    Subscript {
        /// Array or map.
        expr: Box<Expr>,
        /// Index or key.
        index: Box<Expr>,
    },
    /// `ARRAY[a, b]`.
    Array(Vec<Expr>),
    /// `MAP(k := v, ...)`.
    Map(Vec<(Expr, Expr)>),
    /// `STRUCT(name := v, ...)`.
    Struct(Vec<(Ident, Expr)>),
    /// `x => body`, `(x, y) => body`.
    Lambda {
        /// Parameters.
        params: Vec<Ident>,
        /// Body.
        body: Box<Expr>,
    },
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Minus,
    Plus,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Modulo,
    Concat,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

impl BinaryOp {
    /// The operator's SQL text.
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Subtract => "-",
            BinaryOp::Multiply => "*",
            BinaryOp::Divide => "/",
            BinaryOp::Modulo => "%",
            BinaryOp::Concat => "||",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
        }
    }
}

/// Literals. Numbers keep their text: ksqlDB types `1` as INT, `10000000000` as BIGINT, `1.5` as
/// DECIMAL(2,1) and `1.5E0` as DOUBLE.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `NULL`.
    Null,
    /// `TRUE`, `FALSE`.
    Boolean(bool),
    /// Digits.
    Integer(String),
    /// Digits with a point.
    Decimal(String),
    /// With an exponent.
    Double(String),
    /// `'text'`.
    String(String),
}

impl Display for Literal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("NULL"),
            Literal::Boolean(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Literal::Integer(n) | Literal::Decimal(n) | Literal::Double(n) => f.write_str(n),
            Literal::String(s) => write_string(f, s),
        }
    }
}

fn write_string(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('\'')?;
    f.write_str(&s.replace('\'', "''"))?;
    f.write_char('\'')
}

fn comma_list<T: Display>(f: &mut Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Column { qualifier: Some(q), name } => write!(f, "{q}.{name}"),
            ExprKind::Column { qualifier: None, name } => write!(f, "{name}"),
            ExprKind::Literal(l) => write!(f, "{l}"),
            ExprKind::Unary { op, expr } => {
                write!(f, "({}{expr})", if *op == UnaryOp::Minus { "-" } else { "+" })
            }
            ExprKind::Binary { op, left, right } => write!(f, "({left} {} {right})", op.as_str()),
            ExprKind::Not(e) => write!(f, "(NOT {e})"),
            ExprKind::IsNull { expr, negated } => {
                write!(f, "({expr} IS {}NULL)", if *negated { "NOT " } else { "" })
            }
            ExprKind::IsDistinctFrom { left, right, negated } => {
                write!(f, "({left} IS {}DISTINCT FROM {right})", if *negated { "NOT " } else { "" })
            }
            ExprKind::Between { expr, low, high, negated } => {
                write!(f, "({expr} {}BETWEEN {low} AND {high})", if *negated { "NOT " } else { "" })
            }
            ExprKind::InList { expr, list, negated } => {
                write!(f, "({expr} {}IN (", if *negated { "NOT " } else { "" })?;
                comma_list(f, list)?;
                f.write_str("))")
            }
            ExprKind::Like { expr, pattern, escape, negated } => {
                write!(f, "({expr} {}LIKE {pattern}", if *negated { "NOT " } else { "" })?;
                if let Some(c) = escape {
                    f.write_str(" ESCAPE ")?;
                    write_string(f, &c.to_string())?;
                }
                f.write_char(')')
            }
            ExprKind::Case { operand, whens, otherwise } => {
                f.write_str("CASE")?;
                if let Some(o) = operand {
                    write!(f, " {o}")?;
                }
                for (when, then) in whens {
                    write!(f, " WHEN {when} THEN {then}")?;
                }
                if let Some(e) = otherwise {
                    write!(f, " ELSE {e}")?;
                }
                f.write_str(" END")
            }
            ExprKind::Cast { expr, ty } => write!(f, "CAST({expr} AS {ty})"),
            ExprKind::Function { name, args, star } => {
                write!(f, "{name}(")?;
                if *star {
                    f.write_char('*')?;
                } else {
                    comma_list(f, args)?;
                }
                f.write_char(')')
            }
            ExprKind::Dereference { expr, field } => write!(f, "{expr}->{field}"),
            ExprKind::Subscript { expr, index } => write!(f, "{expr}[{index}]"),
            ExprKind::Array(items) => {
                f.write_str("ARRAY[")?;
                comma_list(f, items)?;
                f.write_char(']')
            }
            ExprKind::Map(entries) => {
                f.write_str("MAP(")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} := {v}")?;
                }
                f.write_char(')')
            }
            ExprKind::Struct(fields) => {
                f.write_str("STRUCT(")?;
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} := {v}")?;
                }
                f.write_char(')')
            }
            ExprKind::Lambda { params, body } => {
                // Parenthesised whole: a lambda's body extends as far as it can.
                f.write_str("((")?;
                comma_list(f, params)?;
                write!(f, ") => {body})")
            }
        }
    }
}

impl Display for Duration {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            TimeUnit::Milliseconds => "MILLISECONDS",
            TimeUnit::Seconds => "SECONDS",
            TimeUnit::Minutes => "MINUTES",
            TimeUnit::Hours => "HOURS",
            TimeUnit::Days => "DAYS",
        };
        write!(f, "{} {unit}", self.value)
    }
}

impl Display for WindowOptions {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.retention {
            write!(f, ", RETENTION {r}")?;
        }
        if let Some(g) = &self.grace {
            write!(f, ", GRACE PERIOD {g}")?;
        }
        Ok(())
    }
}

impl Display for WindowExpr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            WindowExpr::Tumbling { size, options } => write!(f, "TUMBLING (SIZE {size}{options})"),
            WindowExpr::Hopping { size, advance, options } => {
                write!(f, "HOPPING (SIZE {size}, ADVANCE BY {advance}{options})")
            }
            WindowExpr::Session { gap, options } => write!(f, "SESSION ({gap}{options})"),
        }
    }
}

impl Display for Relation {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Relation::Source { name, alias } => {
                write!(f, "{name}")?;
                if let Some(a) = alias {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Relation::Join(join) => {
                let kind = match join.kind {
                    JoinKind::Inner => "INNER JOIN",
                    JoinKind::Left => "LEFT JOIN",
                    JoinKind::Right => "RIGHT JOIN",
                    JoinKind::Full => "FULL OUTER JOIN",
                };
                write!(f, "{} {kind} {}", join.left, join.right)?;
                if let Some(w) = &join.within {
                    if w.before == w.after {
                        write!(f, " WITHIN {}", w.before)?;
                    } else {
                        write!(f, " WITHIN ({}, {})", w.before, w.after)?;
                    }
                    if let Some(g) = &w.grace {
                        write!(f, " GRACE PERIOD {g}")?;
                    }
                }
                write!(f, " ON {}", join.on)
            }
        }
    }
}

impl Display for SelectItem {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            SelectItem::Wildcard { qualifier: Some(q), .. } => write!(f, "{q}.*"),
            SelectItem::Wildcard { qualifier: None, .. } => f.write_char('*'),
            SelectItem::Expr { expr, alias: Some(a) } => write!(f, "{expr} AS {a}"),
            SelectItem::Expr { expr, alias: None } => write!(f, "{expr}"),
        }
    }
}

impl Display for Query {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT ")?;
        comma_list(f, &self.select)?;
        write!(f, " FROM {}", self.from)?;
        if let Some(w) = &self.window {
            write!(f, " WINDOW {w}")?;
        }
        if let Some(e) = &self.filter {
            write!(f, " WHERE {e}")?;
        }
        if !self.group_by.is_empty() {
            f.write_str(" GROUP BY ")?;
            comma_list(f, &self.group_by)?;
        }
        if !self.partition_by.is_empty() {
            f.write_str(" PARTITION BY ")?;
            comma_list(f, &self.partition_by)?;
        }
        if let Some(h) = &self.having {
            write!(f, " HAVING {h}")?;
        }
        match self.emit {
            Some(Emit::Changes) => f.write_str(" EMIT CHANGES")?,
            Some(Emit::Final) => f.write_str(" EMIT FINAL")?,
            None => {}
        }
        if let Some(l) = self.limit {
            write!(f, " LIMIT {l}")?;
        }
        Ok(())
    }
}

impl Display for Properties {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str(" WITH (")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={}", p.name, p.value)?;
        }
        f.write_char(')')
    }
}

impl Display for TableElement {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.ty)?;
        match &self.constraint {
            ColumnConstraint::None => Ok(()),
            ColumnConstraint::Key => f.write_str(" KEY"),
            ColumnConstraint::PrimaryKey => f.write_str(" PRIMARY KEY"),
            ColumnConstraint::Headers => f.write_str(" HEADERS"),
            ColumnConstraint::Header(k) => {
                f.write_str(" HEADER(")?;
                write_string(f, k)?;
                f.write_char(')')
            }
        }
    }
}

impl Display for Statement {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Statement::CreateSource(c) => {
                f.write_str("CREATE ")?;
                if c.or_replace {
                    f.write_str("OR REPLACE ")?;
                }
                if c.source {
                    f.write_str("SOURCE ")?;
                }
                write!(f, "{} ", c.kind)?;
                if c.if_not_exists {
                    f.write_str("IF NOT EXISTS ")?;
                }
                write!(f, "{}", c.name)?;
                if !c.elements.is_empty() {
                    f.write_str(" (")?;
                    comma_list(f, &c.elements)?;
                    f.write_char(')')?;
                }
                write!(f, "{}", c.properties)
            }
            Statement::CreateAsSelect(c) => {
                f.write_str("CREATE ")?;
                if c.or_replace {
                    f.write_str("OR REPLACE ")?;
                }
                write!(f, "{} ", c.kind)?;
                if c.if_not_exists {
                    f.write_str("IF NOT EXISTS ")?;
                }
                write!(f, "{}{} AS {}", c.name, c.properties, c.query)
            }
            Statement::InsertInto(i) => {
                write!(f, "INSERT INTO {}{} {}", i.target, i.properties, i.query)
            }
            Statement::Query(q) => write!(f, "{q}"),
            Statement::Show(kind) => {
                let what = match kind {
                    ShowKind::Streams => "STREAMS",
                    ShowKind::Tables => "TABLES",
                    ShowKind::Queries => "QUERIES",
                    ShowKind::Topics => "TOPICS",
                    ShowKind::Properties => "PROPERTIES",
                    ShowKind::Functions => "FUNCTIONS",
                };
                write!(f, "SHOW {what}")
            }
            Statement::Describe { name, extended } => {
                write!(f, "DESCRIBE {name}{}", if *extended { " EXTENDED" } else { "" })
            }
            Statement::Explain(Explain::Statement(s)) => write!(f, "EXPLAIN {s}"),
            Statement::Explain(Explain::QueryId(id)) => write!(f, "EXPLAIN {id}"),
            Statement::Drop { kind, name, if_exists, delete_topic } => {
                write!(f, "DROP {kind} ")?;
                if *if_exists {
                    f.write_str("IF EXISTS ")?;
                }
                write!(f, "{name}{}", if *delete_topic { " DELETE TOPIC" } else { "" })
            }
            Statement::SetProperty { name, value } => {
                f.write_str("SET ")?;
                write_string(f, name)?;
                f.write_str(" = ")?;
                write_string(f, value)
            }
            Statement::UnsetProperty { name } => {
                f.write_str("UNSET ")?;
                write_string(f, name)
            }
            Statement::Terminate { query: Some(q) } => write!(f, "TERMINATE {q}"),
            Statement::Terminate { query: None } => f.write_str("TERMINATE ALL"),
        }
    }
}
