//! The Sluice operator's logic, kept free of IO where it can be: the lag autoscaler's decisions
//! (more of the reconciler joins it as the operator issue lands).

pub mod autoscale;
