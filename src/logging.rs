//! Logging to stderr with simplelog; the level comes from the config file, overridden by
//! `-v`/`-q`/`--log-level`.

use std::io::IsTerminal;

use log::LevelFilter;
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

use crate::cli::LogArgs;
use crate::config::{ConfigError, parse_level};

/// The effective level: flags win over the configured level, which wins over INFO.
pub fn level(args: &LogArgs, configured: Option<LevelFilter>) -> Result<LevelFilter, ConfigError> {
    if let Some(name) = &args.log_level {
        return parse_level(name).ok_or_else(|| {
            ConfigError::cli(
                "--log-level",
                format!("unknown log level {name:?} (ERROR, WARN, INFO, DEBUG, TRACE)"),
            )
        });
    }
    const LADDER: [LevelFilter; 6] = [
        LevelFilter::Off,
        LevelFilter::Error,
        LevelFilter::Warn,
        LevelFilter::Info,
        LevelFilter::Debug,
        LevelFilter::Trace,
    ];
    let base = configured.unwrap_or(LevelFilter::Info) as i32;
    let idx = (base + i32::from(args.verbose) - i32::from(args.quiet)).clamp(0, 5);
    Ok(LADDER[idx as usize])
}

/// Install the stderr logger. Safe to call once per process. The logger passes every level
/// and `log`'s global maximum filters, so that a reload can change the level.
pub fn init(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    let color = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let _ = TermLogger::init(LevelFilter::Trace, config, TerminalMode::Stderr, color);
    log::set_max_level(level);
}
