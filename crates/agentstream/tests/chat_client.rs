//! `agentstream chat`, the terminal client, driven as a child process against
//! the real server binary (also a child process).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tempfile::TempDir;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};
use tokio_util::task::TaskTracker;

const WAIT: Duration = Duration::from_secs(30);

/// What a child writes on one of its streams, as it arrives.
struct Output {
    chunks: mpsc::UnboundedReceiver<String>,
    text: String,
}

impl Output {
    fn read(stream: impl AsyncRead + Unpin + Send + 'static) -> Output {
        let (send, chunks) = mpsc::unbounded_channel();
        // Read on a task of the test's runtime; it ends with the stream.
        TaskTracker::new().spawn(async move {
            let mut stream = stream;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0
                    || send
                        .send(String::from_utf8_lossy(&buffer[..n]).into_owned())
                        .is_err()
                {
                    break;
                }
            }
        });
        Output {
            chunks,
            text: String::new(),
        }
    }

    /// Waits until the output contains `needle`; returns everything so far.
    async fn wait_for(&mut self, needle: &str) -> &str {
        let found = tokio::time::timeout(WAIT, async {
            while !self.text.contains(needle) {
                match self.chunks.recv().await {
                    Some(chunk) => self.text.push_str(&chunk),
                    None => return false,
                }
            }
            true
        })
        .await;
        assert!(
            matches!(found, Ok(true)),
            "no {needle:?} in the output:\n{}",
            self.text
        );
        &self.text
    }

    /// Reads until the stream ends.
    async fn rest(&mut self) -> &str {
        tokio::time::timeout(WAIT, async {
            while let Some(chunk) = self.chunks.recv().await {
                self.text.push_str(&chunk);
            }
        })
        .await
        .expect("the stream ended");
        &self.text
    }
}

/// The server binary on a free port with a fresh SQLite database.
struct Server {
    child: Child,
    base: String,
    log: Output,
    dir: TempDir,
}

impl Server {
    async fn start(delay_ms: u64) -> Server {
        Server::start_with(delay_ms, &[]).await
    }

    /// A server with more flags.
    async fn start_with(delay_ms: u64, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", dir.path().join("agentstream.db").display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentstream"))
            .args(["--bind", "127.0.0.1:0", "--database-url", &database])
            .args(["--scripted-delay-ms", &delay_ms.to_string()])
            .args(args)
            .env("AGENTSTREAM_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut log = Output::read(child.stderr.take().unwrap());
        let text = log.wait_for("serving").await;
        let addr = text
            .lines()
            .find(|line| line.contains("serving"))
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix("addr="))
            })
            .expect("the serving line names the address")
            .to_owned();
        Server {
            child,
            base: format!("http://{addr}"),
            log,
            dir,
        }
    }

    /// Turns API keys on: creates one for `user` with the key command, as
    /// an operator does while the server runs.
    async fn create_key(&self, user: &str) -> String {
        let database = format!(
            "sqlite://{}",
            self.dir.path().join("agentstream.db").display()
        );
        let output = Command::new(env!("CARGO_BIN_EXE_agentstream"))
            .args([
                "keys",
                "create",
                "--user",
                user,
                "--database-url",
                &database,
            ])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    async fn get(&self, path: &str) -> Value {
        let response = agentstream::tls::client_builder()
            .unwrap()
            .build()
            .unwrap()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Stops the server and checks it logged no WARN or ERROR.
    async fn stop_cleanly(self) {
        self.stop_allowing(&[]).await;
    }

    /// Stops the server and checks it logged no WARN or ERROR but those
    /// containing one of `expected`.
    async fn stop_allowing(mut self, expected: &[&str]) {
        send_signal(&self.child, "TERM").await;
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the server exited")
            .unwrap();
        let log = self.log.rest().await;
        assert!(status.success(), "the server exited with {status}:\n{log}");
        let bad: Vec<&str> = log
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .filter(|line| !expected.iter().any(|e| line.contains(e)))
            .collect();
        assert!(bad.is_empty(), "the server logged:\n{}", bad.join("\n"));
    }
}

/// `agentstream chat` as a child with piped stdin, stdout and stderr.
struct ChatClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Output,
    stderr: Output,
}

