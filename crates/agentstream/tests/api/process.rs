//! The real `agentstream` binary as a child process, for what only a process
//! can show: signals, crashes, and every line it logs.

use std::{process::Stdio, time::Duration};

use mock_llm::MockLlm;

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
    /// Starts `agentstream serve` on a free port with the server flags `args`
    /// and `envs`, and waits for its "serving" line.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentstream"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
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

/// The binary's help for `args`, which must succeed.
async fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_agentstream"))
        .args(args)
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{args:?} --help failed");
    String::from_utf8(output.stdout).unwrap()
}

/// Each command's help shows its own flags: the server's ~26 only for the
/// server (`agentstream` alone or `serve`), the database's for `migrate`
/// and `keys`, none of them for `chat`.
#[tokio::test]
async fn each_command_shows_only_its_own_flags() {
    for server in [&[][..], &["serve"][..]] {
        let text = help(server).await;
        for flag in ["--bind", "--db-pool-size", "--database-url", "--max-steps"] {
            assert!(
                text.contains(flag),
                "{server:?} --help lacks {flag}:\n{text}"
            );
        }
    }
    let chat = help(&["chat"]).await;
    assert!(
        chat.contains("--url") && chat.contains("--resume"),
        "{chat}"
    );
    for (command, own) in [
        (&["chat"][..], &["--url"][..]),
        (&["keys"][..], &["--database-url", "--db-pooler"][..]),
        (&["keys", "create"][..], &["--user", "--database-url"][..]),
        (
            &["migrate"][..],
            &["--database-url", "--database-direct-url"][..],
        ),
    ] {
        let text = help(command).await;
        for flag in own {
            assert!(
                text.contains(flag),
                "{command:?} --help lacks {flag}:\n{text}"
            );
        }
        for flag in ["--db-pool-size", "--bind", "--max-steps", "--log-format"] {
            assert!(
                !text.contains(flag),
                "{command:?} --help shows {flag}:\n{text}"
            );
        }
    }
    assert!(!chat.contains("--database-url"), "{chat}");
}

/// Start-up names each agent's provider and model, the demo model as such;
/// on a pipe the log has no colour codes, even with `NO_COLOR` unset.
#[tokio::test]
async fn start_up_names_each_agent_and_logs_plain_lines_on_a_pipe() {
    let mock = MockLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentstream.toml");
    let file = format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\n\n\
         [agents.chat]\nprovider = \"local\"\nmodel = \"mock;deltas=2\"\n",
        mock.base_url()
    );
    std::fs::write(&config, file).unwrap();
    let database = format!("sqlite://{}/db.sqlite", dir.path().display());
    let mut server = ServerProcess::start(
        &[
            "--database-url",
            &database,
            "--config",
            config.to_str().unwrap(),
        ],
        &[("NO_COLOR", ""), ("RUST_LOG", "info")],
    )
    .await;
    let agent = |name: &str| {
        let needle = format!("agent=\"{name}\"");
        server
            .log
            .iter()
            .find(|line| line.contains(" INFO ") && line.contains(&needle))
            .cloned()
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", server.log.join("\n")))
    };
    let onboarding = agent("onboarding");
    assert!(
        onboarding.contains("provider=\"scripted\"")
            && onboarding.contains("kind=\"scripted\"")
            && onboarding.contains("demo model"),
        "{onboarding}"
    );
    let chat = agent("chat");
    assert!(
        chat.contains("provider=\"local\"")
            && chat.contains("kind=\"openai\"")
            && chat.contains("model=\"mock;deltas=2\""),
        "{chat}"
    );
    server.signal("TERM").await;
    assert!(server.wait().await.success());
    let coloured: Vec<&String> = server.log.iter().filter(|l| l.contains('\x1b')).collect();
    assert!(coloured.is_empty(), "escape codes on a pipe: {coloured:?}");
    assert!(server.warnings().is_empty(), "{:?}", server.warnings());
}
