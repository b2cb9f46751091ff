//! The wire protocol, as pure code: no sockets, no clock reads. The reactor feeds it bytes
//! and `now`, and acts on what it returns. See `docs/PROTOCOL.md` for the format.

pub mod caps;
pub mod close;
pub mod flow;
pub mod frame;
pub mod handshake;
pub mod proxy;
pub mod session;
pub mod streams;

pub use close::CloseReason;
pub use frame::{Frame, FrameError, HEADER_LEN, MAX_PAYLOAD};
