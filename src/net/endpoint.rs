//! What the slab holds: one endpoint per socket (or per stream waiting for one).

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};

use crate::buffer::Buf;
use crate::net::http::AdminConn;
use crate::net::relay::Relay;
use crate::net::tunnel::Tunnel;
use crate::net::udp::{UdpFlow, UdpPort};

pub enum Endpoint {
    Listener(Listener),
    Tunnel(Box<Tunnel>),
    /// Client: the TCP connect to the server is in progress.
    Dial(Dial),
    /// A proxied connection: a visitor on the server, an inner target on the client.
    Relay(Relay),
    /// Client: a stream whose target name is being resolved.
    Resolving(PendingOpen),
    /// A connection to the admin HTTP API.
    Admin(Box<AdminConn>),
    /// Server: the socket of a public UDP port, with its flows by visitor.
    UdpPort(Box<UdpPort>),
    /// A UDP flow: one datagram stream (on the client, with its socket to the target).
    UdpFlow(Box<UdpFlow>),
    /// Removed in this turn of the loop; the key is freed when the turn ends (see
    /// [`crate::net::reactor::Core::remove`]).
    Closed,
}

pub struct Entry {
    /// Distinguishes this endpoint from later ones that reuse its key.
    pub generation: u64,
    pub ep: Endpoint,
}

pub struct Listener {
    pub sock: TcpListener,
    pub purpose: Purpose,
}

/// What a listener's connections are for.
pub enum Purpose {
    /// Server: clients dialing in.
    Tunnels,
    /// Server: visitors of a public port; the role knows its target and tag.
    Public { port: u16 },
    /// The admin HTTP API.
    Admin,
}

/// Client: a connect to the server in progress.
pub struct Dial {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub deadline: Instant,
}

/// Client: a stream whose target name is being resolved. The server may already send data
/// (and FIN) for it: they wait here, within the stream's window, for the connection.
pub struct PendingOpen {
    pub tunnel: usize,
    pub id: u32,
    pub label: String,
    pub port: u16,
    pub deadline: Instant,
    pub pending: Buf,
    /// Bytes of a PROXY header at the front of `pending` (see [`crate::net::relay::Relay`]).
    pub header: usize,
    /// The client's allow-list admits the target only if it admits every address the name
    /// resolves to: check them all before dialing any.
    pub check_addresses: bool,
}
