//! Errors that point at the SQL: line and column, and what was expected.

use std::fmt;

/// A position in the SQL text, 1-based.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column (in characters), from 1.
    pub column: u32,
}

/// Positions are where a node was written, not what it means: two trees are equal whatever
/// their positions (so a parsed tree equals one built by hand, or one parsed from its own
/// `Display` output).
impl PartialEq for Pos {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Pos {}

impl Pos {
    /// Shift a position inside one statement of a script to a position in the whole script.
    pub fn offset_by(self, start: Pos) -> Pos {
        if self.line == 1 {
            Pos { line: start.line, column: start.column + self.column - 1 }
        } else {
            Pos { line: start.line + self.line - 1, column: self.column }
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}:{}", self.line, self.column)
    }
}

/// A parse or analysis error at a position in the SQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SqlError {
    /// Where.
    pub pos: Pos,
    /// What is wrong (and, for syntax errors, what was expected).
    pub message: String,
}

impl SqlError {
    /// An error at `pos`.
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        SqlError { pos, message: message.into() }
    }
}
