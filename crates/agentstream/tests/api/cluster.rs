//! Several nodes on one PostgreSQL, as real processes: resume on any node,
//! cancel from any node, a dead node's runs, the policies across nodes, a
//! database restart, and a real load balancer in front.

use std::time::Duration;

use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};

use crate::{helpers::*, process::ServerProcess};

/// Lease timings short enough for tests: renew every 200 ms, dead after 1.5 s.
const LEASES: [&str; 4] = ["--lease-renew-ms", "200", "--lease-expire-ms", "1500"];

async fn node(db: &TestDb, name: &str, delay_ms: &str) -> ServerProcess {
    let mut args = vec![
        "--database-url",
        &db.url,
        "--node-id",
        name,
        "--scripted-delay-ms",
        delay_ms,
        "--max-runs-per-user",
        "1000",
    ];
    args.extend(LEASES);
    ServerProcess::start(&args, &[("RUST_LOG", "info")]).await
}

async fn create_conversation(client: &reqwest::Client, node: &ServerProcess, kind: &str) -> String {
    let body: Value = client
        .post(node.url("/v1/conversations"))
        .json(&json!({ "kind": kind }))
        .fetch_json()
        .await;
    body["id"].as_str().unwrap().to_owned()
}

async fn start_stream(
    client: &reqwest::Client,
    node: &ServerProcess,
    conversation: &str,
    input: &str,
) -> reqwest::Response {
    let response = client
        .post(node.url(&format!("/v1/conversations/{conversation}/runs")))
        .header("accept", "text/event-stream")
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

async fn events_via(
    client: &reqwest::Client,
    node: &ServerProcess,
    run: &str,
    after: usize,
) -> Vec<SseEvent> {
    let response = client
        .get(node.url(&format!("/v1/runs/{run}/events")))
        .header("last-event-id", after.to_string())
        .send()
        .await
        .unwrap();
    read_all(response).await
}

async fn stop(mut node: ServerProcess) {
    node.signal("TERM").await;
    assert!(node.wait().await.success());
    assert!(
        node.warnings().is_empty(),
        "{:#?}\nthe log:\n{}",
        node.warnings(),
        node.log.join("\n")
    );
}

/// A run started through A is followed live through B and resumed through B
/// from every cursor: exactly once, in order, ending with `done`. A cancel
/// through B lands on A at its next safe point.
#[tokio::test]
async fn resume_and_cancel_across_nodes() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = node(&db, "node-a", "20").await;
    let b = node(&db, "node-b", "20").await;
    let client = client();

    let conversation = create_conversation(&client, &a, "onboarding").await;
    let response = start_stream(&client, &a, &conversation, "Ada").await;
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    // B follows it live from the start while A streams it.
    let (via_a, via_b) = tokio::join!(read_all(response), events_via(&client, &b, &run, 0));
    assert_eq!(via_a, via_b);
    assert_eq!(done_status(&via_a), "completed");
    for k in 0..via_a.len() {
        assert_eq!(
            events_via(&client, &b, &run, k).await,
            via_a[k..],
            "cursor {k}"
        );
    }

    // Cancel through B a run A drives.
    let slow = create_conversation(&client, &a, "chat").await;
    let response = start_stream(&client, &a, &slow, "tell me a long story").await;
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let mut stream = Box::pin(events(response));
    let mut seen = vec![stream.next().await.unwrap(), stream.next().await.unwrap()];
    let cancelled = client
        .post(b.url(&format!("/v1/runs/{run}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    seen.extend(stream.collect::<Vec<_>>().await);
    assert_eq!(done_status(&seen), "cancelled");
    stop(a).await;
    stop(b).await;
    db.drop_schema().await;
}

/// A cursor past a run's last event, resumed on a node that does not drive
/// the run: the stream sends nothing and ends when the run ends.
#[tokio::test]
async fn resume_past_the_end_on_another_node() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = node(&db, "node-a", "30").await;
    let b = node(&db, "node-b", "30").await;
    let client = client();
    let conversation = create_conversation(&client, &a, "chat").await;
    let response = start_stream(&client, &a, &conversation, "tell me a long story").await;
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let past = client
        .get(b.url(&format!("/v1/runs/{run}/events")))
        .header("last-event-id", "100000")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 200, "the run is still going");
    let (seen, whole) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), events(past).collect::<Vec<_>>()),
        read_all(response)
    );
    let seen = seen.expect("B's stream ended with the run");
    assert!(seen.is_empty(), "nothing after the cursor: {seen:#?}");
    assert_eq!(done_status(&whole), "completed");
    stop(a).await;
    stop(b).await;
    db.drop_schema().await;
}

