//! The real `agentstream` binary as a child process, for what only a process
//! can show: signals, crashes, and every line it logs.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// A running server process and the lines it writes to stderr.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
    lines: mpsc::UnboundedReceiver<String>,
    pub log: Vec<String>,
}

impl ServerProcess {
    /// Starts the binary on a free port with `args` and `envs`, and waits for
    /// its "serving" line.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentstream"));
        command
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("AGENTSTREAM_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::unbounded_channel();
        // Read stderr on a task of the test's runtime; it ends with the process.
        let reader = async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                if send.send(line).is_err() {
                    break;
                }
            }
        };
        tokio_util::task::TaskTracker::new().spawn(reader);
        let mut process = ServerProcess {
            child,
            base: String::new(),
            lines,
            log: Vec::new(),
        };
        let serving = process.wait_for_line("serving").await;
        let addr = serving
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .unwrap()
            .to_owned();
        process.base = format!("http://{addr}");
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits for a log line containing `text`; every line read is kept in `log`.
    pub async fn wait_for_line(&mut self, text: &str) -> String {
        if let Some(line) = self.log.iter().find(|line| line.contains(text)) {
            return line.clone();
        }
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = self.lines.recv().await {
                self.log.push(line.clone());
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no line with {text:?}; the log:\n{}", self.log.join("\n")),
        }
    }

    /// Waits for the process to exit and reads the rest of its log.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the process exited within 60 s")
            .unwrap();
        while let Some(line) = self.lines.recv().await {
            self.log.push(line);
        }
        status
    }

    /// Sends a signal (`libc`-free: through the `kill` command).
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// The WARN and ERROR lines of the log so far.
    pub fn warnings(&self) -> Vec<&String> {
        self.log
            .iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect()
    }
}
