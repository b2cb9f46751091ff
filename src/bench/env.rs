//! The bench's environment: the target services, and the server and client roles as child
//! processes of this same binary (`tcp-forward server <tmp cfg>` and `tcp-forward client
//! 127.0.0.1 <inner port> --tls on|off`) carrying them through a tunnel, plain or TLS, so that
//! the roles' memory and CPU time can be read from /proc. The roles are stopped (SIGTERM, then
//! SIGKILL) on every path out.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::DEFAULT_MAPPER_FILE;

use super::harness::{
    Endpoints, Process, ProcessOptions, Stop, Targets, TempDir, free_ports, free_udp_ports,
    loopback, procfs,
};
use super::report::Tunnel;
use super::workloads::echo_byte;

/// The `[LIMIT]` of the limited public ports (Mbit/s), each way.
pub(super) const LIMIT_MBIT: u64 = 100;

/// How long the roles get to listen and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a role gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Runs of lines of each role's stderr kept for error messages...
const TAIL_LINES: usize = 30;
/// ...and how many of them a message shows.
const TAIL_SHOWN: usize = 10;

pub(super) struct Env {
    pub(super) targets: Targets,
    /// The target services through the tunnel: the server's public ports.
    pub(super) public: Endpoints,
    /// The sink and the source again, through public ports limited to [`LIMIT_MBIT`] (the
    /// echo and the UDP services are the unlimited ones).
    pub(super) limited: Endpoints,
    /// How the client is started again ([`Env::restart_client`]).
    client_start: ClientStart,
    // Field order matters for Drop: the client goes before the server, both before the files.
    pub(super) client: Process,
    pub(super) server: Process,
    _dir: TempDir,
}

/// What the client role is started with.
struct ClientStart {
    exe: PathBuf,
    inner: u16,
    token: String,
    tunnel: Tunnel,
}

impl ClientStart {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("client")
            .arg("127.0.0.1")
            .arg(self.inner.to_string())
            .arg("--tls")
            .arg(self.tunnel.tls_flag())
            .arg("-q");
        cmd.env("TCP_FORWARD_TOKEN", &self.token);
        cmd
    }
}

/// One start of the client, timed ([`Env::restart_client`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientStartTimes {
    /// From spawning the client process to the first echo through a public port.
    pub(super) spawn_to_echo: Duration,
    /// From the server's accepting the client's connection (an open file more in the server)
    /// to that echo; `None` when /proc does not tell.
    pub(super) connect_to_echo: Option<Duration>,
}

/// Target services on loopback and a server and client (child processes of `exe`) carrying
/// them through a TLS tunnel, the roles' default: what the criterion benches measure end to end.
pub struct Harness(Env);

impl Harness {
    pub fn start(exe: &Path) -> Result<Harness, String> {
        Env::start(Some(exe), Tunnel::Tls).map(Harness)
    }

    fn endpoints(&self, tunnel: bool) -> Endpoints {
        if tunnel {
            self.0.public
        } else {
            self.0.targets.addr
        }
    }

    /// The echo service, directly or through the tunnel.
    pub fn echo(&self, tunnel: bool) -> SocketAddr {
        self.endpoints(tunnel).echo
    }

    /// The sink service (reads and discards), directly or through the tunnel.
    pub fn sink(&self, tunnel: bool) -> SocketAddr {
        self.endpoints(tunnel).sink
    }
}

/// The roles started by [`Env::start_roles`], with what they need.
struct Roles {
    public: Endpoints,
    limited: Endpoints,
    client_start: ClientStart,
    client: Process,
    server: Process,
    dir: TempDir,
}

/// Why the roles could not be started, and whether fresh ports might help.
struct StartError {
    message: String,
    retry: bool,
}

