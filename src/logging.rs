//! Process-wide log set-up: one `tracing` subscriber on stderr, text or JSON.
//!
//! Lives apart from `control` (which runs the gateway) and `cli` (which parses flags) so that
//! `cli`, `control` and `demo` all depend on it and none on each other's internals.
//!
//! - The level comes from `RUST_LOG` when it is set (it overrides `log.level` and
//!   `--log-level`, and takes the full `EnvFilter` syntax, e.g. `info,ringway::access=off`);
//!   otherwise from `level`.
//! - ANSI colour only when stderr is a terminal: a pipe, a file or journald gets plain text.
//!   `NO_COLOR` (any value) turns colour off on a terminal too.

use std::io::IsTerminal;

use crate::config::LogFormat;

/// Installs the subscriber; a second call (tests, `demo` inside a process that has one) is a
/// no-op.
pub fn init(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Colour when stderr is a terminal and `NO_COLOR` is unset (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_colour_off_a_terminal() {
        assert!(!colour(false));
    }
}
