//! A recursive-descent parser for the ksqlDB dialect.
//!
//! Every error carries the line and column of the offending token and says what was expected
//! there. Keywords are recognised case-insensitively; only the words in [`RESERVED`] cannot be
//! used as bare names (quote them with backquotes to use them anyway).

use crate::{
    ast::*,
    error::{Pos, SqlError},
    lexer::{Symbol, Token, TokenKind, tokenize},
    types::SqlType,
};

/// Words that cannot be bare identifiers, because a name there would be ambiguous.
pub const RESERVED: &[&str] = &[
    "ALL",
    "AND",
    "AS",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "CREATE",
    "DISTINCT",
    "ELSE",
    "EMIT",
    "END",
    "EXISTS",
    "FALSE",
    "FROM",
    "FULL",
    "GROUP",
    "HAVING",
    "IN",
    "INNER",
    "INSERT",
    "INTO",
    "IS",
    "JOIN",
    "LEFT",
    "LIKE",
    "LIMIT",
    "NOT",
    "NULL",
    "ON",
    "OR",
    "OUTER",
    "PARTITION",
    "RIGHT",
    "SELECT",
    "THEN",
    "TRUE",
    "WHEN",
    "WHERE",
    "WINDOW",
    "WITH",
    "WITHIN",
];

/// Whether an (upper-case) word is reserved.
pub fn is_reserved(word: &str) -> bool {
    RESERVED.contains(&word)
}

/// Parse a script of `;`-separated statements. Each comes with the text it was parsed from.
pub fn parse_statements(sql: &str) -> Result<Vec<(Statement, String)>, SqlError> {
    let tokens = tokenize(sql)?;
    let mut parser = Parser::new(tokens);
    let mut out = Vec::new();
    let offsets = line_offsets(sql);
    loop {
        while parser.eat_symbol(Symbol::Semicolon) {}
        if parser.peek_kind() == &TokenKind::Eof {
            return Ok(out);
        }
        let start = parser.peek().pos;
        let statement = parser.statement()?;
        let end = parser.peek().pos;
        if !parser.eat_symbol(Symbol::Semicolon) && parser.peek_kind() != &TokenKind::Eof {
            return Err(parser.expected("';' or the end of the statement"));
        }
        let text = slice(sql, &offsets, start, end).trim().to_owned();
        out.push((statement, text));
    }
}

/// Parse exactly one statement (a trailing `;` is allowed).
pub fn parse_statement(sql: &str) -> Result<Statement, SqlError> {
    let tokens = tokenize(sql)?;
    let mut parser = Parser::new(tokens);
    let statement = parser.statement()?;
    parser.eat_symbol(Symbol::Semicolon);
    parser.expect_eof()?;
    Ok(statement)
}

/// Parse one expression.
pub fn parse_expression(sql: &str) -> Result<Expr, SqlError> {
    let tokens = tokenize(sql)?;
    let mut parser = Parser::new(tokens);
    let expr = parser.expr()?;
    parser.expect_eof()?;
    Ok(expr)
}

/// Parse one type, e.g. `ARRAY<STRUCT<A INT>>`.
pub fn parse_type(sql: &str) -> Result<SqlType, SqlError> {
    let tokens = tokenize(sql)?;
    let mut parser = Parser::new(tokens);
    let ty = parser.sql_type()?;
    parser.expect_eof()?;
    Ok(ty)
}

fn line_offsets(sql: &str) -> Vec<usize> {
    let mut offsets = vec![0];
    offsets.extend(sql.char_indices().filter(|(_, c)| *c == '\n').map(|(i, _)| i + 1));
    offsets
}

fn byte_at(sql: &str, offsets: &[usize], pos: Pos) -> usize {
    let line_start = offsets.get(pos.line as usize - 1).copied().unwrap_or(sql.len());
    sql[line_start..].char_indices().nth(pos.column as usize - 1).map_or(sql.len(), |(i, _)| line_start + i)
}

fn slice<'a>(sql: &'a str, offsets: &[usize], start: Pos, end: Pos) -> &'a str {
    let (a, b) = (byte_at(sql, offsets, start), byte_at(sql, offsets, end));
    &sql[a.min(b)..b]
}

/// How deeply expressions, types and joins may nest: parentheses, function calls, `NOT`, signs,
/// and the operands of a chain of binary operators (`a OR b OR c` nests once per `OR`) all
/// count. Parsing, analysing, evaluating and dropping a syntax tree recurse once per level, so
/// without a bound a few kilobytes of `(((…)))` overflow a thread's stack and abort the
/// process. ksqlDB has no explicit limit; its parser fails at a few thousand levels. Long
/// disjunctions are better written `x IN (a, b, …)`, which nests once.
///
/// A tree this deep needs about 0.5 MiB of stack to parse, analyse and evaluate in an optimised
/// build and about 8 MiB in a debug build: threads that handle SQL run with [`SQL_STACK_SIZE`].
pub const MAX_DEPTH: usize = 128;

/// The stack of every thread that parses, plans or evaluates SQL a user sent (the processor's
/// HTTP handlers and processing loop, the operator's reconciler, `sluice validate`): room for a
/// tree [`MAX_DEPTH`] deep with a margin, in any build. Only the pages used are committed.
pub const SQL_STACK_SIZE: usize = 16 * 1024 * 1024;

