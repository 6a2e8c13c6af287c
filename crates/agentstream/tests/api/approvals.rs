//! Human approval of tool calls, on both databases: a run whose model calls
//! a tool configured `approval = "always"` pauses (`requires_action`) with
//! nothing held, and goes on, in the same log, once the user decides; a
//! denied call is never made. The tool writes a notes table in an
//! application database the test creates, read back after each decision.

use futures_util::{StreamExt, future::join_all};
use mock_llm::MockLlm;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::{both, helpers::*};

/// The application database the `add_note` tool writes.
pub struct Notes {
    pub db: TestDb,
}

impl Notes {
    pub async fn create(backend: Backend) -> Notes {
        let notes = Notes {
            db: TestDb::new(backend).await,
        };
        let mut conn = notes.connect(backend).await;
        sqlx::raw_sql("CREATE TABLE notes (owner TEXT NOT NULL, body TEXT NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        notes
    }

    async fn connect(&self, backend: Backend) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        let url = match backend {
            Backend::Sqlite => format!("{}?mode=rwc", self.db.url),
            Backend::Postgres => self.db.url.clone(),
        };
        sqlx::AnyConnection::connect(&url).await.unwrap()
    }

    /// Every note's body, in the order written.
    pub async fn bodies(&self, backend: Backend) -> Vec<String> {
        let mut conn = self.connect(backend).await;
        let bodies = sqlx::query_scalar("SELECT body FROM notes")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        bodies
    }
}

/// The `scribe` agent on mock-llm, whose one tool, `add_note`, waits for
/// approval; its wait lasts `timeout_secs`.
fn config(mock: &str, notes: &str, timeout_secs: u64) -> String {
    on_mock(mock, &agent_with_note_tool("scribe", notes, timeout_secs))
}

/// `[agents.NAME]` on the `mock` provider with the `add_note` tool, which
/// writes the notes at `notes` once approved.
pub fn agent_with_note_tool(name: &str, notes: &str, timeout_secs: u64) -> String {
    format!(
        r#"
[databases.notes]
url = "{notes}"

[agents.{name}]
provider = "mock"
model = "mock;tools=auto;deltas=3"
tools = ["add_note"]
approval_timeout_secs = {timeout_secs}

[tools.add_note]
kind = "sql"
database = "notes"
description = "Write a note for the user."
approval = "always"
sql = "INSERT INTO notes (owner, body) VALUES (:caller.subject, :body)"

[tools.add_note.parameters.body]
type = "string"
"#
    )
}

/// A test's server, its upstream and the notes it writes.
struct Setup {
    app: TestApp,
    notes: Notes,
    _mock: MockLlm,
    dir: tempfile::TempDir,
}

async fn setup(backend: Backend, timeout_secs: u64) -> Setup {
    let mock = MockLlm::start().await.unwrap();
    let notes = Notes::create(backend).await;
    let (app, dir) = spawn_app_with_file(
        backend,
        &config(&mock.base_url(), &notes.db.url, timeout_secs),
        |config| config.lease_renew_ms = 100,
    )
    .await;
    Setup {
        app,
        notes,
        _mock: mock,
        dir,
    }
}

/// Starts a run asking for `input` and reads it to its pause: the run's ID,
/// the call asked about, and the pause's `seq`.
async fn run_to_pause(app: &TestApp, conversation: &str, input: &str) -> (String, Value, i64) {
    let response = app
        .stream_run(conversation, json!({ "input": input }))
        .await;
    let run_id = run_id_of(&response);
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "requires_action", "{events:#?}");
    let asked: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.event == "tool.approval_requested")
        .collect();
    assert_eq!(asked.len(), 1, "{events:#?}");
    let call = events.iter().find(|e| e.event == "tool.call").unwrap();
    assert_eq!(call.data["call_id"], asked[0].data["call_id"]);
    assert_eq!(asked[0].data["name"], "add_note");
    assert_eq!(asked[0].data["arguments"], json!({ "body": input }));
    // Nothing ran: no result before the pause.
    assert!(!events.iter().any(|e| e.event == "tool.result"));
    let pause: i64 = events.last().unwrap().id.parse().unwrap();
    (run_id, asked[0].data.clone(), pause)
}

