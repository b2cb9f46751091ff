//! tcp-forward as a library: the protocol engine, the event loop, the roles and the
//! benchmark harness. The binary (`src/main.rs`) is a thin shell around it; benches and
//! tests use it directly.
//!
//! - `protocol`: pure code: frames, handshake, flow control, the tunnel engine (`session`).
//! - `net`: I/O only: the reactor, endpoints, transport, pumps, splicing.
//! - `role`: the server's and the client's decisions.
//! - `tls`: certificates, keys, trust and fingerprints (the TLS connection is `net::tls`).
//! - `admin`: pieces of the admin HTTP API (Prometheus text, process metrics, timestamps);
//!   `status`: the `status` command, a client of that API.

pub mod admin;
pub mod bench;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod logging;
pub mod net;
pub mod protocol;
pub mod role;
pub mod status;
pub mod tls;
