//! PostgreSQL restarting under load, on a cluster of the test's own (the
//! shared one must not go down under the other tests).

use std::{path::PathBuf, time::Duration};

use futures_util::{StreamExt, future::join_all};
use serde_json::json;
use tokio::process::Command;

use crate::helpers::*;

/// A throwaway PostgreSQL cluster made with the installed binaries.
pub struct TempCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl TempCluster {
    /// Makes and starts a cluster in a temporary folder, on a free port.
    pub async fn create() -> TempCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let as_postgres = std::env::var("USER").map_or(true, |u| u == "root")
            && Command::new("id")
                .arg("-u")
                .output()
                .await
                .unwrap()
                .stdout
                .starts_with(b"0");
        let cluster = TempCluster {
            bin,
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(cluster.dir.path())
                .status()
                .await
                .unwrap();
            assert!(status.success());
        }
        let data = cluster.data();
        cluster
            .run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust"])
            .await;
        cluster.start().await;
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    async fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let output = command.args(args).output().await.unwrap();
        assert!(
            output.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server and waits until it answers.
    pub async fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        )
        .await;
    }

    /// Stops the server (fast: open sessions are cut).
    pub async fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .await;
    }

    /// Its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

/// With runs in flight, PostgreSQL goes down and comes back: every stream
/// ends (no hang), runs that could not finish end `failed`, requests get 503
/// at once while it is down, and the pool recovers by itself.
#[tokio::test]
async fn database_restart_under_load() {
    let cluster = TempCluster::create().await;
    let url = cluster.url();
    let mut app = spawn_app_with(Backend::Sqlite, |config| {
        config.database_url = url;
        config.scripted_delay_ms = 100;
        config.db_pool_timeout = 30;
    })
    .await;
    // Waits that began during the outage end after it, slowly, and say so.
    app.expect_log("time to acquire exceeded slow threshold");
    let conversations = join_all((0..10).map(|_| app.create_conversation("chat"))).await;
    let mut streams = Vec::new();
    let mut runs = Vec::new();
    for conversation in &conversations {
        let response = app
            .stream_run(conversation, json!({ "input": "a long story please" }))
            .await;
        let mut stream = Box::pin(events(response));
        let first = stream.next().await.unwrap();
        assert_eq!(first.event, "run.started");
        runs.push(first.data["run_id"].as_str().unwrap().to_owned());
        streams.push(stream);
    }

    cluster.stop().await;
    // Every stream ends, with `done(failed)` or with the error saying its
    // end could not be stored yet: none hangs.
    let ends = tokio::time::timeout(
        Duration::from_secs(60),
        join_all(streams.into_iter().map(|s| s.collect::<Vec<_>>())),
    )
    .await
    .expect("every stream ended within 60 s");
    for events in &ends {
        let last = events.last().unwrap();
        let failed = last.event == "done" && last.data["status"] == "failed";
        let unavailable = last.event == "error" && last.data["code"] == "unavailable";
        assert!(failed || unavailable, "{events:#?}");
    }
    // Once the probe has seen it, requests are refused at once, not after
    // the 30 s pool timeout.
    let store = app.state.store().clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !store.is_down() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the probe noticed within 10 s");
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        app.client.get(app.url("/v1/conversations")).send(),
    )
    .await
    .expect("answered well before the pool timeout")
    .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the process itself is fine");

    cluster.start().await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.is_down() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the probe saw the database back within 30 s");
    // The runs cut off store their end once the database is back.
    for run in &runs {
        let run = app.run_until_terminal(run).await;
        assert_eq!(run["status"], "failed", "{run}");
        // Its log ends with the stored error and `done`.
        let events = app.follow(run["id"].as_str().unwrap()).await;
        assert_eq!(done_status(&events), "failed");
    }
    app.accept_logs_so_far();
    // New runs succeed, with no restart of agentstream.
    let conversation = app.create_conversation("onboarding").await;
    let events = read_all(
        app.stream_run(&conversation, json!({ "input": "Ada" }))
            .await,
    )
    .await;
    assert_eq!(done_status(&events), "completed");
    app.stop().await;
    cluster.stop().await;
}
