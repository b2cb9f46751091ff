//! Why a tunnel ended: one typed reason per way it can end, with the text the logs show and
//! a short stable label for counting (metrics, tests).

use std::fmt;
use std::io;
use std::time::Duration;

use super::handshake::VERSION;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer ended the connection (end of stream).
    PeerClosed,
    /// Reading or writing the tunnel's socket failed.
    Io {
        op: &'static str,
        kind: io::ErrorKind,
        detail: String,
    },
    /// Client: the TCP connect to the server failed.
    ConnectFailed(String),
    /// Client: the TCP connect to the server did not complete in time.
    ConnectTimeout,
    HandshakeTimeout,
    /// Nothing was received for this long.
    DeadPeer {
        silence: Duration,
    },
    /// The first bytes were not a tcp-forward preamble.
    NotTcpForward,
    /// Server with TLS off: the first bytes were a TLS ClientHello.
    PeerSpeaksTls,
    /// Server with TLS on: the client spoke in clear; it was told so.
    TlsRequired,
    /// The TLS layer failed: a certificate check, an alert, bytes that are not TLS.
    Tls(String),
    /// The peer speaks another protocol version; it was told so.
    Version {
        theirs: u16,
    },
    /// Bytes that do not decode: the text says what.
    Malformed(String),
    /// Well-formed frames that break the protocol's rules: the text says which.
    Violation(String),
    /// Server: the client failed authentication; the text was sent to it.
    AuthFailed(&'static str),
    /// Server: the client announced a tag with control characters or spaces.
    InvalidTag,
    /// Client: the server could not prove that it knows the token.
    ServerAuthFailed,
    /// Client: the server refused us, for the reason it gave.
    Refused(String),
    /// The peer announced it is leaving.
    GoAway(String),
    /// The peer stopped reading until even the control headroom filled.
    PeerNotReading {
        queued: usize,
    },
    /// Server: dropped as the oldest of too many connections in the handshake.
    HandshakeLimit,
    /// This process is shutting down.
    Shutdown,
    /// Server: closed through the admin API.
    Kicked,
    /// A local failure (no randomness, no registration with the poller).
    Local(String),
}