impl Env {
    /// Start the targets and the roles carrying `tunnel`; `exe` is this program when `None`.
    pub(super) fn start(exe: Option<&Path>, tunnel: Tunnel) -> Result<Env, String> {
        let targets = Targets::start()
            .map_err(|e| format!("cannot start the target servers on 127.0.0.1: {e}"))?;
        // Ports are picked by binding port 0 and released for the server: another program may
        // take one meanwhile, so a start where the server exits at once is retried with fresh
        // ports (a tunnel that never comes up is not retried: that would only repeat the wait).
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Env::start_roles(&targets, exe, tunnel) {
                Ok(roles) => {
                    return Ok(Env {
                        targets,
                        public: roles.public,
                        limited: roles.limited,
                        client_start: roles.client_start,
                        client: roles.client,
                        server: roles.server,
                        _dir: roles.dir,
                    });
                }
                Err(StartError { message, retry }) if !retry || attempt == 3 => {
                    return Err(message);
                }
                Err(_) => {}
            }
        }
    }

    fn start_roles(
        targets: &Targets,
        exe: Option<&Path>,
        tunnel: Tunnel,
    ) -> Result<Roles, StartError> {
        let fatal = |message: String| StartError {
            message,
            retry: false,
        };
        let exe = match exe {
            Some(exe) => exe.to_path_buf(),
            None => std::env::current_exe()
                .map_err(|e| fatal(format!("cannot find this program's own path: {e}")))?,
        };
        let [inner, echo, sink, source, limited_sink, limited_source] =
            free_ports().map_err(|e| fatal(format!("cannot pick free ports on 127.0.0.1: {e}")))?;
        let [udp_echo, udp_sink] = free_udp_ports()
            .map_err(|e| fatal(format!("cannot pick free UDP ports on 127.0.0.1: {e}")))?;
        let dir = TempDir::new("bench")
            .map_err(|e| fatal(format!("cannot create a temporary directory: {e}")))?;
        let token = random_token().map_err(|e| fatal(format!("cannot make a bench token: {e}")))?;
        // The mapping file goes where the server looks without OUTER_PORTS_FILE.
        // A TLS server without TLS_CERT and TLS_KEY makes a self-signed certificate at start-up;
        // a client with neither --ca nor --fingerprint takes it, the token's proof bound to the
        // session authenticating the server.
        let cfg_text = format!(
            "[DEFAULT]\nINNER_PORT={inner}\nBIND_ADDR=127.0.0.1\nTOKEN={token}\nTLS={}\n",
            tunnel.tls_flag()
        );
        let t = targets.addr;
        let map_text = format!(
            "[MAPPER]\n{echo}={}\n{sink}={}\n{source}={}\n{limited_sink}={}\n{limited_source}={}\n\
             [LIMIT]\n{limited_sink}={LIMIT_MBIT}mbit\n{limited_source}={LIMIT_MBIT}mbit\n\
             [UDP]\n{udp_echo}={}\n{udp_sink}={}\n",
            t.echo, t.sink, t.source, t.sink, t.source, t.udp_echo, t.udp_sink
        );
        let cfg = dir
            .write("server.cfg", &cfg_text)
            .and_then(|cfg| dir.write(DEFAULT_MAPPER_FILE, &map_text).map(|_| cfg))
            .map_err(|e| {
                fatal(format!(
                    "cannot write the bench configuration in {}: {e}",
                    dir.path().display()
                ))
            })?;

        let mut server_cmd = Command::new(&exe);
        server_cmd.arg("server").arg(&cfg).arg("-q");
        let mut server = spawn_role("server", &mut server_cmd).map_err(fatal)?;
        let inner_addr = loopback(inner);
        // The server exiting here is most likely a port taken since it was picked: retry.
        wait_until(
            &mut [&mut server],
            ATTACH_TIMEOUT,
            "listening on the inner port",
            || TcpStream::connect_timeout(&inner_addr, Duration::from_millis(500)).is_ok(),
        )
        .map_err(|(message, exited)| StartError {
            message,
            retry: exited,
        })?;
        // The public ports may be bound just after the inner one.
        thread::sleep(Duration::from_millis(20));

        let client_start = ClientStart {
            exe,
            inner,
            token,
            tunnel,
        };
        let mut client = spawn_role("client", &mut client_start.command()).map_err(fatal)?;
        let public = Endpoints {
            echo: loopback(echo),
            sink: loopback(sink),
            source: loopback(source),
            udp_echo: loopback(udp_echo),
            udp_sink: loopback(udp_sink),
        };
        let limited = Endpoints {
            sink: loopback(limited_sink),
            source: loopback(limited_source),
            ..public
        };
        let what = "working tunnel (a 1-byte echo through the public port)";
        wait_until(
            &mut [&mut server, &mut client],
            ATTACH_TIMEOUT,
            what,
            || probe_echo(public.echo),
        )
        .map_err(|(message, exited)| StartError {
            message,
            retry: exited && server.exited().is_some(),
        })?;
        Ok(Roles {
            public,
            limited,
            client_start,
            client,
            server,
            dir,
        })
    }

    /// Stop the client, wait until the server has let its tunnel go, start a new client and
    /// time it until the first 1-byte echo through the public echo port.
    pub(super) fn restart_client(&mut self) -> Result<ClientStartTimes, String> {
        match self.client.stop() {
            Stop::Exited(_) | Stop::Killed => {}
            Stop::AlreadyExited(status) => {
                return Err(exited_text(&self.client, status, "before it was restarted"));
            }
        }
        // The server closes visitors while no tunnel is attached: a failed echo says the old
        // tunnel is gone.
        let gone = Instant::now() + ATTACH_TIMEOUT;
        while probe_echo(self.public.echo) {
            if Instant::now() >= gone {
                return Err("the old tunnel still carried streams after its client stopped".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
        // Let the server finish with the old tunnel and the refused probe.
        thread::sleep(Duration::from_millis(20));
        let server_pid = self.server.pid();
        let idle_fds = procfs::fd_count(server_pid);
        let start = Instant::now();
        self.client = spawn_role("client", &mut self.client_start.command())?;
        let deadline = start + ATTACH_TIMEOUT;
        let mut accepted: Option<Instant> = None;
        loop {
            if let Some(status) = self.server.exited() {
                return Err(exited_text(&self.server, status, "while a client attached"));
            }
            if let Some(status) = self.client.exited() {
                return Err(exited_text(&self.client, status, "while attaching"));
            }
            // The server holds one more file once it has accepted the client's connection;
            // visitors are sent only from then on, so that they do not count.
            let connected = match (accepted, idle_fds) {
                (Some(_), _) => true,
                (None, Some(idle)) => {
                    let now = procfs::fd_count(server_pid).is_some_and(|n| n > idle);
                    if now {
                        accepted = Some(Instant::now());
                    }
                    now
                }
                (None, None) => true,
            };
            if connected && probe_echo(self.public.echo) {
                let end = Instant::now();
                return Ok(ClientStartTimes {
                    spawn_to_echo: end - start,
                    connect_to_echo: accepted.map(|a| end - a),
                });
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no working tunnel {} s after the client was started again{}",
                    ATTACH_TIMEOUT.as_secs(),
                    tail_text(&self.client)
                ));
            }
            thread::sleep(Duration::from_micros(100));
        }
    }

    /// `Err` with the role's last log lines when a role has exited.
    pub(super) fn check_alive(&mut self, during: &str) -> Result<(), String> {
        for role in [&mut self.server, &mut self.client] {
            if let Some(status) = role.exited() {
                return Err(exited_text(role, status, &format!("before {during}")));
            }
        }
        Ok(())
    }

    /// Stop both roles; returns notes on roles that did not exit cleanly on SIGTERM.
    pub(super) fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for role in [&mut self.client, &mut self.server] {
            let name = role.name().to_string();
            match role.stop() {
                Stop::Exited(status) if status.success() => {}
                Stop::Exited(status) => {
                    notes.push(format!("the {name} role exited with {status} on SIGTERM"));
                }
                Stop::AlreadyExited(status) => {
                    notes.push(format!("the {name} role had already exited ({status})"));
                }
                Stop::Killed => notes.push(format!(
                    "the {name} role did not exit within {} s of SIGTERM and was killed",
                    STOP_TIMEOUT.as_secs()
                )),
            }
        }
        notes
    }
}