impl ChatClient {
    fn start(server: &Server, args: &[&str]) -> ChatClient {
        ChatClient::start_at(&server.base, args)
    }

    /// A client of the server at `url`, which may not be there.
    fn start_at(url: &str, args: &[&str]) -> ChatClient {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentstream"))
            .args(["chat", "--url", url])
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("AGENTSTREAM_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        ChatClient {
            stdin: child.stdin.take(),
            stdout: Output::read(child.stdout.take().unwrap()),
            stderr: Output::read(child.stderr.take().unwrap()),
            child,
        }
    }

    async fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin (end of input) and waits for the client to exit.
    async fn finish(&mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the client exited")
            .unwrap()
    }
}

async fn send_signal(child: &Child, name: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let status = Command::new("kill")
        .args(["-s", name, &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -s {name} {pid}");
}

#[tokio::test]
async fn chat_streams_an_onboarding_reply_with_its_tool_call() {
    let server = Server::start(20).await;
    let mut client = ChatClient::start(&server, &["--onboarding"]);
    client.say("Ada").await;
    let reply = r#"Thanks! I saved your name as "Ada". What is your role?"#;
    let out = client.stdout.wait_for(reply).await.to_owned();
    let call = out
        .find(r#"tool update_profile {"field":"name","value":"Ada"}"#)
        .unwrap_or_else(|| panic!("no tool call line in:\n{out}"));
    let result = out
        .find("tool update_profile → {")
        .unwrap_or_else(|| panic!("no tool result line in:\n{out}"));
    let text = out.find(reply).unwrap();
    assert!(call < result && result < text, "out of order:\n{out}");
    assert!(!out.contains('\x1b'), "escape codes on a pipe:\n{out:?}");

    let status = client.finish().await;
    let stdout = client.stdout.rest().await.to_owned();
    assert!(status.success(), "the client exited with {status}");
    assert!(stdout.ends_with(&format!("{reply}\n")), "{stdout:?}");
    assert_eq!(server.get("/v1/profile").await["fields"]["name"], "Ada");

    // --resume replays the finished run from its first event.
    let conversations = server.get("/v1/conversations").await;
    let conversation = conversations["data"][0]["id"].as_str().unwrap();
    let messages = server
        .get(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let run_id = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| m["run_id"].as_str())
        .unwrap()
        .to_owned();
    let mut resumed = ChatClient::start(&server, &["--resume", &run_id]);
    let status = resumed.finish().await;
    assert!(status.success(), "the resuming client exited with {status}");
    assert_eq!(resumed.stdout.rest().await, stdout);

    server.stop_cleanly().await;
}

#[tokio::test]
async fn ctrl_c_during_a_reply_cancels_the_run() {
    // 200 ms a word: the reply takes seconds, time to interrupt it.
    let server = Server::start(200).await;
    let mut client = ChatClient::start(&server, &[]);
    client.say("Tell me a long story about streams").await;
    client.stdout.wait_for("You said").await;
    send_signal(&client.child, "INT").await;

    let notice = client.stderr.wait_for("cancelling run ").await;
    let run_id = notice
        .split("cancelling run ")
        .nth(1)
        .and_then(|rest| rest.get(..36))
        .expect("the notice names the run")
        .to_owned();
    let out = client.stdout.wait_for("[stopped]").await.to_owned();
    assert!(
        !out.contains("real answers."),
        "the whole reply came:\n{out}"
    );

    let run = server.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    let conversation = run["conversation_id"].as_str().unwrap();
    let messages = server
        .get(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let reply = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert_eq!(reply["status"], "cancelled");
    let partial = reply["content"].as_str().unwrap();
    assert!(partial.starts_with("You said"), "{partial:?}");
    assert!(
        out.contains(partial),
        "the stored partial {partial:?} is not in:\n{out}"
    );

    // Still at the prompt after the cancel: end of input ends it cleanly.
    let status = client.finish().await;
    assert!(status.success(), "the client exited with {status}");
    server.stop_cleanly().await;
}

/// A reply that fails (its run ends `failed`, or the server will not start
/// it) is reported and the session goes on; at the end of input the client
/// names the replies that failed and exits 0: the session did not fail.
#[tokio::test]
async fn failed_replies_are_named_and_the_session_ends_well() {
    // Four events cannot hold a reply: every run ends `failed` (event_limit).
    let server = Server::start_with(
        1,
        &["--max-events-per-run", "4", "--max-message-bytes", "64"],
    )
    .await;
    let mut client = ChatClient::start(&server, &[]);
    client.say("hello").await;
    client.stdout.wait_for("[failed]").await;
    client.say(&"too long ".repeat(10)).await;
    client.stderr.wait_for("413").await;
    client.say("still here?").await;
    let status = client.finish().await;
    let stderr = client.stderr.rest().await.to_owned();
    assert!(
        status.success(),
        "the client exited with {status}:\n{stderr}"
    );

    let conversations = server.get("/v1/conversations").await;
    let conversation = conversations["data"][0]["id"].as_str().unwrap();
    let messages = server
        .get(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let runs: Vec<&str> = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "the long line started no run: {messages}");
    let summary = stderr
        .lines()
        .find(|line| line.contains("did not complete"))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    assert_eq!(
        summary,
        format!(
            "3 replies did not complete: reply 1 (run {}), reply 2 (not started), reply 3 (run {})",
            runs[0], runs[1]
        )
    );
    server.stop_allowing(&["run failed"]).await;
}

/// When the session itself fails (no server, or, with keys on, a key it does not take),
/// the client says why and exits non-zero.
#[tokio::test]
async fn a_failed_session_exits_non_zero() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let mut client = ChatClient::start_at(&nowhere, &[]);
    client.say("hello").await;
    let status = client.finish().await;
    let stderr = client.stderr.rest().await.to_owned();
    assert!(!status.success(), "no server, yet exit 0:\n{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");

    // While no key exists any key acts as the local user: turn keys on.
    let server = Server::start(1).await;
    server.create_key("ada").await;
    let mut client = ChatClient::start(&server, &["--key", "ask_not_a_key"]);
    client.say("hello").await;
    let status = client.finish().await;
    let stderr = client.stderr.rest().await.to_owned();
    assert!(!status.success(), "a bad key, yet exit 0:\n{stderr}");
    assert!(stderr.contains("API key"), "{stderr}");
    server.stop_cleanly().await;
}

/// A tool call that waits for approval: the client asks `y/n` on stderr,
/// sends the answer, and the reply goes on; `n` with words denies with them
/// as the reason. The `remember` tool writes the caller's profile.
#[tokio::test]
async fn the_client_asks_before_a_tool_call_that_needs_approval() {
    let config = tempfile::tempdir().unwrap();
    let path = config.path().join("agentstream.toml");
    std::fs::write(
        &path,
        r#"
[agents.chat]
tools = ["remember"]

[tools.remember]
kind = "sql"
description = "Remember a note in the caller's profile."
approval = "always"
sql = """
INSERT INTO profiles (user_id, field, value, updated_at)
VALUES (:caller.user_id, 'note', :body, '2026-11-30T00:00:00Z')
ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value
"""

[tools.remember.parameters.body]
type = "string"
"#,
    )
    .unwrap();
    let server = Server::start_with(5, &["--config", path.to_str().unwrap()]).await;
    let mut client = ChatClient::start(&server, &[]);
    client.say("remember body=milk").await;
    client
        .stderr
        .wait_for(r#"run tool remember {"body":"milk"}? [y/n"#)
        .await;
    client.say("y").await;
    client.stdout.wait_for("remember answered:").await;
    client.say("remember body=car").await;
    client
        .stderr
        .wait_for(r#"run tool remember {"body":"car"}? [y/n"#)
        .await;
    client.say("n not today").await;
    let out = client
        .stdout
        .wait_for("remember failed: the user declined this call: not today")
        .await
        .to_owned();
    assert!(out.contains("approved") && out.contains("denied"), "{out}");
    let status = client.finish().await;
    assert!(status.success(), "the client exited with {status}");
    let profile = server.get("/v1/profile").await;
    assert_eq!(profile["fields"]["note"], "milk", "{profile}");
    server.stop_cleanly().await;
}
