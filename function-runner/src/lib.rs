//! The function runner: consumes a topic in batches, invokes a Lambda-compatible (Runtime API) or
//! HTTP function with AWS's self-managed Kafka event, produces what it returns, commits, retries
//! and dead-letters.
//!
//! The decisions are pure and tested on their own (`event`, `batch`, `response`, `retry`,
//! `ordering`, `settings`); the IO shell drives them (`kafka`, `runner`, `invoke`,
//! `runtime_api`, `supervisor`, `server`).

pub mod batch;
pub mod event;
pub mod invoke;
pub mod kafka;
pub mod ordering;
pub mod outputs;
pub mod response;
pub mod retry;
pub mod runner;
pub mod runtime_api;
pub mod server;
pub mod settings;
pub mod supervisor;