/// A role as a child process that never outlives the bench, even one killed without
/// running its guards (a signal, an abort).
fn spawn_role(name: &str, cmd: &mut Command) -> Result<Process, String> {
    let opts = ProcessOptions {
        keep: Some(TAIL_LINES),
        echo: false,
        die_with_parent: true,
        grace: STOP_TIMEOUT,
    };
    Process::spawn(name, cmd, &opts).map_err(|e| format!("cannot start the {name} role: {e}"))
}

/// "the <name> role exited (<status>) <when>" and its last log lines.
fn exited_text(role: &Process, status: ExitStatus, when: &str) -> String {
    format!(
        "the {} role exited ({status}) {when}{}",
        role.name(),
        tail_text(role)
    )
}

/// The last lines of a role's stderr, each on a new line.
fn tail_text(role: &Process) -> String {
    let mut out = String::new();
    for (line, count) in role.last_runs(TAIL_SHOWN) {
        let _ = write!(out, "\n  {}: {line}", role.name());
        if count > 1 {
            let _ = write!(out, " (x{count})");
        }
    }
    out
}

/// Poll `ready` every 50 ms until it holds, a role exits or `timeout` passes. The error says
/// whether a role exited.
fn wait_until(
    roles: &mut [&mut Process],
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), (String, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        for role in roles.iter_mut() {
            if let Some(status) = role.exited() {
                let when = format!("while waiting for a {what}");
                return Err((exited_text(role, status, &when), true));
            }
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut msg = format!("no {what} after {} s", timeout.as_secs());
            for role in roles.iter() {
                let tail = tail_text(role);
                if !tail.is_empty() {
                    let _ = write!(msg, "\nlast lines of the {} role's log:{tail}", role.name());
                }
            }
            return Err((msg, false));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One byte through the echo service; false on any failure.
pub(super) fn probe_echo(addr: SocketAddr) -> bool {
    let wait = Duration::from_millis(500);
    TcpStream::connect_timeout(&addr, wait)
        .and_then(|mut s| {
            s.set_read_timeout(Some(wait))?;
            echo_byte(&mut s, 0x01)
        })
        .is_ok()
}

/// A fresh token for the bench's server and client.
fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    crate::net::sys::random_bytes(&mut bytes)?;
    let mut out = String::from("bench-");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_differ() {
        let a = random_token().expect("token");
        let b = random_token().expect("token");
        assert_eq!(a.len(), "bench-".len() + 64);
        assert_ne!(a, b);
    }
}
