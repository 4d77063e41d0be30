//! Tokens of the ksqlDB dialect, each with the line and column where it starts.

use std::fmt;

use crate::error::{Pos, SqlError};

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// What it is.
    pub kind: TokenKind,
    /// Where it starts.
    pub pos: Pos,
}

/// Token kinds. Keywords are not distinguished here: the parser recognises them from
/// [`TokenKind::Word`] by their upper-cased text, so that non-reserved words stay usable as names.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    /// An unquoted word: keyword or identifier, as written.
    Word(String),
    /// A `` `backquoted` `` or `"double-quoted"` identifier: case kept, quotes removed.
    QuotedIdent(String),
    /// A `'single-quoted'` string, `''` unescaped.
    String(String),
    /// Digits only.
    Integer(String),
    /// Digits with a decimal point and no exponent (a DECIMAL literal in ksqlDB).
    Decimal(String),
    /// A number with an exponent (a DOUBLE literal).
    Double(String),
    /// Punctuation and operators.
    Symbol(Symbol),
    /// End of input.
    Eof,
}

/// Punctuation and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Symbol {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Semicolon,
    Dot,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Arrow,
    FatArrow,
    Assign,
    Concat,
}

impl Symbol {
    /// The symbol's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Symbol::LParen => "(",
            Symbol::RParen => ")",
            Symbol::LBracket => "[",
            Symbol::RBracket => "]",
            Symbol::Comma => ",",
            Symbol::Semicolon => ";",
            Symbol::Dot => ".",
            Symbol::Plus => "+",
            Symbol::Minus => "-",
            Symbol::Star => "*",
            Symbol::Slash => "/",
            Symbol::Percent => "%",
            Symbol::Eq => "=",
            Symbol::NotEq => "!=",
            Symbol::Lt => "<",
            Symbol::LtEq => "<=",
            Symbol::Gt => ">",
            Symbol::GtEq => ">=",
            Symbol::Arrow => "->",
            Symbol::FatArrow => "=>",
            Symbol::Assign => ":=",
            Symbol::Concat => "||",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Word(w) => write!(f, "'{w}'"),
            TokenKind::QuotedIdent(w) => write!(f, "`{w}`"),
            TokenKind::String(s) => write!(f, "string '{s}'"),
            TokenKind::Integer(n) | TokenKind::Decimal(n) | TokenKind::Double(n) => {
                write!(f, "number {n}")
            }
            TokenKind::Symbol(s) => write!(f, "'{}'", s.as_str()),
            TokenKind::Eof => f.write_str("end of input"),
        }
    }
}

/// Split `sql` into tokens, ending with [`TokenKind::Eof`]. Comments (`-- …` and `/* … */`) and
/// whitespace are skipped.
pub fn tokenize(sql: &str) -> Result<Vec<Token>, SqlError> {
    let mut lexer = Lexer { chars: sql.chars().collect(), at: 0, line: 1, column: 1 };
    let mut tokens = Vec::new();
    loop {
        lexer.skip_trivia()?;
        let pos = lexer.pos();
        let Some(c) = lexer.peek(0) else {
            tokens.push(Token { kind: TokenKind::Eof, pos });
            return Ok(tokens);
        };
        let kind = if c.is_alphabetic() || c == '_' {
            TokenKind::Word(lexer.take_while(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '@'))
        } else if c.is_ascii_digit() || (c == '.' && lexer.peek(1).is_some_and(|d| d.is_ascii_digit())) {
            lexer.number()?
        } else if c == '\'' {
            TokenKind::String(lexer.quoted('\'', pos, "string")?)
        } else if c == '`' {
            TokenKind::QuotedIdent(lexer.quoted('`', pos, "quoted identifier")?)
        } else if c == '"' {
            TokenKind::QuotedIdent(lexer.quoted('"', pos, "quoted identifier")?)
        } else {
            TokenKind::Symbol(lexer.symbol(pos)?)
        };
        tokens.push(Token { kind, pos });
    }
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
    line: u32,
    column: u32,
}

impl Lexer {
    fn pos(&self) -> Pos {
        Pos { line: self.line, column: self.column }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek(0).filter(|c| keep(*c)) {
            out.push(c);
            self.bump();
        }
        out
    }

