//! What the admin API says: the counters and views behind it (`stats`), the Prometheus
//! text (`prom`, `process`), time stamps (`time`), the answers every role shares (`api`)
//! and the dashboard page. The HTTP connections themselves are `net::http`'s, on the same
//! loop; each role's endpoints are in its module.

pub mod api;
pub mod process;
pub mod prom;
pub mod stats;
pub mod time;

/// The dashboard: one self-contained page, served at `GET /`.
pub const DASHBOARD: &str = include_str!("dashboard.html");
