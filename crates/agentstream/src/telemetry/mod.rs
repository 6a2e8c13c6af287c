//! Logs and metrics: levels from `RUST_LOG` (default `info`, the MCP SDK's
//! own lines off: agentstream says what its MCP servers do), text or JSON
//! lines on stderr, one line a record; the Prometheus figures are in
//! [`metrics`]. A leaf: it names nothing else of the crate, so every module
//! may record into it (callers pass labels, not their types).

pub mod metrics;
pub mod one_line;

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// The levels logged when `RUST_LOG` is not set. agentstream's own lines say
/// what an MCP server does (started, lost with why, up again); the SDK's say
/// how, several an attempt while a server is down, at ERROR: they are for
/// `RUST_LOG=info,rmcp=debug`.
const DEFAULT_FILTER: &str = "info,rmcp=off";

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: Format) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(colour(
                        std::io::stderr().is_terminal(),
                        std::env::var_os("NO_COLOR"),
                    ))
                    .with_writer(one_line::OneLineWriter(std::io::stderr)),
            )
            .init(),
        // JSON escapes line breaks in strings already, and has no colour.
        Format::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

/// Colour only on a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>): escape codes in a file or
/// a log collector are noise.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
