//! Keys, isolation, limits and connection hygiene.

use futures_util::future::join_all;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::{both, helpers::*, process::ServerProcess};

/// A client that sends `key` on every request.
fn client_with(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    client_builder().default_headers(headers).build().unwrap()
}

/// With keys on, a request without a valid key is 401, and one user's
/// conversations, runs, streams, cancels and profile are invisible to
/// another: 404 with the same body as for what does not exist.
async fn keys_and_isolation(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice_key = app.state.store().create_api_key("alice").await.unwrap().key;
    let bob_key = app.state.store().create_api_key("bob").await.unwrap().key;
    let (alice, bob) = (client_with(&alice_key), client_with(&bob_key));

    for (client, what) in [
        (&app.client, "no key"),
        (&client_with("ask_wrong"), "a wrong key"),
    ] {
        let response = client
            .get(app.url("/v1/conversations"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
        let (status, body) = status_and_body(response).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let malformed = app
        .client
        .get(app.url("/v1/profile"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);

    let created: Value = alice
        .post(app.url("/v1/conversations"))
        .json(&json!({ "kind": "onboarding" }))
        .fetch_json()
        .await;
    let conversation = created["id"].as_str().unwrap();
    let response = alice
        .post(app.url(&format!("/v1/conversations/{conversation}/runs")))
        .header("accept", "text/event-stream")
        .json(&json!({ "input": "Alice" }))
        .send()
        .await
        .unwrap();
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    read_all(response).await;

    let absent = uuid::Uuid::now_v7();
    let paths = |id: &str, run: &str| {
        vec![
            ("GET", format!("/v1/conversations/{id}"), None),
            ("DELETE", format!("/v1/conversations/{id}"), None),
            ("GET", format!("/v1/conversations/{id}/messages"), None),
            (
                "POST",
                format!("/v1/conversations/{id}/runs"),
                Some(json!({ "input": "hi" })),
            ),
            ("GET", format!("/v1/runs/{run}"), None),
            ("GET", format!("/v1/runs/{run}/events"), None),
            ("POST", format!("/v1/runs/{run}/cancel"), None),
            (
                "POST",
                "/api/v1/chat/onboarding/stream".to_owned(),
                Some(json!({ "message": "hi", "conversation_id": id })),
            ),
        ]
    };
    let absent_id = absent.to_string();
    for ((method, path, body), (_, absent_path, absent_body)) in paths(conversation, &run)
        .into_iter()
        .zip(paths(&absent_id, &absent_id))
    {
        let send = |path: String, body: Option<Value>| {
            let request = bob.request(method.parse().unwrap(), app.url(&path));
            let request = match body {
                Some(body) => request.json(&body),
                None => request,
            };
            request.send()
        };
        let (status, theirs) = status_and_body(send(path.clone(), body).await.unwrap()).await;
        let (absent_status, nothing) =
            status_and_body(send(absent_path, absent_body).await.unwrap()).await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(absent_status, 404, "{method} {path}");
        assert_eq!(theirs, nothing, "{method} {path}: the same body either way");
    }
    let bobs: Value = bob.get(app.url("/v1/conversations")).fetch_json().await;
    assert_eq!(bobs["data"], json!([]));
    let bobs_profile: Value = bob.get(app.url("/v1/profile")).fetch_json().await;
    assert_eq!(bobs_profile["fields"], json!({}));
    let alices_profile: Value = alice.get(app.url("/v1/profile")).fetch_json().await;
    assert_eq!(alices_profile["fields"]["name"], "Alice");
    // Alice's run is untouched by Bob's cancel and delete.
    let mine: Value = alice
        .get(app.url(&format!("/v1/runs/{run}")))
        .fetch_json()
        .await;
    assert_eq!(mine["status"], "completed");

    assert!(
        app.state
            .store()
            .revoke_api_key(&alice_key[..12])
            .await
            .unwrap()
    );
    let revoked = alice.get(app.url("/v1/profile")).send().await.unwrap();
    assert_eq!(revoked.status(), 401);
    app.stop().await;
}
both!(keys_and_isolation);

/// Each limit answers with its clear error: 429 and 503 with `Retry-After`,
/// and a run that emits too many events fails with `event_limit`.
async fn limits_answer_clearly(backend: Backend) {
    let mut app = spawn_app_with(backend, |config| {
        config.scripted_delay_ms = 100;
        config.max_runs_per_user = 2;
        config.max_active_runs = 3;
        config.max_events_per_run = 8;
    })
    .await;
    app.expect_log("run failed");
    app.expect_log("request refused");
    // Keys for the local user and another one.
    let local = client_with(&app.state.store().create_api_key("local").await.unwrap().key);
    let other = client_with(&app.state.store().create_api_key("other").await.unwrap().key);
    let start = |client: &reqwest::Client| {
        let client = client.clone();
        let base = app.base.clone();
        async move {
            let conversation: Value = client
                .post(format!("{base}/v1/conversations"))
                .json(&json!({ "kind": "chat" }))
                .fetch_json()
                .await;
            client
                .post(format!(
                    "{base}/v1/conversations/{}/runs",
                    conversation["id"].as_str().unwrap()
                ))
                .json(&json!({ "input": "tell me a long story" }))
                .send()
                .await
                .unwrap()
        }
    };
    let first = start(&local).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(start(&local).await.status(), 202);
    // The user's third run: 429.
    let refused = start(&local).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, body) = status_and_body(refused).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_runs");
    // Another user may start one, which fills the node: then 503.
    assert_eq!(start(&other).await.status(), 202);
    let overloaded = start(&other).await;
    assert_eq!(overloaded.headers()["retry-after"], "1");
    let (status, body) = status_and_body(overloaded).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    // The event limit of 8 ends the run, its final error and done included.
    let response = local
        .get(app.url(&format!(
            "/v1/runs/{}/events",
            first["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    let events = read_all(response).await;
    assert_eq!(events.len(), 8);
    assert_eq!(events[6].data["code"], "event_limit");
    assert_eq!(done_status(&events), "failed");
    let messages: Value = local
        .get(app.url(&format!(
            "/v1/conversations/{}/messages",
            first["conversation_id"].as_str().unwrap()
        )))
        .fetch_json()
        .await;
    assert_eq!(messages["data"][1]["status"], "failed");
    assert_eq!(messages["data"][1]["content"], text_of(&events));
    app.stop().await;
}
both!(limits_answer_clearly);

/// A connection handed back inside a transaction is closed, one whose
/// transaction was dropped is rolled back, and PostgreSQL sessions carry the
/// safety-net timeouts: the next borrower always gets a clean connection.
async fn connections_come_back_clean(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.db_pool_size = 1;
        config.db_max_overflow = 0;
    })
    .await;
    let pool = app.state.store().pool().clone();
    let user = app.state.local_user().id.to_string();
    let write =
        "INSERT INTO profiles (user_id, field, value, updated_at) VALUES ($1, $2, 'x', 'now')";

    // A transaction dropped without commit: rolled back, connection reused.
    {
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(write)
            .bind(&user)
            .bind("dropped")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    // A connection returned while still inside a transaction: closed.
    let leaked_pid = {
        let mut conn = pool.acquire().await.unwrap();
        let pid: Option<i64> = match backend {
            Backend::Postgres => Some(
                sqlx::query("SELECT pg_backend_pid()::bigint")
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap()
                    .get(0),
            ),
            Backend::Sqlite => None,
        };
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(write)
            .bind(&user)
            .bind("leaked")
            .execute(&mut *tx)
            .await
            .unwrap();
        std::mem::forget(tx);
        pid
    };
    app.pool_settles().await;
    let mut conn = pool.acquire().await.unwrap();
    assert!(!conn.is_in_transaction());
    let rows = sqlx::query("SELECT field FROM profiles WHERE user_id = $1")
        .bind(&user)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert!(rows.is_empty(), "neither write survived");
    // The next borrower can begin its own transaction.
    let tx = conn.begin().await.unwrap();
    tx.rollback().await.unwrap();
    if backend == Backend::Postgres {
        for setting in ["statement_timeout", "idle_in_transaction_session_timeout"] {
            let sql = format!("SHOW {setting}");
            let row = sqlx::query(&sql).fetch_one(&mut *conn).await.unwrap();
            assert_eq!(row.get::<String, _>(0), "30s", "{setting}");
        }
        // The session handed back inside its transaction is gone (closed,
        // not parked idle in a transaction).
        // (The server process exits a moment after the client closes.)
        let pid = leaked_pid.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let alive: i64 =
                    sqlx::query("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
                        .bind(pid)
                        .fetch_one(&mut *conn)
                        .await
                        .unwrap()
                        .get(0);
                if alive == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection handed back inside a transaction was closed");
    }
    drop(conn);
    app.stop().await;
}
both!(connections_come_back_clean);

/// The key commands, as a user runs them: create prints a key once, list
/// shows it by prefix, the server takes it, revoke stops it. Without keys,
/// a server on a non-loopback address refuses to start. The first key says
/// at once what it changes for requests without a key.
#[tokio::test]
async fn key_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/db.sqlite", dir.path().display());
    let command = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentstream"));
        command.args(args).env("NO_COLOR", "1");
        async move { command.output().await.unwrap() }
    };
    // The database last: after `serve`, and after the action of `keys`.
    let run = |args: &[&str]| {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--database-url", &database])
            .collect();
        command(&args)
    };
    let refused = run(&["serve", "--bind", "0.0.0.0:0"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to start") && stderr.contains("keys create"),
        "{stderr}"
    );

    let created = run(&["keys", "create", "--user", "ada"]).await;
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("ask_") && key.len() == 68, "{key}");
    let notice = String::from_utf8(created.stderr).unwrap();
    for said in [
        "every request needs a key",
        "belong to the user `local`",
        "agentstream keys create --user local",
    ] {
        assert!(notice.contains(said), "no {said:?} in:\n{notice}");
    }
    let local = run(&["keys", "create", "--user", "local"]).await;
    assert!(local.status.success());
    let local_key = String::from_utf8(local.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    let second = String::from_utf8(local.stderr).unwrap();
    assert!(
        !second.contains("every request needs a key"),
        "only the first key says so:\n{second}"
    );

    let listed = command(&["keys", "--database-url", &database, "list"]).await;
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("ada") && listed.contains(&key[..12]) && listed.contains("local"),
        "{listed}"
    );
    assert!(
        !listed.contains(&key),
        "the key itself is never shown again"
    );

    let mut server = ServerProcess::start(&["--database-url", &database], &[]).await;
    let with_key = client_with(&key);
    let profile = with_key
        .get(server.url("/v1/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 200);
    let without = client()
        .get(server.url("/v1/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    let revoked = run(&["keys", "revoke", &key[..12]]).await;
    assert!(revoked.status.success());
    let said = String::from_utf8(revoked.stderr).unwrap();
    assert!(
        !said.contains("No active API key is left"),
        "the local user's key is still active:\n{said}"
    );
    let after = with_key
        .get(server.url("/v1/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    let again = run(&["keys", "revoke", &key[..12]]).await;
    assert!(!again.status.success(), "revoking twice says so");
    let last = run(&["keys", "revoke", &local_key[..12]]).await;
    assert!(last.status.success());
    let said = String::from_utf8(last.stderr).unwrap();
    assert!(
        said.contains("No active API key is left"),
        "the last revoke says keys are off:\n{said}"
    );
    server.signal("TERM").await;
    assert!(server.wait().await.success());
    assert!(server.log.iter().any(|l| l.contains("API keys are on")));
}

/// Many concurrent starts by one user never exceed the per-user limit: in
/// a burst on a fresh server, and again once its runs have ended (on
/// PostgreSQL the first starts count before they lock the user's row, the
/// later ones lock it first: `Store::begin_start`).
async fn the_user_limit_holds_under_concurrency(backend: Backend) {
    let app = spawn_app_with(backend, |config| {
        config.scripted_delay_ms = 50;
        config.max_runs_per_user = 3;
    })
    .await;
    for _ in 0..2 {
        let conversations = join_all((0..12).map(|_| app.create_conversation("chat"))).await;
        let paths: Vec<String> = conversations
            .iter()
            .map(|c| format!("/v1/conversations/{c}/runs"))
            .collect();
        let starts = paths
            .iter()
            .map(|path| app.post_json(path, json!({ "input": "hello" })));
        let responses = join_all(starts).await;
        let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 202).count(),
            3,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 429).count(),
            9,
            "{statuses:?}"
        );
        // The accepted runs' ends, before the next burst.
        for response in responses.into_iter().filter(|r| r.status() == 202) {
            let run: Value = response.json().await.unwrap();
            let events = app.follow(run["id"].as_str().unwrap()).await;
            assert_eq!(done_status(&events), "completed");
        }
    }
    app.stop().await;
}
both!(the_user_limit_holds_under_concurrency);

/// While no key exists (on loopback), a request that sends one anyway, as
/// the OpenAI SDKs always do, acts as the local user, like one that sends
/// none; once a key exists, an unknown key is 401.
async fn any_key_is_the_local_user_while_keys_are_off(backend: Backend) {
    let app = spawn_app(backend).await;
    let with = |key: &str| {
        app.client
            .get(app.url("/v1/conversations"))
            .bearer_auth(key)
            .send()
    };
    let conversation = app.create_conversation("chat").await;
    let listed: Value = with("anything").await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["id"], conversation.as_str(), "{listed}");
    let key = app.state.store().create_api_key("ada").await.unwrap().key;
    assert_eq!(with("anything").await.unwrap().status(), 401);
    let hers: Value = with(&key).await.unwrap().json().await.unwrap();
    assert_eq!(hers["data"], serde_json::json!([]), "{hers}");
    app.stop().await;
}
both!(any_key_is_the_local_user_while_keys_are_off);
