//! Command line: `server`, `client`, `status`, `cert` and `bench`, parsed with clap's derive API.
//!
//! The positional names (`cfg_file`, `server_ip`, `server_port`) are those of the original
//! tcp-forward, so its users find the same usage text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ClientInput;

#[derive(Debug, Parser)]
#[command(
    name = "tcp-forward",
    version,
    about = "Reverse TCP tunnel: publish ports of a private network through a public host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run on the public host: accept client tunnels and listen on the mapped public ports.
    Server(ServerArgs),
    /// Run inside the private network: keep a tunnel to the server and dial inner targets.
    Client(Box<ClientArgs>),
    /// Show what a running server or client reports through its admin API.
    Status(StatusArgs),
    /// Write a new key and self-signed certificate (tcp-forward.key, tcp-forward.crt) for
    /// the server's TLS_KEY and TLS_CERT, and print the fingerprint clients can pin.
    Cert(CertArgs),
    /// Measure the tunnel against direct loopback on this machine and print a table.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// config file path
    #[arg(value_name = "cfg_file")]
    pub cfg_file: PathBuf,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// server ip (an IPv4 or IPv6 address, or a host name)
    #[arg(value_name = "server_ip", required_unless_present = "config")]
    pub server_ip: Option<String>,
    /// server port (the server's INNER_PORT)
    #[arg(value_name = "server_port", required_unless_present = "config")]
    pub server_port: Option<String>,
    /// Read SERVER_IP, SERVER_PORT, TAG, TOKEN, ALLOW and the others from a forward_client.cfg file
    #[arg(long, value_name = "FILE", conflicts_with_all = ["server_ip", "server_port"])]
    pub config: Option<PathBuf>,
    /// Tag to announce: the server sends this client the ports mapped to it [default: default]
    #[arg(long)]
    pub tag: Option<String>,
    /// Shared secret proving this client to the server (or set TCP_FORWARD_TOKEN)
    #[arg(long, env = "TCP_FORWARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Encrypt the tunnel with TLS 1.3: on or off (the server's TLS must match) [default: on]
    #[arg(long, value_name = "on|off")]
    pub tls: Option<String>,
    /// Verify the server's certificate chain against this CA bundle (PEM)
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry under --ca [default: server_ip]
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Accept only a server certificate with this SHA-256 fingerprint (hex, colons allowed)
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<String>,
    /// Serve /healthz, /metrics and /api/status on this address (e.g. 127.0.0.1:9090);
    /// off loopback it needs TCP_FORWARD_ADMIN_TOKEN or ADMIN_TOKEN
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Seconds allowed to connect an inner target (1 to 86400) [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout: Option<String>,
    /// Connect only targets this list allows: comma-separated CIDR:PORTS or NAME:PORTS
    /// (PORTS: a port, FIRST-LAST or *), or * for any [default: any]
    #[arg(long, value_name = "LIST")]
    pub allow: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Address of the admin API (the ADMIN_ADDR it listens on): host:port or [IPv6]:port
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub admin: String,
    /// Bearer token of the admin API; better set TCP_FORWARD_ADMIN_TOKEN, kept out of `ps`
    #[arg(
        long,
        value_name = "T",
        env = "TCP_FORWARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print one JSON object (what the API answered) instead of tables
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// folder to write tcp-forward.key (mode 0600) and tcp-forward.crt into
    #[arg(value_name = "dir")]
    pub dir: PathBuf,
    /// A name for the certificate (host name or IP address); repeat for more
    #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_string()])]
    pub names: Vec<String>,
}

impl ClientArgs {
    /// What the client's configuration is made from (the log flags are applied apart).
    pub fn input(&self) -> ClientInput {
        ClientInput {
            server_ip: self.server_ip.clone(),
            server_port: self.server_port.clone(),
            config: self.config.clone(),
            tag: self.tag.clone(),
            token: self.token.clone(),
            tls: self.tls.clone(),
            ca: self.ca.clone(),
            server_name: self.server_name.clone(),
            fingerprint: self.fingerprint.clone(),
            admin: self.admin.clone(),
            connect_timeout: self.connect_timeout.clone(),
            admin_token: std::env::var("TCP_FORWARD_ADMIN_TOKEN").ok(),
            allow: self.allow.clone(),
        }
    }
}

/// Overrides of the configured log level.
#[derive(Debug, Args, Clone, Default)]
pub struct LogArgs {
    /// More output (-v: DEBUG, -vv: TRACE)
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with_all = ["quiet", "log_level"])]
    pub verbose: u8,
    /// Less output (-q: WARN, -qq: ERROR)
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "log_level")]
    pub quiet: u8,
    /// Log level: ERROR, WARN, INFO, DEBUG or TRACE
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}
