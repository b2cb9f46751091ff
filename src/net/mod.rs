//! I/O only: the poll loop, the endpoints it owns, the tunnel's transport (plain or TLS), the two pumps
//! that move stream bytes (and the bandwidth limits they obey), the admin API's HTTP connections, the UDP ports and flows (`udp.rs`, with `dgram.rs` for
//! many datagrams per system call), splicing, name resolution and the few raw OS calls. What the
//! bytes mean is `protocol`'s business; what to do with a connection is `role`'s.

pub mod admin_io;
pub mod dgram;
pub mod drive;
pub mod endpoint;
pub mod http;
pub mod limit;
pub mod pump;
pub mod reactor;
pub mod relay;
pub mod resolve;
pub mod splice;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod tunnel;
pub mod udp;
