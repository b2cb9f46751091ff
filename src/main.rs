//! tcp-forward: a reverse TCP tunnel. The thin edge: parse the command line, load the
//! configuration, start logging, run a role, and map failures to exit codes
//! (2: configuration error, 1: run-time failure such as a port that cannot be bound).
//! `status` is a client of a running role's admin API: 1 when it cannot get an answer.

use std::process::ExitCode;

use clap::Parser;

use tcp_forward::cli::{Cli, Command};
use tcp_forward::role::{client, server};
use tcp_forward::{bench, config, logging, status, tls};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => {
            let cfg = match config::load_server(&args.cfg_file) {
                Ok(cfg) => cfg,
                Err(e) => return config_error(&e),
            };
            let level = match logging::level(&args.log, cfg.log_level) {
                Ok(l) => l,
                Err(e) => return config_error(&e),
            };
            logging::init(level);
            for w in &cfg.warnings {
                log::warn!("{w}");
            }
            exit(server::run(cfg, args.log))
        }
        Command::Client(args) => {
            let input = args.input();
            let cfg = match config::client_from_args(&input) {
                Ok(cfg) => cfg,
                Err(e) => return config_error(&e),
            };
            let level = match logging::level(&args.log, cfg.log_level) {
                Ok(l) => l,
                Err(e) => return config_error(&e),
            };
            logging::init(level);
            for w in &cfg.warnings {
                log::warn!("{w}");
            }
            exit(client::run(cfg, input, args.log))
        }
        Command::Status(args) => ExitCode::from(status::run(&args)),
        Command::Cert(args) => match tls::write_cert_files(&args.dir, &args.names) {
            Ok((cert, key, fp)) => {
                println!("wrote {} and {}", key.display(), cert.display());
                println!("SHA-256 fingerprint {}", tls::format_fingerprint(&fp));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tcp-forward: {e}");
                ExitCode::from(1)
            }
        },
        Command::Bench(args) => ExitCode::from(bench::run(args)),
    }
}

fn config_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("tcp-forward: {e}");
    ExitCode::from(2)
}

fn exit(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("tcp-forward: {e}");
            ExitCode::from(1)
        }
    }
}
