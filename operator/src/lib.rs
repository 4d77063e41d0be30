//! The Sluice operator's logic, kept free of IO where it can be: the lag autoscaler's decisions
//! and the rendering of a Pipeline into its children (the controller that applies them joins as
//! the operator issue lands).

pub mod autoscale;
pub mod controller;
pub mod leader;
pub mod render;
pub mod scaler;
pub mod server;
pub mod status;
