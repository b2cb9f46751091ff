//! Pieces of the admin HTTP API.

pub mod prom;
