//! The terminal side of the client: what it writes (reply text on stdout,
//! notes and errors on stderr), Ctrl-C, and the lines of stdin.

use std::io::{IsTerminal, Write};

use anyhow::Context;

use tokio::sync::mpsc;

use super::SPINNER;

/// The terminal: reply text on stdout; notes and errors on stderr. Colour
/// and the spinner only when the stream is a terminal.
#[derive(Debug)]
pub(super) struct Term {
    /// Stdout is a terminal (and `NO_COLOR` is unset): dim tool lines, spinner.
    pub(super) fancy_out: bool,
    /// Stderr is a terminal (and `NO_COLOR` is unset).
    fancy_err: bool,
    /// The prompt is shown (stdin and stdout are terminals).
    prompt: bool,
    /// Something was written on the current stdout line.
    mid_line: bool,
    /// The spinner frame on screen, if any.
    spinner: Option<usize>,
}

impl Term {
    pub(super) fn new() -> Term {
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let out = std::io::stdout().is_terminal();
        Term {
            fancy_out: out && color,
            fancy_err: std::io::stderr().is_terminal() && color,
            prompt: out && std::io::stdin().is_terminal(),
            mid_line: false,
            spinner: None,
        }
    }

    pub(super) fn write(&mut self, text: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    pub(super) fn prompt(&mut self) -> anyhow::Result<()> {
        if self.prompt {
            let prompt = if self.fancy_out {
                "\x1b[1m>\x1b[0m "
            } else {
                "> "
            };
            self.write(prompt)?;
        }
        Ok(())
    }

    pub(super) fn text(&mut self, text: &str) -> anyhow::Result<()> {
        if !text.is_empty() {
            self.mid_line = !text.ends_with('\n');
            self.write(text)?;
        }
        Ok(())
    }

    pub(super) fn end_line(&mut self) -> anyhow::Result<()> {
        if self.mid_line {
            self.mid_line = false;
            self.write("\n")?;
        }
        Ok(())
    }

    /// A whole line, dimmed on a terminal (tool calls, status).
    pub(super) fn dim_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.clear_spinner()?;
        self.end_line()?;
        let line = if self.fancy_out {
            format!("\x1b[2m{line}\x1b[0m\n")
        } else {
            format!("{line}\n")
        };
        self.write(&line)
    }

    pub(super) fn spin(&mut self) -> anyhow::Result<()> {
        if !self.fancy_out || self.mid_line {
            return Ok(());
        }
        let frame = self.spinner.map_or(0, |f| (f + 1) % SPINNER.len());
        self.spinner = Some(frame);
        let text = format!("\r\x1b[2m{}\x1b[0m ", SPINNER.get(frame).unwrap_or(&"."));
        self.write(&text)
    }

    pub(super) fn clear_spinner(&mut self) -> anyhow::Result<()> {
        if self.spinner.take().is_some() {
            self.write("\r\x1b[2K")?;
        }
        Ok(())
    }

    pub(super) fn stderr_line(&mut self, line: &str, style: &str) -> anyhow::Result<()> {
        self.clear_spinner()?;
        self.end_line()?;
        let mut err = std::io::stderr().lock();
        if self.fancy_err {
            writeln!(err, "\x1b[{style}m{line}\x1b[0m")?;
        } else {
            writeln!(err, "{line}")?;
        }
        Ok(())
    }

    /// A dim note on stderr.
    pub(super) fn note(&mut self, line: &str) -> anyhow::Result<()> {
        self.stderr_line(line, "2")
    }

    /// An error on stderr.
    pub(super) fn error(&mut self, line: &str) -> anyhow::Result<()> {
        self.stderr_line(&format!("error: {line}"), "31")
    }
}

/// Ctrl-C (SIGINT), handled instead of killing the process from the start,
/// so one arriving between two waits is not lost.
#[derive(Debug)]
pub(super) struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub(super) fn new() -> anyhow::Result<Interrupts> {
        Ok(Interrupts {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("cannot listen for Ctrl-C")?,
        })
    }

    pub(super) async fn recv(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Lines of stdin, read on a plain thread: tokio's stdin reads on a blocking
/// task that cannot be cancelled, which would keep the process alive after
/// Ctrl-C at the prompt until Enter. This thread just dies with the process.
pub(super) fn stdin_lines() -> mpsc::Receiver<String> {
    let (send, lines) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if send.blocking_send(line).is_err() {
                break;
            }
        }
    });
    lines
}
