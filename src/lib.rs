//! tcp-forward as a library: the roles, the protocol engine and the benchmark harness.
//! The binary (`src/main.rs`) is a thin shell around it; benches and tests use it directly.

pub mod bench;
pub mod buffer;
pub mod cli;
pub mod client;
pub mod config;
pub mod logging;
pub mod protocol;
pub mod reactor;
pub mod relay;
pub mod resolve;
pub mod server;
pub mod sys;
pub mod tunnel;
