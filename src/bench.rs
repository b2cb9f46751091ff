//! `tcp-forward bench`: measure the tunnel against direct loopback on this machine.

/// Options of `tcp-forward bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds per workload, run once directly and once through the tunnel
    #[arg(long, value_name = "N", default_value_t = 2.0)]
    pub seconds: f64,
    /// Print one JSON object on stdout instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Run the benchmark; returns the process exit code.
pub fn run(args: BenchArgs) -> u8 {
    let _ = args;
    eprintln!("tcp-forward bench: not available yet");
    1
}