/// The run's events after `after`, to its next `done`.
async fn events_after(app: &TestApp, run_id: &str, after: i64) -> Vec<SseEvent> {
    let response = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}/events?after={after}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    read_all(response).await
}

async fn decide(app: &TestApp, run_id: &str, body: Value) -> (reqwest::StatusCode, Value) {
    status_and_body(
        app.post_json(&format!("/v1/runs/{run_id}/approvals"), body)
            .await,
    )
    .await
}

/// The `seq`s of `events`, which must follow `after` with no gap.
fn assert_continues(events: &[SseEvent], after: i64) {
    let seqs: Vec<i64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    let expected: Vec<i64> = (after + 1..=after + seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "{events:#?}");
}

/// Approve once, deny once: the approved call is made after the decision,
/// the denied one never, and the model reads that the user declined, with
/// the reason. A client that waited after the pause sees the run go on in
/// the same log; a replay from the start passes the pause.
async fn approve_then_deny(backend: Backend) {
    let Setup {
        app, notes, _mock, ..
    } = setup(backend, 3600).await;
    let conversation = app.create_agent_conversation("scribe").await;
    let (run_id, asked, pause) = run_to_pause(&app, &conversation, "buy milk").await;
    let call_id = asked["call_id"].as_str().unwrap().to_owned();
    let run = app.get_json(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["status"], "requires_action");
    assert_eq!(run["last_seq"], pause);
    assert!(run["expires_at"].is_string(), "{run}");
    assert_eq!(run["pending_approvals"][0]["call_id"], call_id.as_str());
    assert_eq!(run["pending_approvals"][0]["approved"], Value::Null);
    assert!(notes.bodies(backend).await.is_empty());

    // A client waits after the pause; the decision lets the run go on.
    let waiting = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}/events?after={pause}")))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), 200);
    let (status, run) = decide(
        &app,
        &run_id,
        json!({ "call_id": call_id, "approved": true }),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    assert_ne!(run["status"], "requires_action");
    let went_on = read_all(waiting).await;
    assert_continues(&went_on, pause);
    assert_eq!(went_on[0].event, "tool.approval_decided");
    assert_eq!(went_on[0].data["approved"], true);
    let result = went_on.iter().find(|e| e.event == "tool.result").unwrap();
    assert_eq!(result.data["is_error"], false, "{result:?}");
    assert_eq!(done_status(&went_on), "completed");
    assert_eq!(notes.bodies(backend).await, ["buy milk"]);
    // One log: a replay from the start passes the pause to the end.
    let response = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}/events")))
        .send()
        .await
        .unwrap();
    let replay: Vec<SseEvent> = events(response).collect().await;
    assert_continues(&replay, 0);
    assert_eq!(replay[pause as usize - 1].data["status"], "requires_action");
    assert_eq!(done_status(&replay), "completed");
    // The same decision again changes nothing; the other one is refused.
    let (status, _) = decide(
        &app,
        &run_id,
        json!({ "call_id": call_id, "approved": true }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = decide(
        &app,
        &run_id,
        json!({ "call_id": call_id, "approved": false }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("decided otherwise")
    );

    // Deny the next one, with a reason.
    let (run_id, asked, pause) = run_to_pause(&app, &conversation, "sell the car").await;
    let call_id = asked["call_id"].as_str().unwrap().to_owned();
    let (status, run) = decide(
        &app,
        &run_id,
        json!({ "call_id": call_id, "approved": false, "reason": "not today" }),
    )
    .await;
    assert_eq!(status, 200, "{run}");
    let went_on = events_after(&app, &run_id, pause).await;
    assert_continues(&went_on, pause);
    assert_eq!(
        (&went_on[0].event[..], &went_on[0].data["reason"]),
        ("tool.approval_decided", &json!("not today"))
    );
    let result = went_on.iter().find(|e| e.event == "tool.result").unwrap();
    assert_eq!(result.data["is_error"], true);
    assert_eq!(
        result.data["output"]["error"],
        "the user declined this call: not today"
    );
    assert_eq!(done_status(&went_on), "completed");
    assert_eq!(
        notes.bodies(backend).await,
        ["buy milk"],
        "a denied call is not made"
    );
    // The model read the refusal as the call's result.
    let last = _mock.request_bodies().pop().unwrap();
    let tool = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap();
    assert!(
        tool["content"]
            .as_str()
            .unwrap()
            .contains("declined this call: not today"),
        "{tool}"
    );
    // The transcript pairs each call with its result.
    let stored = transcript(&app, &conversation).await;
    let results: Vec<&Value> = stored.iter().filter(|m| m[0] == "tool").collect();
    assert_eq!(results.len(), 2, "{stored:#?}");
    app.stop().await;
    notes.db.drop_schema().await;
}
both!(approve_then_deny);

/// Bad decisions get a 4xx and change nothing; another user's run is 404.
async fn bad_decisions(backend: Backend) {
    let Setup {
        app, notes, _mock, ..
    } = setup(backend, 3600).await;
    let conversation = app.create_agent_conversation("scribe").await;
    let (run_id, asked, _) = run_to_pause(&app, &conversation, "water plants").await;
    let call_id = asked["call_id"].as_str().unwrap();
    for (body, expected) in [
        (json!({ "call_id": "call_nope", "approved": true }), 404),
        (json!({ "call_id": "", "approved": true }), 422),
        (json!({ "call_id": call_id }), 422),
        (json!({ "call_id": call_id, "approved": "yes" }), 422),
        (
            json!({ "call_id": call_id, "approved": true, "extra": 1 }),
            422,
        ),
        (
            json!({ "call_id": call_id, "approved": false, "reason": "x".repeat(2001) }),
            422,
        ),
    ] {
        let (status, error) = decide(&app, &run_id, body.clone()).await;
        assert_eq!(status, expected, "{body}: {error}");
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    let (status, _) = decide(
        &app,
        &uuid::Uuid::now_v7().to_string(),
        json!({ "call_id": call_id, "approved": true }),
    )
    .await;
    assert_eq!(status, 404);
    // Another user sees no such run.
    let key = app
        .state
        .store()
        .create_api_key("mallory")
        .await
        .unwrap()
        .key;
    let response = app
        .client
        .post(app.url(&format!("/v1/runs/{run_id}/approvals")))
        .bearer_auth(key)
        .json(&json!({ "call_id": call_id, "approved": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // Keys are on now: the owner reads the run with one of theirs.
    let key = app.state.store().create_api_key("local").await.unwrap().key;
    let run: Value = app
        .client
        .get(app.url(&format!("/v1/runs/{run_id}")))
        .bearer_auth(key)
        .fetch_json()
        .await;
    assert_eq!(run["status"], "requires_action", "{run}");
    assert!(notes.bodies(backend).await.is_empty());
    app.stop().await;
    notes.db.drop_schema().await;
}
both!(bad_decisions);

/// Two different decisions at once: exactly one is recorded, the other is
/// 409, and the run goes on once. Many equal decisions at once: one resume.
async fn concurrent_decisions(backend: Backend) {
    let Setup {
        app, notes, _mock, ..
    } = setup(backend, 3600).await;
    let conversation = app.create_agent_conversation("scribe").await;
    let (run_id, asked, pause) = run_to_pause(&app, &conversation, "call mum").await;
    let call_id = asked["call_id"].as_str().unwrap();
    let answers = join_all([true, false].map(|approved| {
        decide(
            &app,
            &run_id,
            json!({ "call_id": call_id, "approved": approved }),
        )
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    assert!(
        statuses == [200, 409] || statuses == [409, 200],
        "{answers:?}"
    );
    let approved = statuses[0] == 200;
    let went_on = events_after(&app, &run_id, pause).await;
    let decided: Vec<&SseEvent> = went_on
        .iter()
        .filter(|e| e.event == "tool.approval_decided")
        .collect();
    assert_eq!(decided.len(), 1, "{went_on:#?}");
    assert_eq!(decided[0].data["approved"], approved);
    assert_eq!(done_status(&went_on), "completed");
    let expected: &[&str] = if approved { &["call mum"] } else { &[] };
    assert_eq!(notes.bodies(backend).await, expected);

    let (run_id, asked, pause) = run_to_pause(&app, &conversation, "pay rent").await;
    let call_id = asked["call_id"].as_str().unwrap();
    let answers = join_all((0..6).map(|_| {
        decide(
            &app,
            &run_id,
            json!({ "call_id": call_id, "approved": true }),
        )
    }))
    .await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    let went_on = events_after(&app, &run_id, pause).await;
    assert_continues(&went_on, pause);
    assert_eq!(
        went_on.iter().filter(|e| e.event == "tool.result").count(),
        1,
        "{went_on:#?}"
    );
    assert_eq!(notes.bodies(backend).await.len(), expected.len() + 1);
    app.stop().await;
    notes.db.drop_schema().await;
}
both!(concurrent_decisions);

/// A paused run holds nothing: it survives a restart, and the decision
/// made to the new process lets it go on.
async fn restart_while_waiting(backend: Backend) {
    let Setup {
        app,
        notes,
        _mock,
        dir,
    } = setup(backend, 3600).await;
    let conversation = app.create_agent_conversation("scribe").await;
    let (run_id, asked, pause) = run_to_pause(&app, &conversation, "book dentist").await;
    let db = app.stop_keeping_db().await;
    let app = spawn_app_on(db, |config| {
        config.config_file = Some(dir.path().join("agentstream.toml"));
    })
    .await;
    let run = app.get_json(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["status"], "requires_action", "{run}");
    let (status, _) = decide(
        &app,
        &run_id,
        json!({ "call_id": asked["call_id"], "approved": true }),
    )
    .await;
    assert_eq!(status, 200);
    let went_on = events_after(&app, &run_id, pause).await;
    assert_continues(&went_on, pause);
    assert_eq!(done_status(&went_on), "completed");
    assert_eq!(notes.bodies(backend).await, ["book dentist"]);
    app.stop().await;
    notes.db.drop_schema().await;
}
both!(restart_while_waiting);

/// A cancel while the run waits ends it `cancelled`, its call never made; a
/// decision after is 409. A new message meanwhile is refused (the paused run
/// holds the conversation's turn) unless it interrupts.
async fn cancel_while_waiting(backend: Backend) {
    let Setup {
        app, notes, _mock, ..
    } = setup(backend, 3600).await;
    let conversation = app.create_agent_conversation("scribe").await;
    let (run_id, asked, pause) = run_to_pause(&app, &conversation, "fix the bike").await;
    let busy = app
        .post_json(
            &format!("/v1/conversations/{conversation}/runs"),
            json!({ "input": "something else" }),
        )
        .await;
    assert_eq!(busy.status(), 409);
    let cancelled = app
        .post_json(&format!("/v1/runs/{run_id}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled.status(), 202);
    let ended = events_after(&app, &run_id, pause).await;
    assert_continues(&ended, pause);
    assert_eq!(done_status(&ended), "cancelled");
    let (status, body) = decide(
        &app,
        &run_id,
        json!({ "call_id": asked["call_id"], "approved": true }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    // `interrupt` cancels a paused run and answers the new message.
    let (run_id, _, pause) = run_to_pause(&app, &conversation, "walk the dog").await;
    let response = app
        .stream_run(
            &conversation,
            json!({ "input": "never mind", "multitask": "interrupt" }),
        )
        .await;
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "requires_action", "{events:#?}");
    let ended = events_after(&app, &run_id, pause).await;
    assert_eq!(done_status(&ended), "cancelled");
    assert!(notes.bodies(backend).await.is_empty());
    app.stop().await;
    notes.db.drop_schema().await;
}
both!(cancel_while_waiting);

/// No decision within the agent's `approval_timeout_secs`: the run ends
/// `expired` with an `approval_timeout` error; a late decision is 409.
async fn no_decision_in_time(backend: Backend) {
    let Setup {
        app, notes, _mock, ..
    } = setup(backend, 1).await;
    let conversation = app.create_agent_conversation("scribe").await;
    let (run_id, asked, pause) = run_to_pause(&app, &conversation, "renew passport").await;
    let ended = events_after(&app, &run_id, pause).await;
    assert_continues(&ended, pause);
    let kinds: Vec<&str> = ended.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["error", "done"], "{ended:#?}");
    assert_eq!(ended[0].data["code"], "approval_timeout");
    assert_eq!(done_status(&ended), "expired");
    let run = app.get_json(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(
        (&run["status"], &run["error"]["code"]),
        (&json!("expired"), &json!("approval_timeout"))
    );
    assert!(
        run["finished_at"].is_string() && run["expires_at"].is_null(),
        "{run}"
    );
    let (status, _) = decide(
        &app,
        &run_id,
        json!({ "call_id": asked["call_id"], "approved": true }),
    )
    .await;
    assert_eq!(status, 409);
    // The conversation goes on.
    let (_, _, _) = run_to_pause(&app, &conversation, "again").await;
    assert!(notes.bodies(backend).await.is_empty());
    app.stop().await;
    notes.db.drop_schema().await;
}
both!(no_decision_in_time);

/// On PostgreSQL with two nodes: a run paused on one goes on on the node
/// the decision reaches, and a client waiting on the first sees it go on.
#[tokio::test]
async fn decision_at_another_node() {
    let backend = Backend::Postgres;
    let Setup {
        app: first,
        notes,
        _mock,
        dir,
    } = setup(backend, 3600).await;
    let second = spawn_app_on(first.db.alias(), |config| {
        config.config_file = Some(dir.path().join("agentstream.toml"));
        config.node_id = Some("second".to_owned());
        config.lease_renew_ms = 100;
    })
    .await;
    let conversation = first.create_agent_conversation("scribe").await;
    let (run_id, asked, pause) = run_to_pause(&first, &conversation, "plan trip").await;
    let waiting = first
        .client
        .get(first.url(&format!("/v1/runs/{run_id}/events?after={pause}")))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), 200);
    let (status, _) = decide(
        &second,
        &run_id,
        json!({ "call_id": asked["call_id"], "approved": true }),
    )
    .await;
    assert_eq!(status, 200);
    let went_on = read_all(waiting).await;
    assert_continues(&went_on, pause);
    assert_eq!(done_status(&went_on), "completed");
    assert_eq!(notes.bodies(backend).await, ["plan trip"]);
    second.stop_keeping_db().await;
    first.stop().await;
    notes.db.drop_schema().await;
}

/// An MCP server's tool named in its `approval_tools` waits too: the call
/// reaches the server (the reference "everything" server, from npm) only
/// once approved.
#[tokio::test]
async fn an_mcp_tool_waits_for_approval() {
    let config = format!(
        r#"
[mcp.ev]
command = "node"
args = ["{entry}", "stdio"]
approval_tools = ["echo"]

[agents.relay]
tools = ["ev__echo"]
"#,
        entry = crate::mcp::everything(),
    );
    let (app, _dir) = spawn_app_with_file(Backend::Sqlite, &config, |_| {}).await;
    let conversation = app.create_agent_conversation("relay").await;
    let response = app
        .stream_run(&conversation, json!({ "input": "ev echo message=hello" }))
        .await;
    let run_id = run_id_of(&response);
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "requires_action", "{events:#?}");
    let asked = events
        .iter()
        .find(|e| e.event == "tool.approval_requested")
        .unwrap();
    assert_eq!(asked.data["name"], "ev__echo");
    let pause: i64 = events.last().unwrap().id.parse().unwrap();
    let (status, _) = decide(
        &app,
        &run_id,
        json!({ "call_id": asked.data["call_id"], "approved": true }),
    )
    .await;
    assert_eq!(status, 200);
    let went_on = events_after(&app, &run_id, pause).await;
    let result = went_on.iter().find(|e| e.event == "tool.result").unwrap();
    assert_eq!(result.data["is_error"], false, "{result:?}");
    assert!(
        result.data["output"].to_string().contains("Echo: hello"),
        "{result:?}"
    );
    assert_eq!(done_status(&went_on), "completed");
    app.stop().await;
}
