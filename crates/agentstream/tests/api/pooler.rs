//! The real binary behind PgBouncer in transaction mode, the PgBouncer that
//! scripts/test.sh starts (scripts/pgbouncer.sh): `--db-pooler transaction`
//! with a direct URL for migrations and LISTEN runs concurrent conversations
//! on two nodes; without those settings the server refuses to start.
//!
//! PgBouncer drops the `options` startup parameter, so a schema per test
//! (helpers.rs) cannot be had through it: each test makes a database of its
//! own through the direct URL, named after the run's database (so that
//! scripts/pgbouncer.sh drops any a failed test left), and drops it after.

use std::{process::Stdio, time::Duration};

use futures_util::{StreamExt, future::join_all};
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::{helpers::*, process::ServerProcess};

/// The test database through PgBouncer, as scripts/test.sh exports it.
fn pgbouncer_url() -> reqwest::Url {
    let Ok(url) = std::env::var("AGENTSTREAM_TEST_PGBOUNCER_URL") else {
        panic!(
            "AGENTSTREAM_TEST_PGBOUNCER_URL is not set: the pooler tests need PgBouncer in \
             transaction mode in front of the test PostgreSQL. Run scripts/test.sh, which starts \
             one with scripts/pgbouncer.sh and sets it (or, by hand: source scripts/postgres.sh \
             and scripts/pgbouncer.sh, run ensure_postgres and ensure_pgbouncer, then cargo test)."
        )
    };
    reqwest::Url::parse(&url).expect("AGENTSTREAM_TEST_PGBOUNCER_URL is a URL")
}

/// The test database on PostgreSQL itself, as scripts/test.sh exports it.
fn direct_url() -> reqwest::Url {
    let Ok(url) = std::env::var("AGENTSTREAM_TEST_POSTGRES_URL") else {
        panic!(
            "AGENTSTREAM_TEST_POSTGRES_URL is not set: the pooler tests need the PostgreSQL and \
             the PgBouncer that scripts/test.sh starts; run the tests through scripts/test.sh."
        )
    };
    reqwest::Url::parse(&url).expect("AGENTSTREAM_TEST_POSTGRES_URL is a URL")
}

/// `url` with its database replaced by `database`.
fn with_database(url: &reqwest::Url, database: &str) -> String {
    let mut url = url.clone();
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// A database of its own for one test, reached directly and through
/// PgBouncer; dropped when the test ends, passed or failed.
struct PoolerDb {
    name: String,
    /// PostgreSQL itself: for migrations and LISTEN.
    direct: String,
    /// Through PgBouncer in transaction mode.
    pooled: String,
    /// PgBouncer's admin console.
    admin: String,
    /// The run's database on PostgreSQL itself, to drop this one from.
    home: String,
}

impl PoolerDb {
    async fn new() -> PoolerDb {
        let pooled = pgbouncer_url();
        let direct = direct_url();
        let home = direct.to_string();
        // After the run's database, so that scripts/pgbouncer.sh finds any
        // left behind; a random tail keeps it within 63 bytes.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let name = format!(
            "{}_{}",
            direct.path().trim_start_matches('/'),
            &id[id.len() - 12..]
        );
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&home)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is needed at {home}: {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        PoolerDb {
            direct: with_database(&direct, &name),
            pooled: with_database(&pooled, &name),
            admin: with_database(&pooled, "pgbouncer"),
            home,
            name,
        }
    }

    /// PgBouncer's pool for this database: `SHOW POOLS` on its admin console
    /// (simple queries only, every column as text).
    async fn pool(&self) -> Option<serde_json::Map<String, Value>> {
        use sqlx::{Column as _, Row as _};
        let mut admin = sqlx::postgres::PgConnection::connect(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("PgBouncer's admin console at {}: {e}", self.admin));
        let rows = sqlx::raw_sql("SHOW POOLS")
            .fetch_all(&mut admin)
            .await
            .unwrap();
        rows.iter()
            .map(|row| {
                row.columns()
                    .iter()
                    .map(|column| {
                        let value = row
                            .try_get::<String, _>(column.ordinal())
                            .map(Value::String)
                            .or_else(|_| row.try_get::<i64, _>(column.ordinal()).map(Value::from))
                            .or_else(|_| row.try_get::<i32, _>(column.ordinal()).map(Value::from))
                            .unwrap_or(Value::Null);
                        (column.name().to_owned(), value)
                    })
                    .collect::<serde_json::Map<_, _>>()
            })
            .find(|pool| pool.get("database") == Some(&Value::String(self.name.clone())))
    }
}

