//! The function runner's logic, kept free of IO where it can be: key-ordered scheduling and
//! offset tracking (batching, the Lambda event, retries and the Runtime API join as the function
//! runner issue lands).

pub mod batch;
pub mod event;
pub mod ordering;
pub mod response;
pub mod retry;
