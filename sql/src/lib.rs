//! The SQL front end of Sluice's processor: the ksqlDB dialect parsed into a syntax tree with
//! positions, and errors that say where (line and column) and what was expected.
//!
//! Pure: no Kafka, no RocksDB, no IO, so the operator and the CLI can check SQL without linking
//! the processor's runtime.

pub mod ast;
pub mod catalog;
pub mod error;
pub mod lexer;
pub mod parser;
pub mod types;

pub use error::{Pos, SqlError};
pub use parser::{
    MAX_DEPTH, MAX_JOINS, SQL_STACK_SIZE, parse_expression, parse_statement, parse_statements, parse_type,
};
pub use types::SqlType;
