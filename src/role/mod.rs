//! What each role decides, behind [`Role`]: the server accepts clients and visitors and
//! opens streams; the client dials the server and connects inner targets.

pub mod client;
pub mod server;

pub use crate::net::reactor::Role;
