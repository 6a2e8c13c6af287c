//! A writer that keeps every text log record on one line: a value with a
//! newline in it (an upstream's error body, a database message) would
//! otherwise split one record over several lines, and a line-based log
//! collector would take the rest for new records of no level.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Makes [`OneLine`] writers around the writers `M` makes.
#[derive(Debug, Clone, Copy)]
pub struct OneLineWriter<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLineWriter<M> {
    type Writer = OneLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        OneLine(self.0.make_writer_for(meta))
    }
}

/// Writes each buffer it is given as one line: a `\n` or `\r` inside it is
/// written as the two characters `\n` or `\r`, and only a final newline
/// stays. The fmt layer hands over each record whole, in one `write_all`
/// that a single `write` here takes in full, so a buffer is a record.
#[derive(Debug)]
pub struct OneLine<W>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        if !body.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &byte in body {
            match byte {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                other => line.push(other),
            }
        }
        if newline {
            line.push(b'\n');
        }
        // One write of the whole line, so records from threads do not interleave.
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{fmt, prelude::*};

    use super::*;

    fn escaped(input: &str) -> String {
        let mut out = Vec::new();
        let mut writer = OneLine(&mut out);
        writer.write_all(input.as_bytes()).unwrap();
        writer.flush().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn interior_line_breaks_are_escaped_and_the_last_newline_stays() {
        assert_eq!(escaped("plain line\n"), "plain line\n");
        assert_eq!(
            escaped("error: upstream said\nline two\r\nline three\n"),
            "error: upstream said\\nline two\\r\\nline three\n"
        );
        assert_eq!(escaped("a\r\n\n"), "a\\r\\n\n");
        assert_eq!(escaped("no newline\nat end"), "no newline\\nat end");
        assert_eq!(escaped(""), "");
    }

    /// A buffer the fmt layer writes into.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_record_of_the_text_format_is_one_line() {
        let out = Shared::default();
        let sink = out.clone();
        let layer = fmt::layer()
            .with_ansi(false)
            .with_writer(OneLineWriter(move || sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let body = "HTTP 500\n<html>\r\n<body>oops</body>\n</html>";
            tracing::warn!(error = %body, "the upstream failed:\nsee the error");
            tracing::info!("one more");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(
            lines[0].contains(r"the upstream failed:\nsee the error")
                && lines[0].contains(r"HTTP 500\n<html>\r\n<body>oops</body>\n</html>"),
            "{text:?}"
        );
        assert!(lines[1].ends_with("one more"), "{text:?}");
    }
}
