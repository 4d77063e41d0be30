//! The Sluice processor's SQL engine, pure: it analyses and plans ksqlDB-dialect queries, reads
//! and writes records in ksqlDB's formats, and runs the queries record by record over a
//! [`store::StateStore`] — with no Kafka and no RocksDB inside, so `sluice-processor run`,
//! `sluice-processor test` (the QTT harness in [`qtt`]) and the CLI share one implementation.

pub mod aggregate;
pub mod engine;
pub mod expr;
pub mod format;
pub mod functions;
pub mod qtt;
pub mod query;
pub mod source;
pub mod store;
pub mod value;

pub use engine::{Engine, Outcome, PUSH_PREFIX, PushQuery};
pub use source::Record;
pub use value::Value;