/// SIGKILL A mid-run: B marks the run `interrupted` once, within the lease
/// time, and a client following it through B gets `done`.
#[tokio::test]
async fn a_dead_nodes_runs_are_interrupted_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut a = node(&db, "node-a", "200").await;
    let b = node(&db, "node-b", "200").await;
    let c = node(&db, "node-c", "200").await;
    let client = client();
    let conversation = create_conversation(&client, &a, "chat").await;
    let response = start_stream(&client, &a, &conversation, "tell me a long story").await;
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let mut first = Box::pin(events(response));
    let seen = [first.next().await.unwrap(), first.next().await.unwrap()];
    // Follow through B while A dies.
    let follower = tokio::time::timeout(Duration::from_secs(30), events_via(&client, &b, &run, 0));
    let kill = async {
        a.signal("KILL").await;
        assert!(!a.wait().await.success());
    };
    let (followed, ()) = tokio::join!(follower, kill);
    let followed = followed.expect("B ended the stream within the lease time and a sweep");
    assert_eq!(&followed[..seen.len()], &seen[..]);
    assert_eq!(done_status(&followed), "interrupted");
    let log = events_via(&client, &c, &run, 0).await;
    assert_eq!(
        log.iter().filter(|e| e.event == "done").count(),
        1,
        "one done, though B and C both sweep"
    );
    let status: Value = client
        .get(c.url(&format!("/v1/runs/{run}")))
        .fetch_json()
        .await;
    assert_eq!(status["status"], "interrupted");
    // The conversation is free again: a new run starts through C.
    let next = start_stream(&client, &c, &conversation, "and now?").await;
    assert_eq!(done_status(&read_all(next).await), "completed");
    // The sweep is the only warning, and only one node wrote the end.
    let mut warnings = 0;
    for mut survivor in [b, c] {
        survivor.signal("TERM").await;
        assert!(survivor.wait().await.success());
        for line in survivor.warnings() {
            assert!(line.contains("stopped renewing its lease"), "{line}");
            warnings += 1;
        }
    }
    assert!(warnings >= 1, "the sweep was logged");
    db.drop_schema().await;
}

/// Double-texting through A and B at the same moment: one run wins, the
/// others get 409; the per-user limit holds across nodes too.
#[tokio::test]
async fn policies_hold_across_nodes() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut args = vec![
        "--database-url",
        db.url.as_str(),
        "--scripted-delay-ms",
        "50",
        "--max-runs-per-user",
        "3",
    ];
    args.extend(LEASES);
    let a = ServerProcess::start(&args, &[]).await;
    let b = ServerProcess::start(&args, &[]).await;
    let client = client();
    let conversation = create_conversation(&client, &a, "chat").await;
    let starts = (0..20).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        client
            .post(node.url(&format!("/v1/conversations/{conversation}/runs")))
            .json(&json!({ "input": format!("racer {i}") }))
            .send()
    });
    let responses: Vec<reqwest::Response> = join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    let winner: Value = responses
        .into_iter()
        .find(|r| r.status() == 202)
        .unwrap()
        .json()
        .await
        .unwrap();
    let winner = winner["id"].as_str().unwrap();
    assert_eq!(
        done_status(&events_via(&client, &b, winner, 0).await),
        "completed"
    );

    let mut conversations = Vec::new();
    for _ in 0..8 {
        conversations.push(create_conversation(&client, &a, "chat").await);
    }
    let starts = conversations.iter().enumerate().map(|(i, c)| {
        let node = if i % 2 == 0 { &a } else { &b };
        client
            .post(node.url(&format!("/v1/conversations/{c}/runs")))
            .json(&json!({ "input": "hi" }))
            .send()
    });
    let statuses: Vec<u16> = join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
    stop(a).await;
    stop(b).await;
    db.drop_schema().await;
}

/// A second server on the same SQLite file is refused at start-up.
#[tokio::test]
async fn sqlite_runs_one_node() {
    let db = TestDb::new(Backend::Sqlite).await;
    let first = ServerProcess::start(&["--database-url", &db.url], &[]).await;
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentstream"))
        .args(["--bind", "127.0.0.1:0", "--database-url", &db.url])
        .output()
        .await
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another agentstream server is using"),
        "{stderr}"
    );
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    stop(first).await;
}