impl CloseReason {
    /// Every label [`CloseReason::label`] gives, for counters exported from the start.
    pub const LABELS: &'static [&'static str] = &[
        "peer_closed",
        "reset_by_peer",
        "io_error",
        "connect_failed",
        "connect_timeout",
        "handshake_timeout",
        "dead_peer",
        "not_tcp_forward",
        "tls_unexpected",
        "tls_required",
        "tls_error",
        "version_mismatch",
        "malformed",
        "protocol_violation",
        "auth_failed",
        "invalid_tag",
        "server_auth_failed",
        "refused",
        "goaway",
        "peer_not_reading",
        "handshake_limit",
        "shutdown",
        "kicked",
        "local_error",
    ];

    /// How a handshake that ended this way counts: `auth_failed`, `timeout`, `version` or
    /// `malformed` (bytes that are not a tcp-forward handshake, TLS failures, a peer that
    /// left half-way).
    pub fn handshake_result(&self) -> &'static str {
        match self {
            CloseReason::AuthFailed(_) | CloseReason::ServerAuthFailed => "auth_failed",
            CloseReason::HandshakeTimeout
            | CloseReason::HandshakeLimit
            | CloseReason::ConnectTimeout
            | CloseReason::DeadPeer { .. } => "timeout",
            CloseReason::Version { .. } => "version",
            _ => "malformed",
        }
    }

    pub fn io(op: &'static str, e: &io::Error) -> CloseReason {
        CloseReason::Io {
            op,
            kind: e.kind(),
            detail: e.to_string(),
        }
    }

    /// A short stable name, for counting.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Io {
                kind: io::ErrorKind::ConnectionReset,
                ..
            } => "reset_by_peer",
            CloseReason::Io { .. } => "io_error",
            CloseReason::ConnectFailed(_) => "connect_failed",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::DeadPeer { .. } => "dead_peer",
            CloseReason::NotTcpForward => "not_tcp_forward",
            CloseReason::PeerSpeaksTls => "tls_unexpected",
            CloseReason::TlsRequired => "tls_required",
            CloseReason::Tls(_) => "tls_error",
            CloseReason::Version { .. } => "version_mismatch",
            CloseReason::Malformed(_) => "malformed",
            CloseReason::Violation(_) => "protocol_violation",
            CloseReason::AuthFailed(_) => "auth_failed",
            CloseReason::InvalidTag => "invalid_tag",
            CloseReason::ServerAuthFailed => "server_auth_failed",
            CloseReason::Refused(_) => "refused",
            CloseReason::GoAway(_) => "goaway",
            CloseReason::PeerNotReading { .. } => "peer_not_reading",
            CloseReason::HandshakeLimit => "handshake_limit",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Kicked => "kicked",
            CloseReason::Local(_) => "local_error",
        }
    }

    /// The server turned us down, or TLS failed (a certificate that does not check out):
    /// retrying at once would fix nothing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            CloseReason::Refused(_) | CloseReason::ServerAuthFailed | CloseReason::Tls(_)
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("connection closed by peer"),
            CloseReason::Io { op, detail, .. } => write!(f, "{op} failed: {detail}"),
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            CloseReason::ConnectTimeout => f.write_str("connect timed out"),
            CloseReason::HandshakeTimeout => f.write_str("handshake not completed in time"),
            CloseReason::DeadPeer { silence } => write!(
                f,
                "nothing received for {:.1} s: tunnel is dead",
                silence.as_secs_f64()
            ),
            CloseReason::NotTcpForward => f.write_str("not a tcp-forward peer (bad magic)"),
            CloseReason::PeerSpeaksTls => {
                f.write_str("the client speaks TLS, but this server runs with TLS=off")
            }
            CloseReason::TlsRequired => f.write_str(
                "the server requires TLS: run the client with TLS on (the default, --tls on)",
            ),
            CloseReason::Tls(why) => f.write_str(why),
            CloseReason::Version { theirs } => write!(
                f,
                "unsupported protocol version {theirs} (this side speaks {VERSION})"
            ),
            CloseReason::Malformed(why) | CloseReason::Violation(why) => f.write_str(why),
            CloseReason::AuthFailed(why) => f.write_str(why),
            CloseReason::InvalidTag => f.write_str("invalid tag"),
            CloseReason::ServerAuthFailed => f.write_str("server authentication failed"),
            CloseReason::Refused(why) => write!(f, "refused: {why}"),
            CloseReason::GoAway(why) => write!(f, "peer is going away: {why}"),
            CloseReason::PeerNotReading { queued } => {
                write!(f, "peer is not reading: {queued} bytes queued")
            }
            CloseReason::HandshakeLimit => {
                f.write_str("too many connections in the handshake: dropped the oldest")
            }
            CloseReason::Shutdown => f.write_str("shutting down"),
            CloseReason::Kicked => f.write_str("closed through the admin API"),
            CloseReason::Local(why) => f.write_str(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_labels() {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let r = CloseReason::io("read", &reset);
        assert_eq!(r.label(), "reset_by_peer");
        assert!(r.to_string().starts_with("read failed: "));
        assert_eq!(
            CloseReason::DeadPeer {
                silence: Duration::from_millis(300)
            }
            .to_string(),
            "nothing received for 0.3 s: tunnel is dead"
        );
        assert_eq!(
            CloseReason::Version { theirs: 1 }.to_string(),
            format!("unsupported protocol version 1 (this side speaks {VERSION})")
        );
        assert!(CloseReason::Refused("x".into()).is_refusal());
        assert!(CloseReason::ServerAuthFailed.is_refusal());
        assert!(!CloseReason::PeerClosed.is_refusal());
    }

    /// One reason of every kind: a new kind must be added here, and its label to LABELS.
    fn one_of_each() -> Vec<CloseReason> {
        let e = io::Error::from(io::ErrorKind::ConnectionReset);
        let all = vec![
            CloseReason::PeerClosed,
            CloseReason::io("read", &e),
            CloseReason::io("read", &io::Error::from(io::ErrorKind::BrokenPipe)),
            CloseReason::ConnectFailed(String::new()),
            CloseReason::ConnectTimeout,
            CloseReason::HandshakeTimeout,
            CloseReason::DeadPeer {
                silence: Duration::ZERO,
            },
            CloseReason::NotTcpForward,
            CloseReason::PeerSpeaksTls,
            CloseReason::TlsRequired,
            CloseReason::Tls(String::new()),
            CloseReason::Version { theirs: 0 },
            CloseReason::Malformed(String::new()),
            CloseReason::Violation(String::new()),
            CloseReason::AuthFailed(""),
            CloseReason::InvalidTag,
            CloseReason::ServerAuthFailed,
            CloseReason::Refused(String::new()),
            CloseReason::GoAway(String::new()),
            CloseReason::PeerNotReading { queued: 0 },
            CloseReason::HandshakeLimit,
            CloseReason::Shutdown,
            CloseReason::Kicked,
            CloseReason::Local(String::new()),
        ];
        // Exhaustive on purpose: a new variant fails to compile until it is listed above.
        for r in &all {
            match r {
                CloseReason::PeerClosed
                | CloseReason::Io { .. }
                | CloseReason::ConnectFailed(_)
                | CloseReason::ConnectTimeout
                | CloseReason::HandshakeTimeout
                | CloseReason::DeadPeer { .. }
                | CloseReason::NotTcpForward
                | CloseReason::PeerSpeaksTls
                | CloseReason::TlsRequired
                | CloseReason::Tls(_)
                | CloseReason::Version { .. }
                | CloseReason::Malformed(_)
                | CloseReason::Violation(_)
                | CloseReason::AuthFailed(_)
                | CloseReason::InvalidTag
                | CloseReason::ServerAuthFailed
                | CloseReason::Refused(_)
                | CloseReason::GoAway(_)
                | CloseReason::PeerNotReading { .. }
                | CloseReason::HandshakeLimit
                | CloseReason::Shutdown
                | CloseReason::Kicked
                | CloseReason::Local(_) => {}
            }
        }
        all
    }

    #[test]
    fn labels_are_listed_once_each() {
        let labels: Vec<&str> = one_of_each().iter().map(CloseReason::label).collect();
        for l in &labels {
            assert!(CloseReason::LABELS.contains(l), "{l} is not in LABELS");
        }
        for l in CloseReason::LABELS {
            assert!(labels.contains(l), "{l} in LABELS is no reason's label");
        }
        let mut sorted = CloseReason::LABELS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), CloseReason::LABELS.len());
    }
}