impl Drop for PoolerDb {
    fn drop(&mut self) {
        // On a thread of its own: this may run while a test's runtime unwinds.
        let home = self.home.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut conn = sqlx::AnyConnection::connect(&home).await?;
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                })
        })
        .join();
        // A failing test has said why already; scripts/pgbouncer.sh drops
        // what it left at exit.
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop the test's database {}", self.name);
        }
    }
}

/// Lease timings short enough for tests, as in cluster.rs.
const LEASES: [&str; 4] = ["--lease-renew-ms", "200", "--lease-expire-ms", "1500"];

/// A node behind PgBouncer in transaction mode. Its pool (4 + 4) is larger
/// than PgBouncer's (4 server connections), so transactions really share
/// server connections, the other node's too.
async fn pooled_node(db: &PoolerDb, name: &str) -> ServerProcess {
    let mut args = vec![
        "--db-pooler",
        "transaction",
        "--database-url",
        &db.pooled,
        "--database-direct-url",
        &db.direct,
        "--db-pool-size",
        "4",
        "--db-max-overflow",
        "4",
        "--node-id",
        name,
        "--scripted-delay-ms",
        "5",
        // The default, 8, over the six conversations' one run each: under
        // it a start locks the user's row in its `BEGIN`'s exchange, a
        // query of two statements, which the pooler must pass whole.
        "--max-runs-per-user",
        "8",
    ];
    args.extend(LEASES);
    ServerProcess::start(&args, &[("RUST_LOG", "info")]).await
}

/// Runs the binary with `args` until it exits by itself (at most 60 s) and
/// returns its exit status and everything it wrote.
async fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentstream"))
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .env("AGENTSTREAM_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        // Only what the test passes.
        .env_remove("DB_POOLER")
        .env_remove("AGENTSTREAM_DATABASE_DIRECT_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // A server that starts instead of refusing is killed when this times out.
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the server exited by itself within 60 s instead of serving")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// One turn through the seed's onboarding route on `node`, followed live from
/// the start on `other` (through the other node's LISTEN on the direct URL):
/// both see the same events. Returns the conversation and the events.
async fn turn(
    client: &reqwest::Client,
    node: &ServerProcess,
    other: &ServerProcess,
    conversation: Option<&str>,
    message: &str,
) -> (String, Vec<SseEvent>) {
    let response = client
        .post(node.url("/api/v1/chat/onboarding/stream"))
        .json(&json!({ "message": message, "conversation_id": conversation }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "starting a turn");
    let conversation = response.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let run = run_id_of(&response);
    let follow = client
        .get(other.url(&format!("/v1/runs/{run}/events")))
        .send();
    let (here, there) = tokio::join!(read_all(response), async {
        read_all(follow.await.unwrap()).await
    });
    assert_eq!(
        here, there,
        "the run as its node and the other node stream it"
    );
    assert_eq!(here[0].data["conversation_id"], conversation.as_str());
    assert_eq!(done_status(&here), "completed", "{here:#?}");
    (conversation, here)
}

/// The names of the tools a turn called.
fn tool_calls(events: &[SseEvent]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.event == "tool.call")
        .map(|e| e.data["name"].as_str().unwrap())
        .collect()
}

/// A stored transcript without IDs and times: the moment onboarding was
/// completed differs between conversations, the rest must not.
async fn stored_transcript(
    client: &reqwest::Client,
    node: &ServerProcess,
    conversation: &str,
) -> Vec<Value> {
    let messages: Value = client
        .get(node.url(&format!("/v1/conversations/{conversation}/messages")))
        .fetch_json()
        .await;
    messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut content = m["content"].clone();
            if m["role"] == "tool" {
                let mut output: Value =
                    serde_json::from_str(content.as_str().unwrap()).unwrap_or(content.clone());
                if let Some(output) = output.as_object_mut() {
                    output.remove("completed_at");
                }
                content = output;
            }
            json!([
                m["role"],
                content,
                m["status"],
                m["tool_calls"],
                m["tool_call_id"]
            ])
        })
        .collect()
}

const ANSWERS: [&str; 3] = ["Ada Lovelace", "engineer", "ship a streaming server"];