/// End to end through a real load balancer: nginx round-robins two nodes
/// with the shipped `deploy/nginx.conf`; a client whose connection is cut
/// mid-run reconnects through nginx with `Last-Event-ID`, lands on either
/// node, and receives every event exactly once.
#[tokio::test]
async fn through_nginx() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = node(&db, "node-a", "30").await;
    let b = node(&db, "node-b", "30").await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/nginx.conf"
    ))
    .unwrap();
    let config = shipped
        .replace("127.0.0.1:8001", a.base.trim_start_matches("http://"))
        .replace("127.0.0.1:8002", b.base.trim_start_matches("http://"))
        .replace("listen 127.0.0.1:8000", &format!("listen 127.0.0.1:{port}"));
    assert_ne!(config, shipped);
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let nginx = which_nginx();
    let mut proxy = tokio::process::Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        // One process, no workers: nothing outlives the test if it fails.
        .args([
            "-g",
            "daemon off; master_process off; error_log stderr notice; pid nginx.pid; user root;",
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Ready once its port accepts a connection.
    tokio::time::timeout(Duration::from_secs(30), async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(proxy.try_wait().unwrap().is_none(), "nginx exited");
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("nginx listens within 30 s");
    let base = format!("http://127.0.0.1:{port}");
    // A fresh connection per request, as a browser after a network cut.
    let client = client_builder().pool_max_idle_per_host(0).build().unwrap();
    let conversation: Value = client
        .post(format!("{base}/v1/conversations"))
        .json(&json!({ "kind": "chat" }))
        .fetch_json()
        .await;
    let response = client
        .post(format!(
            "{base}/v1/conversations/{}/runs",
            conversation["id"].as_str().unwrap()
        ))
        .header("accept", "text/event-stream")
        .json(&json!({ "input": "tell me a long story" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let seen: Vec<SseEvent> = events(response).take(4).collect().await;
    assert_eq!(seen.len(), 4);
    // The connection is cut here; two reconnects in a row reach both nodes.
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(format!("{base}/v1/runs/{run}/events"))
            .header("last-event-id", "4")
            .send()
            .await
            .unwrap();
        resumed.push(read_all(response).await);
    }
    assert_eq!(resumed[0], resumed[1], "either node gives the same rest");
    let whole: Vec<SseEvent> = seen.iter().chain(&resumed[0]).cloned().collect();
    let seqs: Vec<String> = whole.iter().map(|e| e.id.clone()).collect();
    let expected: Vec<String> = (1..=whole.len()).map(|n| n.to_string()).collect();
    assert_eq!(seqs, expected, "every event once, in order");
    assert_eq!(done_status(&whole), "completed");
    proxy.kill().await.unwrap();
    stop(a).await;
    stop(b).await;
    db.drop_schema().await;
}

fn which_nginx() -> &'static str {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("nginx is needed (scripts/test.sh installs Debian's nginx-light)");
}

/// PostgreSQL restarts under load with two nodes: both listeners recover by
/// themselves, and no subscriber on the other node loses or repeats an event.
#[tokio::test]
async fn database_restart_with_two_nodes() {
    let cluster = crate::dbrestart::TempCluster::create().await;
    let url = cluster.url();
    let start = |name: &'static str| {
        let url = url.clone();
        async move {
            let mut args = vec![
                "--database-url",
                url.as_str(),
                "--node-id",
                name,
                "--scripted-delay-ms",
                "60",
            ];
            args.extend(LEASES);
            ServerProcess::start(&args, &[("RUST_LOG", "info")]).await
        }
    };
    let mut a = start("node-a").await;
    let mut b = start("node-b").await;
    let client = client();
    let mut runs = Vec::new();
    for _ in 0..5 {
        let conversation = create_conversation(&client, &a, "chat").await;
        let response = client
            .post(a.url(&format!("/v1/conversations/{conversation}/runs")))
            .json(&json!({ "input": "tell me a long story" }))
            .send()
            .await
            .unwrap();
        let run: Value = response.json().await.unwrap();
        runs.push(run["id"].as_str().unwrap().to_owned());
    }
    // Followed through B, the node that does not drive them; each follower
    // has its first event before the database goes.
    let mut streams = Vec::new();
    for run in &runs {
        let response = client
            .get(b.url(&format!("/v1/runs/{run}/events")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = Box::pin(events(response));
        let first = stream.next().await.unwrap();
        streams.push((first, stream));
    }
    let followers = join_all(streams.into_iter().map(|(first, stream)| async move {
        let mut all = vec![first];
        all.extend(stream.collect::<Vec<_>>().await);
        all
    }));
    let restart = async {
        cluster.stop().await;
        cluster.start().await;
    };
    let (followed, ()) = tokio::join!(
        async {
            tokio::time::timeout(Duration::from_secs(90), followers)
                .await
                .expect("followers ended")
        },
        restart
    );
    for (run, seen) in runs.iter().zip(&followed) {
        let seqs: Vec<String> = seen.iter().map(|e| e.id.clone()).collect();
        let log = events_via(&client, &a, run, 0).await;
        let ids: Vec<String> = log.iter().map(|e| e.id.clone()).collect();
        assert_eq!(
            seqs, ids,
            "{run}: exactly the stored log, once each, in order"
        );
    }
    // Both listeners reconnected by themselves, and a new run on A reaches B live.
    b.wait_for_line("listener reconnected").await;
    a.wait_for_line("listener reconnected").await;
    let conversation = create_conversation(&client, &a, "chat").await;
    let response = start_stream(&client, &a, &conversation, "hello again").await;
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    let (via_a, via_b) = tokio::join!(read_all(response), events_via(&client, &b, &run, 0));
    assert_eq!(via_a, via_b);
    assert_eq!(done_status(&via_b), "completed");
    for mut node in [a, b] {
        node.signal("TERM").await;
        assert!(node.wait().await.success());
    }
    cluster.stop().await;
}
