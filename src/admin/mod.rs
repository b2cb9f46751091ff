//! Pieces of the admin HTTP API.

pub mod process;
pub mod prom;
pub mod time;