/// The most joins one query may have (each nests the `FROM` clause's tree once more).
pub const MAX_JOINS: usize = 64;

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Nesting of the recursive rules in progress (see [`MAX_DEPTH`]).
    depth: usize,
    /// Joins in the current `FROM`.
    joins: usize,
}

impl Parser {
    fn new(tokens: Vec<Token>) -> Self {
        Parser { tokens, at: 0, depth: 0, joins: 0 }
    }

    // ---- nesting ---------------------------------------------------------------------------

    fn too_deep(&self, pos: Pos) -> SqlError {
        SqlError::new(
            pos,
            format!(
                "expression nested too deeply (more than {MAX_DEPTH} levels of parentheses, calls, operators or types); \
                 write a long chain of OR as IN (...)"
            ),
        )
    }

    /// Run a recursive rule one level deeper, refusing past [`MAX_DEPTH`].
    fn nested<T>(&mut self, rule: impl FnOnce(&mut Self) -> Result<T, SqlError>) -> Result<T, SqlError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.too_deep(self.peek().pos));
        }
        self.depth += 1;
        let result = rule(self);
        self.depth -= 1;
        result
    }

    /// `left op right` in a chain of binary operators, whose tree deepens with every link:
    /// `depth` carries the depth of `left` from link to link, so each operand is measured once.
    fn link(&self, left: Expr, op: BinaryOp, right: Expr, depth: &mut Option<usize>) -> Result<Expr, SqlError> {
        let d = 1 + depth.unwrap_or_else(|| left.depth()).max(right.depth());
        if self.depth + d > MAX_DEPTH {
            return Err(self.too_deep(right.pos));
        }
        *depth = Some(d);
        Ok(Self::binary(left, op, right))
    }

    // ---- token plumbing -------------------------------------------------------------------

    fn peek(&self) -> &Token {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn peek_kind(&self) -> &TokenKind {
        &self.peek().kind
    }

    fn peek_at(&self, ahead: usize) -> &TokenKind {
        &self.tokens[(self.at + ahead).min(self.tokens.len() - 1)].kind
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn expected(&self, what: &str) -> SqlError {
        let token = self.peek();
        SqlError::new(token.pos, format!("expected {what}, found {}", token.kind))
    }

    fn expect_eof(&self) -> Result<(), SqlError> {
        if self.peek_kind() == &TokenKind::Eof { Ok(()) } else { Err(self.expected("the end of the input")) }
    }

    fn word_is(kind: &TokenKind, keyword: &str) -> bool {
        matches!(kind, TokenKind::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    fn is_word(&self, keyword: &str) -> bool {
        Self::word_is(self.peek_kind(), keyword)
    }

    fn eat_word(&mut self, keyword: &str) -> bool {
        if self.is_word(keyword) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, keyword: &str) -> Result<Pos, SqlError> {
        if self.is_word(keyword) { Ok(self.advance().pos) } else { Err(self.expected(&format!("'{keyword}'"))) }
    }

    fn is_symbol(&self, symbol: Symbol) -> bool {
        self.peek_kind() == &TokenKind::Symbol(symbol)
    }

    fn eat_symbol(&mut self, symbol: Symbol) -> bool {
        if self.is_symbol(symbol) {
            self.advance();
            true
        } else {
            false
        }
    }

    fn expect_symbol(&mut self, symbol: Symbol) -> Result<Pos, SqlError> {
        if self.is_symbol(symbol) {
            Ok(self.advance().pos)
        } else {
            Err(self.expected(&format!("'{}'", symbol.as_str())))
        }
    }

    /// One or more items separated by commas.
    fn comma_separated<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        let mut items = vec![item(self)?];
        while self.eat_symbol(Symbol::Comma) {
            items.push(item(self)?);
        }
        Ok(items)
    }

    /// Zero or more comma-separated items up to and including `close` (the opening symbol has
    /// been consumed).
    fn list_until<T>(
        &mut self,
        close: Symbol,
        item: impl FnMut(&mut Self) -> Result<T, SqlError>,
    ) -> Result<Vec<T>, SqlError> {
        let items = if self.is_symbol(close) { Vec::new() } else { self.comma_separated(item)? };
        self.expect_symbol(close)?;
        Ok(items)
    }

    /// `a := b`, as in `MAP(...)` and `STRUCT(...)`.
    fn assignment<K>(&mut self, key: impl FnOnce(&mut Self) -> Result<K, SqlError>) -> Result<(K, Expr), SqlError> {
        let k = key(self)?;
        self.expect_symbol(Symbol::Assign)?;
        Ok((k, self.expr()?))
    }

    /// `[AS] alias`, when present.
    fn alias(&mut self) -> Result<Option<Ident>, SqlError> {
        if self.eat_word("AS") || self.at_ident() { Ok(Some(self.ident()?)) } else { Ok(None) }
    }

    /// Whether the next token can start an identifier.
    fn at_ident(&self) -> bool {
        match self.peek_kind() {
            TokenKind::Word(w) => !is_reserved(&w.to_ascii_uppercase()),
            TokenKind::QuotedIdent(_) => true,
            _ => false,
        }
    }

    fn ident(&mut self) -> Result<Ident, SqlError> {
        let token = self.peek().clone();
        match &token.kind {
            TokenKind::Word(w) if !is_reserved(&w.to_ascii_uppercase()) => {
                self.advance();
                Ok(Ident { name: w.to_ascii_uppercase(), pos: token.pos })
            }
            TokenKind::Word(w) => Err(SqlError::new(
                token.pos,
                format!(
                    "expected an identifier, found the reserved word '{}' (quote it with backquotes to use it as a name)",
                    w.to_ascii_uppercase()
                ),
            )),
            TokenKind::QuotedIdent(name) => {
                self.advance();
                Ok(Ident { name: name.clone(), pos: token.pos })
            }
            _ => Err(self.expected("an identifier")),
        }
    }

    fn string(&mut self) -> Result<String, SqlError> {
        match self.peek_kind().clone() {
            TokenKind::String(s) => {
                self.advance();
                Ok(s)
            }
            _ => Err(self.expected("a string literal")),
        }
    }

    fn integer<T: std::str::FromStr>(&mut self, what: &str) -> Result<T, SqlError> {
        let token = self.peek().clone();
        match &token.kind {
            TokenKind::Integer(n) => {
                self.advance();
                n.parse().map_err(|_| SqlError::new(token.pos, format!("{what} {n} is out of range")))
            }
            _ => Err(self.expected(what)),
        }
    }

    // ---- statements -----------------------------------------------------------------------

    fn statement(&mut self) -> Result<Statement, SqlError> {
        let pos = self.peek().pos;
        if self.eat_word("CREATE") {
            return self.create(pos);
        }
        if self.eat_word("INSERT") {
            self.expect_word("INTO")?;
            let target = self.ident()?;
            let properties = self.with_properties()?;
            let query = self.query()?;
            return Ok(Statement::InsertInto(InsertInto { target, properties, query, pos }));
        }
        if self.is_word("SELECT") {
            return Ok(Statement::Query(self.query()?));
        }
        if self.eat_word("SHOW") || self.eat_word("LIST") {
            let kind = if self.eat_word("STREAMS") {
                ShowKind::Streams
            } else if self.eat_word("TABLES") {
                ShowKind::Tables
            } else if self.eat_word("QUERIES") {
                ShowKind::Queries
            } else if self.eat_word("TOPICS") {
                ShowKind::Topics
            } else if self.eat_word("PROPERTIES") {
                ShowKind::Properties
            } else if self.eat_word("FUNCTIONS") {
                ShowKind::Functions
            } else {
                return Err(self.expected("STREAMS, TABLES, QUERIES, TOPICS, PROPERTIES or FUNCTIONS"));
            };
            self.eat_word("EXTENDED");
            return Ok(Statement::Show(kind));
        }
        if self.eat_word("DESCRIBE") {
            let name = self.ident()?;
            let extended = self.eat_word("EXTENDED");
            return Ok(Statement::Describe { name, extended });
        }
        if self.eat_word("EXPLAIN") {
            let starts_statement = ["CREATE", "INSERT", "SELECT"].iter().any(|k| self.is_word(k));
            return Ok(Statement::Explain(if starts_statement {
                Explain::Statement(Box::new(self.statement()?))
            } else {
                Explain::QueryId(self.ident()?)
            }));
        }
        if self.eat_word("DROP") {
            let kind = self.source_kind()?;
            let if_exists = if self.eat_word("IF") {
                self.expect_word("EXISTS")?;
                true
            } else {
                false
            };
            let name = self.ident()?;
            let delete_topic = if self.eat_word("DELETE") {
                self.expect_word("TOPIC")?;
                true
            } else {
                false
            };
            return Ok(Statement::Drop { kind, name, if_exists, delete_topic });
        }
        if self.eat_word("SET") {
            let name = self.string()?;
            self.expect_symbol(Symbol::Eq)?;
            let value = self.string()?;
            return Ok(Statement::SetProperty { name, value });
        }
        if self.eat_word("UNSET") {
            return Ok(Statement::UnsetProperty { name: self.string()? });
        }
        if self.eat_word("TERMINATE") {
            let query = if self.eat_word("ALL") { None } else { Some(self.ident()?) };
            return Ok(Statement::Terminate { query });
        }
        Err(self.expected("a statement (CREATE, INSERT, SELECT, SHOW, DESCRIBE, EXPLAIN, DROP, SET, UNSET, TERMINATE)"))
    }

    fn source_kind(&mut self) -> Result<SourceKind, SqlError> {
        if self.eat_word("STREAM") {
            Ok(SourceKind::Stream)
        } else if self.eat_word("TABLE") {
            Ok(SourceKind::Table)
        } else {
            Err(self.expected("STREAM or TABLE"))
        }
    }

    fn create(&mut self, pos: Pos) -> Result<Statement, SqlError> {
        let or_replace = if self.eat_word("OR") {
            self.expect_word("REPLACE")?;
            true
        } else {
            false
        };
        let source = self.eat_word("SOURCE");
        let kind = self.source_kind()?;
        let if_not_exists = if self.eat_word("IF") {
            self.expect_word("NOT")?;
            self.expect_word("EXISTS")?;
            true
        } else {
            false
        };
        let name = self.ident()?;
        let elements = if self.eat_symbol(Symbol::LParen) {
            let elements = self.comma_separated(Self::table_element)?;
            self.expect_symbol(Symbol::RParen)?;
            elements
        } else {
            Vec::new()
        };
        let properties = self.with_properties()?;
        if self.is_word("AS") {
            let as_pos = self.advance().pos;
            if !elements.is_empty() {
                return Err(SqlError::new(as_pos, "a CREATE ... AS SELECT statement cannot declare columns"));
            }
            if source {
                return Err(SqlError::new(as_pos, "CREATE SOURCE cannot be used with AS SELECT"));
            }
            let query = self.query()?;
            return Ok(Statement::CreateAsSelect(CreateAsSelect {
                kind,
                or_replace,
                if_not_exists,
                name,
                properties,
                query,
                pos,
            }));
        }
        Ok(Statement::CreateSource(CreateSource {
            kind,
            or_replace,
            source,
            if_not_exists,
            name,
            elements,
            properties,
            pos,
        }))
    }

    fn table_element(&mut self) -> Result<TableElement, SqlError> {
        let name = self.ident()?;
        let ty = self.sql_type()?;
        let constraint = if self.eat_word("PRIMARY") {
            self.expect_word("KEY")?;
            ColumnConstraint::PrimaryKey
        } else if self.eat_word("KEY") {
            ColumnConstraint::Key
        } else if self.eat_word("HEADERS") {
            ColumnConstraint::Headers
        } else if self.eat_word("HEADER") {
            self.expect_symbol(Symbol::LParen)?;
            let key = self.string()?;
            self.expect_symbol(Symbol::RParen)?;
            ColumnConstraint::Header(key)
        } else {
            ColumnConstraint::None
        };
        Ok(TableElement { name, ty, constraint })
    }

    fn with_properties(&mut self) -> Result<Properties, SqlError> {
        let mut properties = Vec::new();
        if !self.eat_word("WITH") {
            return Ok(Properties(properties));
        }
        self.expect_symbol(Symbol::LParen)?;
        loop {
            let pos = self.peek().pos;
            let name = match self.peek_kind().clone() {
                TokenKind::Word(w) => w.to_ascii_uppercase(),
                TokenKind::QuotedIdent(w) | TokenKind::String(w) => w.to_ascii_uppercase(),
                _ => return Err(self.expected("a property name")),
            };
            self.advance();
            self.expect_symbol(Symbol::Eq)?;
            let value = self.literal_value()?;
            if properties.iter().any(|p: &Property| p.name == name) {
                return Err(SqlError::new(pos, format!("duplicate property {name}")));
            }
            properties.push(Property { name, value, pos });
            if !self.eat_symbol(Symbol::Comma) {
                break;
            }
        }
        self.expect_symbol(Symbol::RParen)?;
        Ok(Properties(properties))
    }

    /// A literal, allowing a leading minus on numbers (property values, limits).
    fn literal_value(&mut self) -> Result<Literal, SqlError> {
        let negative = self.eat_symbol(Symbol::Minus);
        let token = self.peek().clone();
        let literal = match token.kind {
            TokenKind::String(s) if !negative => Literal::String(s),
            TokenKind::Integer(n) => Literal::Integer(if negative { format!("-{n}") } else { n }),
            TokenKind::Decimal(n) => Literal::Decimal(if negative { format!("-{n}") } else { n }),
            TokenKind::Double(n) => Literal::Double(if negative { format!("-{n}") } else { n }),
            TokenKind::Word(ref w) if !negative && w.eq_ignore_ascii_case("TRUE") => Literal::Boolean(true),
            TokenKind::Word(ref w) if !negative && w.eq_ignore_ascii_case("FALSE") => Literal::Boolean(false),
            TokenKind::Word(ref w) if !negative && w.eq_ignore_ascii_case("NULL") => Literal::Null,
            _ => return Err(self.expected("a literal value")),
        };
        self.advance();
        Ok(literal)
    }

    // ---- types ----------------------------------------------------------------------------

    fn sql_type(&mut self) -> Result<SqlType, SqlError> {
        let token = self.peek().clone();
        let TokenKind::Word(word) = &token.kind else {
            return Err(self.expected("a type"));
        };
        let word = word.to_ascii_uppercase();
        self.advance();
        Ok(match word.as_str() {
            "BOOLEAN" => SqlType::Boolean,
            "INT" | "INTEGER" => SqlType::Int,
            "BIGINT" => SqlType::Bigint,
            "DOUBLE" => SqlType::Double,
            "STRING" | "VARCHAR" => {
                // ksqlDB accepts (and ignores) a parameter: `VARCHAR(STRING)`, `VARCHAR(10)`.
                if self.eat_symbol(Symbol::LParen) {
                    if !self.eat_word("STRING") {
                        self.integer::<u32>("a length or STRING")?;
                    }
                    self.expect_symbol(Symbol::RParen)?;
                }
                SqlType::String
            }
            "BYTES" => SqlType::Bytes,
            "TIMESTAMP" => SqlType::Timestamp,
            "DATE" => SqlType::Date,
            "TIME" => SqlType::Time,
            "DECIMAL" => {
                self.expect_symbol(Symbol::LParen)?;
                let precision_pos = self.peek().pos;
                let precision: u8 = self.integer("a precision")?;
                self.expect_symbol(Symbol::Comma)?;
                let scale: u8 = self.integer("a scale")?;
                self.expect_symbol(Symbol::RParen)?;
                if !(1..=38).contains(&precision) {
                    return Err(SqlError::new(
                        precision_pos,
                        format!("DECIMAL precision must be 1 to 38, not {precision}"),
                    ));
                }
                if scale > precision {
                    return Err(SqlError::new(
                        precision_pos,
                        format!("DECIMAL scale {scale} must not exceed its precision {precision}"),
                    ));
                }
                SqlType::Decimal { precision, scale }
            }
            "ARRAY" => {
                self.expect_symbol(Symbol::Lt)?;
                let item = self.nested(Self::sql_type)?;
                self.expect_symbol(Symbol::Gt)?;
                SqlType::Array(Box::new(item))
            }
            "MAP" => {
                self.expect_symbol(Symbol::Lt)?;
                let key = self.nested(Self::sql_type)?;
                self.expect_symbol(Symbol::Comma)?;
                let value = self.nested(Self::sql_type)?;
                self.expect_symbol(Symbol::Gt)?;
                SqlType::Map(Box::new(key), Box::new(value))
            }
            "STRUCT" => {
                self.expect_symbol(Symbol::Lt)?;
                SqlType::Struct(self.list_until(Symbol::Gt, |p| Ok((p.ident()?.name, p.nested(Self::sql_type)?)))?)
            }
            _ => {
                return Err(SqlError::new(
                    token.pos,
                    format!(
                        "unknown type {word}: expected BOOLEAN, INT, BIGINT, DOUBLE, DECIMAL, STRING, BYTES, TIMESTAMP, DATE, TIME, ARRAY, MAP or STRUCT"
                    ),
                ));
            }
        })
    }

    // ---- queries --------------------------------------------------------------------------

    fn query(&mut self) -> Result<Query, SqlError> {
        let pos = self.expect_word("SELECT")?;
        let select = self.comma_separated(Self::select_item)?;
        self.expect_word("FROM")?;
        let from = self.relation()?;
        let window = if self.eat_word("WINDOW") { Some(self.window()?) } else { None };
        let filter = if self.eat_word("WHERE") { Some(self.expr()?) } else { None };
        let group_by = if self.eat_word("GROUP") {
            self.expect_word("BY")?;
            self.grouping_list()?
        } else {
            Vec::new()
        };
        let partition_by = if self.eat_word("PARTITION") {
            self.expect_word("BY")?;
            self.grouping_list()?
        } else {
            Vec::new()
        };
        let having = if self.eat_word("HAVING") { Some(self.expr()?) } else { None };
        let emit = if self.eat_word("EMIT") {
            if self.eat_word("CHANGES") {
                Some(Emit::Changes)
            } else if self.eat_word("FINAL") {
                Some(Emit::Final)
            } else {
                return Err(self.expected("CHANGES or FINAL"));
            }
        } else {
            None
        };
        let limit = if self.eat_word("LIMIT") { Some(self.integer("a row count")?) } else { None };
        Ok(Query { select, from, window, filter, group_by, partition_by, having, emit, limit, pos })
    }

    /// `a, b` or `(a, b)`.
    fn grouping_list(&mut self) -> Result<Vec<Expr>, SqlError> {
        if self.is_symbol(Symbol::LParen) {
            let save = self.at;
            self.advance();
            let mut items = vec![self.expr()?];
            if self.is_symbol(Symbol::Comma) {
                while self.eat_symbol(Symbol::Comma) {
                    items.push(self.expr()?);
                }
                self.expect_symbol(Symbol::RParen)?;
                return Ok(items);
            }
            self.at = save;
        }
        self.comma_separated(Self::expr)
    }

    fn select_item(&mut self) -> Result<SelectItem, SqlError> {
        let pos = self.peek().pos;
        if self.eat_symbol(Symbol::Star) {
            return Ok(SelectItem::Wildcard { qualifier: None, pos });
        }
        if matches!(self.peek_kind(), TokenKind::Word(_) | TokenKind::QuotedIdent(_))
            && self.peek_at(1) == &TokenKind::Symbol(Symbol::Dot)
            && self.peek_at(2) == &TokenKind::Symbol(Symbol::Star)
        {
            let qualifier = self.ident()?;
            self.advance();
            self.advance();
            return Ok(SelectItem::Wildcard { qualifier: Some(qualifier), pos });
        }
        let expr = self.expr()?;
        let alias = self.alias()?;
        Ok(SelectItem::Expr { expr, alias })
    }

    fn aliased_source(&mut self) -> Result<Relation, SqlError> {
        let name = self.ident()?;
        let alias = self.alias()?;
        Ok(Relation::Source { name, alias })
    }

    fn relation(&mut self) -> Result<Relation, SqlError> {
        self.joins = 0;
        let mut left = self.aliased_source()?;
        loop {
            let pos = self.peek().pos;
            let kind = if self.eat_word("JOIN") {
                JoinKind::Inner
            } else if self.eat_word("INNER") {
                self.expect_word("JOIN")?;
                JoinKind::Inner
            } else if self.eat_word("LEFT") {
                self.eat_word("OUTER");
                self.expect_word("JOIN")?;
                JoinKind::Left
            } else if self.eat_word("RIGHT") {
                self.eat_word("OUTER");
                self.expect_word("JOIN")?;
                JoinKind::Right
            } else if self.eat_word("FULL") {
                self.eat_word("OUTER");
                self.expect_word("JOIN")?;
                JoinKind::Full
            } else if self.eat_word("OUTER") {
                self.expect_word("JOIN")?;
                JoinKind::Full
            } else {
                return Ok(left);
            };
            self.joins += 1;
            if self.joins > MAX_JOINS {
                return Err(SqlError::new(pos, format!("too many joins in one query (more than {MAX_JOINS})")));
            }
            let right = self.aliased_source()?;
            let within = if self.eat_word("WITHIN") { Some(self.within()?) } else { None };
            self.expect_word("ON")?;
            let on = self.expr()?;
            left = Relation::Join(Box::new(Join { left, right, kind, within, on, pos }));
        }
    }

    fn within(&mut self) -> Result<Within, SqlError> {
        let (before, after) = if self.eat_symbol(Symbol::LParen) {
            let before = self.duration()?;
            self.expect_symbol(Symbol::Comma)?;
            let after = self.duration()?;
            self.expect_symbol(Symbol::RParen)?;
            (before, after)
        } else {
            let d = self.duration()?;
            (d, d)
        };
        let grace = if self.eat_word("GRACE") {
            self.expect_word("PERIOD")?;
            Some(self.duration()?)
        } else {
            None
        };
        Ok(Within { before, after, grace })
    }

    fn duration(&mut self) -> Result<Duration, SqlError> {
        let value: i64 = self.integer("a number")?;
        let unit = match self.peek_kind() {
            TokenKind::Word(w) => match w.to_ascii_uppercase().as_str() {
                "MILLISECOND" | "MILLISECONDS" => TimeUnit::Milliseconds,
                "SECOND" | "SECONDS" => TimeUnit::Seconds,
                "MINUTE" | "MINUTES" => TimeUnit::Minutes,
                "HOUR" | "HOURS" => TimeUnit::Hours,
                "DAY" | "DAYS" => TimeUnit::Days,
                _ => {
                    return Err(self.expected("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)"));
                }
            },
            _ => {
                return Err(self.expected("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)"));
            }
        };
        self.advance();
        Ok(Duration { value, unit })
    }

    fn window(&mut self) -> Result<WindowExpr, SqlError> {
        let kind_pos = self.peek().pos;
        let kind = match self.peek_kind() {
            TokenKind::Word(w) => w.to_ascii_uppercase(),
            _ => String::new(),
        };
        if !matches!(kind.as_str(), "TUMBLING" | "HOPPING" | "SESSION") {
            return Err(self.expected("TUMBLING, HOPPING or SESSION"));
        }
        self.advance();
        self.expect_symbol(Symbol::LParen)?;
        let mut size = None;
        let mut advance = None;
        let mut gap = None;
        let mut options = WindowOptions::default();
        if kind == "SESSION" {
            gap = Some(self.duration()?);
        }
        let mut first = kind != "SESSION";
        loop {
            if !first && !self.eat_symbol(Symbol::Comma) {
                break;
            }
            first = false;
            if self.is_word("SIZE") && kind != "SESSION" {
                self.advance();
                size = Some(self.duration()?);
            } else if self.is_word("ADVANCE") && kind == "HOPPING" {
                self.advance();
                self.expect_word("BY")?;
                advance = Some(self.duration()?);
            } else if self.eat_word("RETENTION") {
                options.retention = Some(self.duration()?);
            } else if self.eat_word("GRACE") {
                self.expect_word("PERIOD")?;
                options.grace = Some(self.duration()?);
            } else {
                return Err(self.expected(match kind.as_str() {
                    "TUMBLING" => "SIZE, RETENTION or GRACE PERIOD",
                    "HOPPING" => "SIZE, ADVANCE BY, RETENTION or GRACE PERIOD",
                    _ => "RETENTION or GRACE PERIOD",
                }));
            }
        }
        self.expect_symbol(Symbol::RParen)?;
        let missing = |what: &str| SqlError::new(kind_pos, format!("a {kind} window needs {what}"));
        Ok(match kind.as_str() {
            "TUMBLING" => WindowExpr::Tumbling { size: size.ok_or_else(|| missing("a SIZE"))?, options },
            "HOPPING" => WindowExpr::Hopping {
                size: size.ok_or_else(|| missing("a SIZE"))?,
                advance: advance.ok_or_else(|| missing("an ADVANCE BY"))?,
                options,
            },
            _ => WindowExpr::Session { gap: gap.ok_or_else(|| missing("a gap"))?, options },
        })
    }

    // ---- expressions ----------------------------------------------------------------------

    fn expr(&mut self) -> Result<Expr, SqlError> {
        self.nested(Self::or)
    }

    fn binary(left: Expr, op: BinaryOp, right: Expr) -> Expr {
        let pos = left.pos;
        Expr { kind: ExprKind::Binary { op, left: Box::new(left), right: Box::new(right) }, pos }
    }

    fn or(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.and()?;
        let mut depth = None;
        while self.eat_word("OR") {
            let right = self.and()?;
            left = self.link(left, BinaryOp::Or, right, &mut depth)?;
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.not()?;
        let mut depth = None;
        while self.eat_word("AND") {
            let right = self.not()?;
            left = self.link(left, BinaryOp::And, right, &mut depth)?;
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, SqlError> {
        let pos = self.peek().pos;
        if self.eat_word("NOT") {
            let inner = self.nested(Self::not)?;
            return Ok(Expr { kind: ExprKind::Not(Box::new(inner)), pos });
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, SqlError> {
        let left = self.additive()?;
        let pos = left.pos;
        let comparison = match self.peek_kind() {
            TokenKind::Symbol(Symbol::Eq) => Some(BinaryOp::Eq),
            TokenKind::Symbol(Symbol::NotEq) => Some(BinaryOp::NotEq),
            TokenKind::Symbol(Symbol::Lt) => Some(BinaryOp::Lt),
            TokenKind::Symbol(Symbol::LtEq) => Some(BinaryOp::LtEq),
            TokenKind::Symbol(Symbol::Gt) => Some(BinaryOp::Gt),
            TokenKind::Symbol(Symbol::GtEq) => Some(BinaryOp::GtEq),
            _ => None,
        };
        if let Some(op) = comparison {
            self.advance();
            let right = self.additive()?;
            return Ok(Self::binary(left, op, right));
        }
        if self.eat_word("IS") {
            let negated = self.eat_word("NOT");
            if self.eat_word("NULL") {
                return Ok(Expr { kind: ExprKind::IsNull { expr: Box::new(left), negated }, pos });
            }
            if self.eat_word("DISTINCT") {
                self.expect_word("FROM")?;
                let right = self.additive()?;
                return Ok(Expr {
                    kind: ExprKind::IsDistinctFrom { left: Box::new(left), right: Box::new(right), negated },
                    pos,
                });
            }
            return Err(self.expected("NULL or DISTINCT FROM"));
        }
        let negated = if Self::word_is(self.peek_kind(), "NOT")
            && ["BETWEEN", "IN", "LIKE"].iter().any(|k| Self::word_is(self.peek_at(1), k))
        {
            self.advance();
            true
        } else {
            false
        };
        if self.eat_word("BETWEEN") {
            let low = self.additive()?;
            self.expect_word("AND")?;
            let high = self.additive()?;
            return Ok(Expr {
                kind: ExprKind::Between { expr: Box::new(left), low: Box::new(low), high: Box::new(high), negated },
                pos,
            });
        }
        if self.eat_word("IN") {
            self.expect_symbol(Symbol::LParen)?;
            let list = self.list_until(Symbol::RParen, Self::expr)?;
            return Ok(Expr { kind: ExprKind::InList { expr: Box::new(left), list, negated }, pos });
        }
        if self.eat_word("LIKE") {
            let pattern = self.additive()?;
            let escape = if self.eat_word("ESCAPE") {
                let at = self.peek().pos;
                let s = self.string()?;
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some(c),
                    _ => return Err(SqlError::new(at, "ESCAPE must be a single character")),
                }
            } else {
                None
            };
            return Ok(Expr {
                kind: ExprKind::Like { expr: Box::new(left), pattern: Box::new(pattern), escape, negated },
                pos,
            });
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.multiplicative()?;
        let mut depth = None;
        loop {
            let op = match self.peek_kind() {
                TokenKind::Symbol(Symbol::Plus) => BinaryOp::Add,
                TokenKind::Symbol(Symbol::Minus) => BinaryOp::Subtract,
                TokenKind::Symbol(Symbol::Concat) => BinaryOp::Concat,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.multiplicative()?;
            left = self.link(left, op, right, &mut depth)?;
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, SqlError> {
        let mut left = self.unary()?;
        let mut depth = None;
        loop {
            let op = match self.peek_kind() {
                TokenKind::Symbol(Symbol::Star) => BinaryOp::Multiply,
                TokenKind::Symbol(Symbol::Slash) => BinaryOp::Divide,
                TokenKind::Symbol(Symbol::Percent) => BinaryOp::Modulo,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.unary()?;
            left = self.link(left, op, right, &mut depth)?;
        }
    }

    fn unary(&mut self) -> Result<Expr, SqlError> {
        let pos = self.peek().pos;
        let op = if self.eat_symbol(Symbol::Minus) {
            UnaryOp::Minus
        } else if self.eat_symbol(Symbol::Plus) {
            UnaryOp::Plus
        } else {
            return self.postfix();
        };
        let expr = self.nested(Self::unary)?;
        Ok(Expr { kind: ExprKind::Unary { op, expr: Box::new(expr) }, pos })
    }

    fn postfix(&mut self) -> Result<Expr, SqlError> {
        let mut expr = self.primary()?;
        let mut depth = None;
        loop {
            let pos = expr.pos;
            if self.is_symbol(Symbol::LBracket) || self.is_symbol(Symbol::Arrow) {
                let d = 1 + depth.unwrap_or_else(|| expr.depth());
                if self.depth + d > MAX_DEPTH {
                    return Err(self.too_deep(self.peek().pos));
                }
                depth = Some(d);
            }
            if self.eat_symbol(Symbol::LBracket) {
                let index = self.expr()?;
                self.expect_symbol(Symbol::RBracket)?;
                expr = Expr { kind: ExprKind::Subscript { expr: Box::new(expr), index: Box::new(index) }, pos };
            } else if self.eat_symbol(Symbol::Arrow) {
                let field = self.ident()?;
                expr = Expr { kind: ExprKind::Dereference { expr: Box::new(expr), field }, pos };
            } else {
                return Ok(expr);
            }
        }
    }

    /// Whether the tokens ahead are `(a, b, ...) =>` (a lambda's parameter list).
    fn at_lambda_params(&self) -> bool {
        if self.peek_kind() != &TokenKind::Symbol(Symbol::LParen) {
            return false;
        }
        let mut i = 1;
        loop {
            if !matches!(self.peek_at(i), TokenKind::Word(_) | TokenKind::QuotedIdent(_)) {
                return false;
            }
            match self.peek_at(i + 1) {
                TokenKind::Symbol(Symbol::Comma) => i += 2,
                TokenKind::Symbol(Symbol::RParen) => {
                    return self.peek_at(i + 2) == &TokenKind::Symbol(Symbol::FatArrow);
                }
                _ => return false,
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, SqlError> {
        let token = self.peek().clone();
        let pos = token.pos;
        let literal = |l| Ok(Expr { kind: ExprKind::Literal(l), pos });
        match &token.kind {
            TokenKind::String(s) => {
                self.advance();
                return literal(Literal::String(s.clone()));
            }
            TokenKind::Integer(n) => {
                self.advance();
                return literal(Literal::Integer(n.clone()));
            }
            TokenKind::Decimal(n) => {
                self.advance();
                return literal(Literal::Decimal(n.clone()));
            }
            TokenKind::Double(n) => {
                self.advance();
                return literal(Literal::Double(n.clone()));
            }
            TokenKind::Symbol(Symbol::LParen) => {
                if self.at_lambda_params() {
                    self.advance();
                    let params = self.comma_separated(Self::ident)?;
                    self.expect_symbol(Symbol::RParen)?;
                    self.expect_symbol(Symbol::FatArrow)?;
                    let body = self.expr()?;
                    return Ok(Expr { kind: ExprKind::Lambda { params, body: Box::new(body) }, pos });
                }
                self.advance();
                let inner = self.expr()?;
                self.expect_symbol(Symbol::RParen)?;
                return Ok(inner);
            }
            TokenKind::QuotedIdent(_) => {
                if self.peek_at(1) == &TokenKind::Symbol(Symbol::LParen) {
                    return self.function_call();
                }
                return self.column_or_lambda();
            }
            TokenKind::Word(w) => {
                let upper = w.to_ascii_uppercase();
                match upper.as_str() {
                    "TRUE" => {
                        self.advance();
                        return literal(Literal::Boolean(true));
                    }
                    "FALSE" => {
                        self.advance();
                        return literal(Literal::Boolean(false));
                    }
                    "NULL" => {
                        self.advance();
                        return literal(Literal::Null);
                    }
                    "CASE" => return self.case(),
                    "CAST" => {
                        self.advance();
                        self.expect_symbol(Symbol::LParen)?;
                        let expr = self.expr()?;
                        self.expect_word("AS")?;
                        let ty = self.sql_type()?;
                        self.expect_symbol(Symbol::RParen)?;
                        return Ok(Expr { kind: ExprKind::Cast { expr: Box::new(expr), ty }, pos });
                    }
                    "ARRAY" if self.peek_at(1) == &TokenKind::Symbol(Symbol::LBracket) => {
                        self.advance();
                        self.advance();
                        let items = self.list_until(Symbol::RBracket, Self::expr)?;
                        return Ok(Expr { kind: ExprKind::Array(items), pos });
                    }
                    "MAP" if self.peek_at(1) == &TokenKind::Symbol(Symbol::LParen) => {
                        self.advance();
                        self.advance();
                        let entries = self.list_until(Symbol::RParen, |p| p.assignment(Self::expr))?;
                        return Ok(Expr { kind: ExprKind::Map(entries), pos });
                    }
                    "STRUCT" if self.peek_at(1) == &TokenKind::Symbol(Symbol::LParen) => {
                        self.advance();
                        self.advance();
                        let fields = self.list_until(Symbol::RParen, |p| p.assignment(Self::ident))?;
                        return Ok(Expr { kind: ExprKind::Struct(fields), pos });
                    }
                    _ => {}
                }
                if is_reserved(&upper) {
                    return Err(self.expected("an expression"));
                }
                if self.peek_at(1) == &TokenKind::Symbol(Symbol::LParen) {
                    return self.function_call();
                }
                return self.column_or_lambda();
            }
            _ => {}
        }
        Err(self.expected("an expression"))
    }

    fn column_or_lambda(&mut self) -> Result<Expr, SqlError> {
        let pos = self.peek().pos;
        let first = self.ident()?;
        if self.eat_symbol(Symbol::FatArrow) {
            let body = self.expr()?;
            return Ok(Expr { kind: ExprKind::Lambda { params: vec![first], body: Box::new(body) }, pos });
        }
        if self.is_symbol(Symbol::Dot) && matches!(self.peek_at(1), TokenKind::Word(_) | TokenKind::QuotedIdent(_)) {
            self.advance();
            let name = self.ident()?;
            return Ok(Expr { kind: ExprKind::Column { qualifier: Some(first), name }, pos });
        }
        Ok(Expr { kind: ExprKind::Column { qualifier: None, name: first }, pos })
    }

    fn function_call(&mut self) -> Result<Expr, SqlError> {
        let pos = self.peek().pos;
        let name = self.ident()?;
        self.expect_symbol(Symbol::LParen)?;
        if self.eat_symbol(Symbol::Star) {
            self.expect_symbol(Symbol::RParen)?;
            return Ok(Expr { kind: ExprKind::Function { name, args: Vec::new(), star: true }, pos });
        }
        let args = self.list_until(Symbol::RParen, Self::expr)?;
        Ok(Expr { kind: ExprKind::Function { name, args, star: false }, pos })
    }

    fn case(&mut self) -> Result<Expr, SqlError> {
        let pos = self.expect_word("CASE")?;
        let operand = if self.is_word("WHEN") { None } else { Some(Box::new(self.expr()?)) };
        let mut whens = Vec::new();
        while self.eat_word("WHEN") {
            let when = self.expr()?;
            self.expect_word("THEN")?;
            let then = self.expr()?;
            whens.push((when, then));
        }
        if whens.is_empty() {
            return Err(self.expected("WHEN"));
        }
        let otherwise = if self.eat_word("ELSE") { Some(Box::new(self.expr()?)) } else { None };
        self.expect_word("END")?;
        Ok(Expr { kind: ExprKind::Case { operand, whens, otherwise }, pos })
    }
}