    fn skip_trivia(&mut self) -> Result<(), SqlError> {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(c), _) if c.is_whitespace() => {
                    self.bump();
                }
                (Some('-'), Some('-')) => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    let start = self.pos();
                    self.bump();
                    self.bump();
                    loop {
                        match (self.peek(0), self.peek(1)) {
                            (Some('*'), Some('/')) => {
                                self.bump();
                                self.bump();
                                break;
                            }
                            (Some(_), _) => {
                                self.bump();
                            }
                            (None, _) => {
                                return Err(SqlError::new(start, "unterminated comment: expected '*/'"));
                            }
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn number(&mut self) -> Result<TokenKind, SqlError> {
        let start = self.pos();
        let mut text = self.take_while(|c| c.is_ascii_digit());
        let mut decimal = false;
        if self.peek(0) == Some('.') && self.peek(1).is_none_or(|c| c.is_ascii_digit() || !c.is_alphabetic()) {
            decimal = true;
            text.push('.');
            self.bump();
            text.push_str(&self.take_while(|c| c.is_ascii_digit()));
        }
        if matches!(self.peek(0), Some('e' | 'E'))
            && (self.peek(1).is_some_and(|c| c.is_ascii_digit())
                || (matches!(self.peek(1), Some('+' | '-')) && self.peek(2).is_some_and(|c| c.is_ascii_digit())))
        {
            text.push('E');
            self.bump();
            if let Some(sign @ ('+' | '-')) = self.peek(0) {
                text.push(sign);
                self.bump();
            }
            text.push_str(&self.take_while(|c| c.is_ascii_digit()));
            return Ok(TokenKind::Double(text));
        }
        if self.peek(0).is_some_and(|c| c.is_alphabetic() || c == '_') {
            // ksqlDB allows identifiers that start with a digit (`1R`), but not after a point.
            if decimal {
                return Err(SqlError::new(
                    start,
                    format!("invalid number '{text}{}'", self.peek(0).unwrap_or_default()),
                ));
            }
            text.push_str(&self.take_while(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '@'));
            return Ok(TokenKind::Word(text));
        }
        Ok(if decimal { TokenKind::Decimal(text) } else { TokenKind::Integer(text) })
    }

    /// A quoted token; the quote character doubled inside stands for itself.
    fn quoted(&mut self, quote: char, start: Pos, what: &str) -> Result<String, SqlError> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                Some(c) if c == quote => {
                    if self.peek(0) == Some(quote) {
                        self.bump();
                        out.push(quote);
                    } else {
                        return Ok(out);
                    }
                }
                Some(c) => out.push(c),
                None => {
                    return Err(SqlError::new(start, format!("unterminated {what}: expected a closing {quote}")));
                }
            }
        }
    }

    fn symbol(&mut self, pos: Pos) -> Result<Symbol, SqlError> {
        let c = self.peek(0).unwrap_or_default();
        let next = self.peek(1);
        let (symbol, len) = match (c, next) {
            ('-', Some('>')) => (Symbol::Arrow, 2),
            ('=', Some('>')) => (Symbol::FatArrow, 2),
            (':', Some('=')) => (Symbol::Assign, 2),
            ('!', Some('=')) => (Symbol::NotEq, 2),
            ('<', Some('>')) => (Symbol::NotEq, 2),
            ('<', Some('=')) => (Symbol::LtEq, 2),
            ('>', Some('=')) => (Symbol::GtEq, 2),
            ('|', Some('|')) => (Symbol::Concat, 2),
            ('(', _) => (Symbol::LParen, 1),
            (')', _) => (Symbol::RParen, 1),
            ('[', _) => (Symbol::LBracket, 1),
            (']', _) => (Symbol::RBracket, 1),
            (',', _) => (Symbol::Comma, 1),
            (';', _) => (Symbol::Semicolon, 1),
            ('.', _) => (Symbol::Dot, 1),
            ('+', _) => (Symbol::Plus, 1),
            ('-', _) => (Symbol::Minus, 1),
            ('*', _) => (Symbol::Star, 1),
            ('/', _) => (Symbol::Slash, 1),
            ('%', _) => (Symbol::Percent, 1),
            ('=', _) => (Symbol::Eq, 1),
            ('<', _) => (Symbol::Lt, 1),
            ('>', _) => (Symbol::Gt, 1),
            _ => return Err(SqlError::new(pos, format!("unexpected character '{c}'"))),
        };
        for _ in 0..len {
            self.bump();
        }
        Ok(symbol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<TokenKind> {
        tokenize(sql).unwrap().into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn words_numbers_strings_symbols() {
        use TokenKind::*;
        assert_eq!(
            kinds("SELECT a1, 'it''s', 12, 1.5, 2E3, `Mixed Case` FROM t -> x;"),
            vec![
                Word("SELECT".into()),
                Word("a1".into()),
                Symbol(super::Symbol::Comma),
                String("it's".into()),
                Symbol(super::Symbol::Comma),
                Integer("12".into()),
                Symbol(super::Symbol::Comma),
                Decimal("1.5".into()),
                Symbol(super::Symbol::Comma),
                Double("2E3".into()),
                Symbol(super::Symbol::Comma),
                QuotedIdent("Mixed Case".into()),
                Word("FROM".into()),
                Word("t".into()),
                Symbol(super::Symbol::Arrow),
                Word("x".into()),
                Symbol(super::Symbol::Semicolon),
                Eof,
            ]
        );
    }

    #[test]
    fn positions_are_line_and_column() {
        let tokens = tokenize("SELECT\n  a -- comment\n  /* block\n */ , b").unwrap();
        let at: Vec<(u32, u32)> = tokens.iter().map(|t| (t.pos.line, t.pos.column)).collect();
        assert_eq!(at, vec![(1, 1), (2, 3), (4, 5), (4, 7), (4, 8)]);
    }

    #[test]
    fn errors_say_where() {
        let e = tokenize("SELECT 'open").unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (1, 8));
        assert!(e.message.contains("unterminated string"));
        let e = tokenize("SELECT\n  a ? b").unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (2, 5));
    }
}
