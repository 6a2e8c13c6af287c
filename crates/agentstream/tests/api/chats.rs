//! Finding, continuing and managing conversations, on both databases: the
//! list by last activity with a stable cursor, previews and search, titles
//! (given, made from the first message, renamed), the transcript a page at a
//! time, a conversation's runs, retries and edits of the last exchange,
//! export, profile resets, and deletion down to the last row.

use mock_llm::MockLlm;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::{both, helpers::*};

async fn patch(app: &TestApp, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
    status_and_body(
        app.client
            .patch(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Sends `input` in `conversation` and reads the run to its end; its ID.
async fn say(app: &TestApp, conversation: &str, input: &str) -> String {
    let response = app
        .stream_run(conversation, json!({ "input": input }))
        .await;
    let run_id = run_id_of(&response);
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    run_id
}

/// Every conversation of the list, page by page with `limit`.
async fn list_all(app: &TestApp, query: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/conversations?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get_json(&path).await;
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

fn ids(conversations: &[Value]) -> Vec<&str> {
    conversations
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect()
}

/// The list is ordered by last activity, pages with a cursor that a
/// conversation moving up does not disturb, and each item has its agent,
/// title and preview; titles come from the first message unless given, and
/// can be changed; search finds titles in any case.
async fn the_list_by_activity(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(app.create_agent_conversation("chat").await);
        if i == 2 {
            let (status, _) = patch(
                &app,
                &format!("/v1/conversations/{}", made[2]),
                json!({ "title": "Holiday 100% sure_plans" }),
            )
            .await;
            assert_eq!(status, 200);
        }
    }
    // Activity moves the first conversation to the top; its title comes
    // from its first message, cut at a word.
    let long = format!("Plan a trip to Rome {}", "and then some more ".repeat(5));
    say(&app, &made[0], &long).await;
    let listed = list_all(&app, "", 2).await;
    let expected: Vec<&str> = [0, 4, 3, 2, 1].iter().map(|&i| made[i].as_str()).collect();
    assert_eq!(ids(&listed), expected);
    let first = &listed[0];
    assert_eq!(first["agent"], "chat");
    let title = first["title"].as_str().unwrap();
    assert!(
        title.starts_with("Plan a trip to Rome") && title.ends_with('…'),
        "{title}"
    );
    assert!(title.chars().count() <= 60, "{title}");
    let preview = first["preview"].as_str().unwrap();
    assert!(
        preview.starts_with("You said:") && preview.chars().count() <= 120,
        "{preview}"
    );
    assert_eq!(listed[1]["preview"], Value::Null);
    // A given title stays; the first message names only untitled ones.
    say(&app, &made[2], "hello there").await;
    let renamed = app
        .get_json(&format!("/v1/conversations/{}", made[2]))
        .await;
    assert_eq!(renamed["title"], "Holiday 100% sure_plans");

    // Paging while conversations move: each one that did not move is seen
    // exactly once.
    let page = app.get_json("/v1/conversations?limit=2").await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    say(&app, &made[1], "move up").await;
    let rest = app
        .get_json(&format!("/v1/conversations?limit=10&cursor={cursor}"))
        .await;
    let mut seen: Vec<&str> = ids(page["data"].as_array().unwrap());
    seen.extend(ids(rest["data"].as_array().unwrap()));
    for id in [&made[3], &made[4], &made[2], &made[0]] {
        assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "{seen:?}");
    }

    // Search: any case, `%` and `_` as themselves.
    let found = list_all(&app, "&q=holiday%20100%25%20SURE_", 10).await;
    assert_eq!(ids(&found), [made[2].as_str()]);
    assert!(list_all(&app, "&q=100_", 10).await.is_empty());
    assert!(list_all(&app, "&q=%25%25", 10).await.is_empty());

    // Rename, clear, refuse.
    let path = format!("/v1/conversations/{}", made[0]);
    let (status, body) = patch(&app, &path, json!({ "title": "  Rome  " })).await;
    assert_eq!((status.as_u16(), &body["title"]), (200, &json!("Rome")));
    let (status, body) = patch(&app, &path, json!({ "title": null })).await;
    assert_eq!((status.as_u16(), &body["title"]), (200, &Value::Null));
    let (status, _) = patch(&app, &path, json!({ "title": "x".repeat(201) })).await;
    assert_eq!(status, 422);
    let (status, _) = patch(&app, &path, json!({ "name": "x" })).await;
    assert_eq!(status, 422);
    let (status, _) = patch(
        &app,
        &format!("/v1/conversations/{}", uuid::Uuid::now_v7()),
        json!({ "title": "x" }),
    )
    .await;
    assert_eq!(status, 404);
    for bad in ["cursor=nope", "cursor=2026-01-01T00:00:00Z_nope", "limit=0"] {
        let response = app
            .client
            .get(app.url(&format!("/v1/conversations?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{bad}");
    }
    app.stop().await;
}
both!(the_list_by_activity);

/// The transcript a page at a time (newest page first, each oldest first)
/// is the whole transcript; a conversation's runs page too.
async fn transcripts_and_runs_in_pages(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_agent_conversation("chat").await;
    let mut runs = Vec::new();
    for i in 0..4 {
        runs.push(say(&app, &conversation, &format!("message {i}")).await);
    }
    let whole = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let whole = whole["data"].as_array().unwrap().clone();
    assert_eq!(whole.len(), 8);
    let mut paged: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/v1/conversations/{conversation}/messages?limit=3");
        if let Some(before) = &before {
            path.push_str(&format!("&before={before}"));
        }
        let page = app.get_json(&path).await;
        let mut data = page["data"].as_array().unwrap().clone();
        data.extend(paged);
        paged = data;
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, whole);
    assert!(whole.iter().all(|m| m["run_id"].is_string()));
    // An ID from after the last message (UUID v7: later) pages from the end;
    // one from before the first, nothing.
    let later = app
        .get_json(&format!(
            "/v1/conversations/{conversation}/messages?before={}",
            uuid::Uuid::now_v7()
        ))
        .await;
    assert_eq!(later["data"].as_array().unwrap(), &whole);
    let earlier = app
        .get_json(&format!(
            "/v1/conversations/{conversation}/messages?before={}",
            uuid::Uuid::nil()
        ))
        .await;
    assert_eq!(earlier["data"], json!([]));

    let page = app
        .get_json(&format!("/v1/conversations/{conversation}/runs?limit=3"))
        .await;
    let newest: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(newest, [&runs[3], &runs[2], &runs[1]]);
    let next = page["next_before"].as_str().unwrap();
    let rest = app
        .get_json(&format!(
            "/v1/conversations/{conversation}/runs?limit=3&before={next}"
        ))
        .await;
    assert_eq!(rest["data"][0]["id"], runs[0].as_str());
    assert_eq!(rest["next_before"], Value::Null);
    app.stop().await;
}
both!(transcripts_and_runs_in_pages);

/// A retry answers the last question again: the old reply stays in the
/// transcript, superseded, and the model is not sent it; an edit replaces
/// the question too. Only the last run, once ended, can be retried.
async fn retry_and_edit(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let config = on_mock(
        &mock.base_url(),
        "[agents.echo]\nprovider = \"mock\"\nmodel = \"mock;tools=never;deltas=2\"\n",
    );
    let (app, _dir) = spawn_app_with_file(backend, &config, |_| {}).await;
    let conversation = app.create_agent_conversation("echo").await;
    let first = say(&app, &conversation, "first question").await;
    let second = say(&app, &conversation, "second question").await;
    let retry = |run: &str, body: Value| {
        app.client
            .post(app.url(&format!("/v1/runs/{run}/retry")))
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
    };
    let refused = retry(&first, json!({})).await.unwrap();
    assert_eq!(refused.status(), 409, "only the last run");
    let response = retry(&second, json!({})).await.unwrap();
    assert_eq!(response.status(), 200);
    let retried = run_id_of(&response);
    assert_eq!(done_status(&read_all(response).await), "completed");
    let sent = mock.request_bodies().pop().unwrap();
    let roles: Vec<(&str, &str)> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let users: Vec<&str> = roles
        .iter()
        .filter(|(r, _)| *r == "user")
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(users, ["first question", "second question"], "{roles:?}");
    assert_eq!(
        roles.iter().filter(|(r, _)| *r == "assistant").count(),
        1,
        "the superseded reply was sent: {roles:?}"
    );
    let messages = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let marks: Vec<(&str, bool, &str)> = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap(),
                m["superseded"].as_bool().unwrap(),
                m["run_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        marks,
        [
            ("user", false, first.as_str()),
            ("assistant", false, first.as_str()),
            ("user", false, second.as_str()),
            ("assistant", true, second.as_str()),
            ("assistant", false, retried.as_str()),
        ]
    );
    // Edit the last question: it and its answer are superseded.
    let response = retry(&retried, json!({ "input": "second, edited" }))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let edited = run_id_of(&response);
    read_all(response).await;
    let sent = mock.request_bodies().pop().unwrap();
    let users: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["first question", "second, edited"]);
    let messages = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let live: Vec<&str> = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["superseded"] == false)
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(live.len(), 4, "{live:?}");
    assert_eq!(live[2], "second, edited");
    let runs = app
        .get_json(&format!("/v1/conversations/{conversation}/runs"))
        .await;
    assert_eq!(runs["data"][0]["id"], edited.as_str());
    // Bad retries.
    for (body, status) in [
        (json!({ "input": "  " }), 422),
        (json!({ "other": 1 }), 422),
    ] {
        let response = retry(&edited, body.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
    }
    let response = app
        .client
        .post(app.url(&format!("/v1/runs/{edited}/retry")))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // An empty body retries (202 with the run).
    let response = app
        .client
        .post(app.url(&format!("/v1/runs/{edited}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let run: Value = response.json().await.unwrap();
    let run = run["id"].as_str().unwrap().to_owned();
    app.run_until_terminal(&run).await;
    let retry_json = |run: &str, body: &'static str| {
        app.client
            .post(app.url(&format!("/v1/runs/{run}/retry")))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // So does a JSON `null` (the document's body is optional: `oneOf` null
    // and the options).
    let response = retry_json(&run, "null").await.unwrap();
    assert_eq!(response.status(), 202);
    let run: Value = response.json().await.unwrap();
    let run = run["id"].as_str().unwrap().to_owned();
    app.run_until_terminal(&run).await;
    // But not an array: serde would read the options from their values in
    // order (schemathesis sent `[null, null]`).
    let response = retry_json(&run, "[null, null]").await.unwrap();
    assert_eq!(response.status(), 422);
    app.stop().await;
    mock.shutdown().await;
}
both!(retry_and_edit);

/// Export as JSON and Markdown; the onboarding profile reset whole or by
/// field; a deleted conversation leaves no row behind in any table.
async fn export_reset_and_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_agent_conversation("onboarding").await;
    say(&app, &conversation, "Ada").await;
    say(&app, &conversation, "Engineer").await;
    let response = app
        .client
        .get(app.url(&format!("/v1/conversations/{conversation}/export")))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(".json")
    );
    let export: Value = response.json().await.unwrap();
    assert_eq!(export["conversation"]["id"], conversation.as_str());
    assert_eq!(export["runs"].as_array().unwrap().len(), 2);
    assert!(export["messages"].as_array().unwrap().len() >= 6);
    let markdown = app
        .client
        .get(app.url(&format!(
            "/v1/conversations/{conversation}/export?format=markdown"
        )))
        .send()
        .await
        .unwrap();
    assert!(
        markdown.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/markdown")
    );
    let markdown = markdown.text().await.unwrap();
    assert!(markdown.starts_with("# Ada\n"), "{markdown}");
    assert!(markdown.contains("## You\n\nEngineer"), "{markdown}");
    assert!(
        markdown.contains("> Tool call `update_profile`"),
        "{markdown}"
    );

    // The profile: one field, then all.
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"]["name"], "Ada");
    let delete = |path: &str| app.client.delete(app.url(path)).send();
    assert_eq!(delete("/v1/profile/role").await.unwrap().status(), 204);
    assert_eq!(delete("/v1/profile/role").await.unwrap().status(), 404);
    assert_eq!(
        app.get_json("/v1/profile").await["fields"],
        json!({ "name": "Ada" })
    );
    assert_eq!(delete("/v1/profile").await.unwrap().status(), 204);
    assert_eq!(delete("/v1/profile").await.unwrap().status(), 204);
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"], json!({}));
    assert_eq!(profile["completed_at"], Value::Null);

    // Delete: every row of the conversation goes, on both databases.
    let path = format!("/v1/conversations/{conversation}");
    assert_eq!(delete(&path).await.unwrap().status(), 204);
    assert_eq!(delete(&path).await.unwrap().status(), 404);
    let db = app.stop_keeping_db().await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    for table in [
        "conversations",
        "runs",
        "messages",
        "run_events",
        "tool_calls",
        "tool_approvals",
    ] {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.get::<i64, _>("n"), 0, "{table}");
    }
    conn.close().await.unwrap();
    db.drop_schema().await;
}
both!(export_reset_and_delete);

/// Stores a run of the conversation's owner in `status`, on `conn` (inside
/// whatever transaction it holds), as a run start would.
async fn store_run(conn: &mut sqlx::AnyConnection, conversation: &str, status: &str) {
    sqlx::query(
        "INSERT INTO runs (id, conversation_id, user_id, agent, status, on_disconnect, \
         created_at, event_key) SELECT $1, id, user_id, agent, $2, 'continue', $3, 1000000 \
         FROM conversations WHERE id = $4",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(status)
    .bind("2026-11-30T00:00:00.000000Z")
    .bind(conversation)
    .execute(conn)
    .await
    .unwrap();
}

/// A conversation with an active run (queued, running or waiting for
/// approval) is not deleted: 409, and everything stays.
async fn a_conversation_with_an_active_run_is_not_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_agent_conversation("onboarding").await;
    say(&app, &conversation, "Ada").await;
    let mut conn = app.state.store().pool().acquire().await.unwrap();
    store_run(&mut conn, &conversation, "queued").await;
    drop(conn);
    let path = format!("/v1/conversations/{conversation}");
    let refused = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("active run"),
        "{body}"
    );
    let kept = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    assert!(!kept["data"].as_array().unwrap().is_empty(), "{kept}");
    app.stop().await;
}
both!(a_conversation_with_an_active_run_is_not_deleted);

/// A run start still under way when the deletion begins (its transaction
/// not yet committed) is waited for and seen: the deletion is refused, not
/// made behind the run's back. PostgreSQL, where the two are transactions on
/// different connections; on SQLite the write turn orders them.
#[tokio::test]
async fn a_run_start_under_way_holds_off_the_deletion() {
    let app = spawn_app(Backend::Postgres).await;
    let conversation = app.create_agent_conversation("onboarding").await;
    say(&app, &conversation, "Ada").await;
    let pool = app.state.store().pool().clone();
    let mut start = pool.begin().await.unwrap();
    store_run(&mut start, &conversation, "running").await;
    let path = format!("/v1/conversations/{conversation}");
    let deletion = app.client.delete(app.url(&path)).send();
    // The start commits once the deletion waits for its lock on the
    // conversation.
    let start_commits = async {
        loop {
            let waiting = sqlx::query(
                "SELECT COUNT(*) AS n FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE '%conversations%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting.get::<i64, _>("n") > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        start.commit().await.unwrap();
    };
    let (refused, ()) = tokio::join!(deletion, start_commits);
    let refused = refused.unwrap();
    assert_eq!(refused.status(), 409);
    let kept = app
        .get_json(&format!("/v1/conversations/{conversation}"))
        .await;
    assert_eq!(kept["id"], conversation.as_str());
    app.stop().await;
}

/// Another user's conversation and runs are not found, whatever the route.
async fn other_users_get_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_agent_conversation("chat").await;
    let run = say(&app, &conversation, "mine").await;
    let store = app.state.store();
    let alice = store.create_api_key("local").await.unwrap().key;
    let bob = store.create_api_key("bob").await.unwrap().key;
    let c = format!("/v1/conversations/{conversation}");
    for (method, path, body) in [
        ("PATCH", c.clone(), Some(json!({ "title": "x" }))),
        ("GET", format!("{c}/runs"), None),
        ("GET", format!("{c}/messages?limit=1"), None),
        ("GET", format!("{c}/export"), None),
        ("POST", format!("/v1/runs/{run}/retry"), Some(json!({}))),
    ] {
        let request = |key: &str| {
            let builder = app
                .client
                .request(method.parse().unwrap(), app.url(&path))
                .bearer_auth(key);
            match &body {
                Some(body) => builder.json(body),
                None => builder,
            }
        };
        let theirs = request(&bob).send().await.unwrap();
        assert_eq!(theirs.status(), 404, "{method} {path}");
        let error: Value = theirs.json().await.unwrap();
        assert!(error["error"]["message"].is_string(), "{error}");
        let mine = request(&alice).send().await.unwrap();
        assert!(
            mine.status().is_success(),
            "{method} {path}: {}",
            mine.status()
        );
        if method == "POST" {
            let run: Value = mine.json().await.unwrap();
            let id = run["id"].as_str().unwrap();
            let status = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                loop {
                    let run: Value = app
                        .client
                        .get(app.url(&format!("/v1/runs/{id}")))
                        .bearer_auth(&alice)
                        .fetch_json()
                        .await;
                    if run["status"] != "queued" && run["status"] != "running" {
                        return run["status"].clone();
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap();
            assert_eq!(status, "completed");
        }
    }
    app.stop().await;
}
both!(other_users_get_404);