/// Two nodes behind PgBouncer in transaction mode: six onboarding
/// conversations at once, each turn started on one node and followed live on
/// the other, all end `completed` with their tool calls and store the same
/// transcript; a run resumed with `Last-Event-ID` on the other node gets the
/// rest exactly; neither node logs a WARN or ERROR line.
#[tokio::test]
async fn conversations_run_through_pgbouncer() {
    let db = PoolerDb::new().await;
    let a = pooled_node(&db, "pooler-a").await;
    let b = pooled_node(&db, "pooler-b").await;
    let client = client();

    let conversations = (0..6).map(|i| {
        let (node, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let client = &client;
        async move {
            let mut conversation = None;
            let mut turns = Vec::new();
            for answer in ANSWERS {
                let (id, events) = turn(client, node, other, conversation.as_deref(), answer).await;
                conversation = Some(id);
                turns.push(events);
            }
            (conversation.unwrap(), turns)
        }
    });
    let done = join_all(conversations).await;

    let expected_roles = [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ];
    let mut first: Option<Vec<Value>> = None;
    for (conversation, turns) in &done {
        assert_eq!(tool_calls(&turns[0]), ["update_profile"]);
        assert_eq!(tool_calls(&turns[1]), ["update_profile"]);
        assert_eq!(
            tool_calls(&turns[2]),
            ["update_profile", "complete_onboarding"]
        );
        let stored = stored_transcript(&client, &a, conversation).await;
        assert_eq!(
            stored,
            stored_transcript(&client, &b, conversation).await,
            "both nodes read the same transcript"
        );
        let roles: Vec<&str> = stored.iter().map(|m| m[0].as_str().unwrap()).collect();
        assert_eq!(roles, expected_roles, "{stored:#?}");
        assert!(stored.iter().all(|m| m[2] == "complete"), "{stored:#?}");
        // Each turn's last assistant message is the text it streamed.
        let replies: Vec<&str> = stored
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                m[0] == "assistant" && stored.get(i + 1).is_none_or(|next| next[0] == "user")
            })
            .map(|(_, m)| m[1].as_str().unwrap_or_default())
            .collect();
        let streamed: Vec<String> = turns.iter().map(|t| text_of(t)).collect();
        assert_eq!(replies, streamed, "the stored replies are what streamed");
        match &first {
            None => first = Some(stored),
            Some(first) => assert_eq!(&stored, first, "every conversation stored the same"),
        }
    }

    // Resume: read a run's first events on A, drop the connection, and take
    // the rest through B with Last-Event-ID.
    let response = client
        .post(a.url("/api/v1/chat/onboarding/stream"))
        .json(&json!({ "message": "Grace Hopper" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let run = run_id_of(&response);
    let mut stream = Box::pin(events(response));
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(stream.next().await.unwrap());
    }
    drop(stream);
    let rest = read_all(
        client
            .get(b.url(&format!("/v1/runs/{run}/events")))
            .header("last-event-id", seen.last().unwrap().id.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rest[0].id, "4", "the resume starts right after the cursor");
    assert_eq!(done_status(&rest), "completed");
    let replay = read_all(
        client
            .get(a.url(&format!("/v1/runs/{run}/events")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(replay[..3], seen[..]);
    assert_eq!(replay[3..], rest[..]);
    assert_eq!(tool_calls(&replay), ["update_profile"]);

    // The nodes' pools went through PgBouncer, in transaction mode.
    let pool = db
        .pool()
        .await
        .expect("PgBouncer has a pool for the test's database");
    assert_eq!(pool["pool_mode"], "transaction", "{pool:?}");

    for mut node in [a, b] {
        node.signal("TERM").await;
        assert!(node.wait().await.success(), "{}", node.log.join("\n"));
        assert!(
            node.warnings().is_empty(),
            "{:#?}\n{}",
            node.warnings(),
            node.log.join("\n")
        );
    }
}

/// Through PgBouncer without `--db-pooler transaction`, the server refuses to
/// start and says which setting it needs.
#[tokio::test]
async fn pgbouncer_without_pooler_setting_is_refused() {
    let db = PoolerDb::new().await;
    let (status, log) = run_to_exit(&["--database-url", &db.pooled]).await;
    assert!(!status.success(), "{status}; the log:\n{log}");
    assert!(log.contains("--db-pooler transaction"), "{log}");
}

/// `--db-pooler transaction` without a direct URL: refused, naming the flag.
#[tokio::test]
async fn transaction_pooler_needs_a_direct_url() {
    let db = PoolerDb::new().await;
    let (status, log) =
        run_to_exit(&["--db-pooler", "transaction", "--database-url", &db.pooled]).await;
    assert!(!status.success(), "{status}; the log:\n{log}");
    assert!(log.contains("--database-direct-url"), "{log}");
}
