//! Faults from the field (`tests/fixtures/upstream/`, and the kinds of fault
//! each stands for), end to end on both databases: recorded upstream bodies
//! replayed over a real socket, bytes the databases disagree on, a database
//! that refuses one run's events, queued runs and resuming past the end.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{
    both,
    helpers::*,
    replay::{Answer, Replay, Rule, rule, sse},
};

/// The onboarding agent (update_profile, complete_onboarding) and the chat
/// agent, both on the replaying upstream.
fn config(base_url: &str, onboarding_extra: &str) -> String {
    format!(
        r#"
[providers.replay]
kind = "openai"
base_url = "{base_url}"
max_retries = 0

[agents.onboarding]
provider = "replay"
model = "replay"
tools = ["update_profile", "complete_onboarding"]
{onboarding_extra}

[agents.chat]
provider = "replay"
model = "replay"
"#
    )
}

async fn replay_app(
    backend: Backend,
    rules: Vec<Rule>,
    pace: Duration,
    onboarding_extra: &str,
) -> (TestApp, tempfile::TempDir, Replay) {
    let replay = Replay::start(rules, pace).await;
    let (app, dir) =
        spawn_app_with_file(backend, &config(&replay.base_url, onboarding_extra), |_| {}).await;
    (app, dir, replay)
}

async fn turn(app: &TestApp, conversation: &str, input: &str) -> Vec<SseEvent> {
    read_all(
        app.stream_run(conversation, json!({ "input": input }))
            .await,
    )
    .await
}

fn of_kind<'a>(events: &'a [SseEvent], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e.event == kind)
        .map(|e| &e.data)
        .collect()
}

/// Every event's `seq` is 1, 2, 3…: no gap, no repeat.
fn assert_seq_contiguous(events: &[SseEvent]) {
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e.data["seq"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "{events:#?}");
}

async fn messages(app: &TestApp, conversation: &str) -> Vec<Value> {
    app.get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await["data"]
        .as_array()
        .unwrap()
        .clone()
}

/// An SSE body of whole chunks, then `[DONE]`.
fn body(chunks: &[Value]) -> Answer {
    let mut text: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    Answer::Sse(text)
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

/// A text delta from the model with U+0000 in it: the same on both
/// databases (U+FFFD), never a stuck conversation.
async fn nul_text_is_stored_alike(backend: Backend) {
    let (app, _dir, _replay) = replay_app(
        backend,
        vec![rule("welcome", vec![sse("nul-text")])],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("chat").await;
    let events = turn(&app, &conversation, "welcome me").await;
    assert_eq!(done_status(&events), "completed");
    assert_eq!(text_of(&events), "Welcome to K\u{FFFD}rsou, Ada.");
    assert_seq_contiguous(&events);
    let stored = messages(&app, &conversation).await;
    assert_eq!(stored[1]["content"], "Welcome to K\u{FFFD}rsou, Ada.");
    assert_eq!(stored[1]["status"], "complete");
    // Not stuck: the next turn runs.
    let next = turn(&app, &conversation, "again").await;
    assert_eq!(text_of(&next), "You said: again");
    app.stop().await;
}
both!(nul_text_is_stored_alike);

/// A tool call's argument with U+0000: the tool gets the cleaned value and
/// the run goes on; a NUL in a delta, a name and a nested argument too (an
/// argument the tool does not declare: refused, cleaned all the same).
async fn nul_in_tool_calls_is_cleaned(backend: Backend) {
    let nested = body(&[chunk(
        json!({"tool_calls": [{"index": 0, "id": "c\u{0}1", "type": "function",
                "function": {"name": "update_profile", "arguments":
                    json!({"field": "role", "value": "eng\u{0}ineer", "extra": {"k\u{0}": ["\u{0}"]}}).to_string()}}]}),
        Some("tool_calls"),
    )]);
    let (app, _dir, replay) = replay_app(
        backend,
        vec![
            rule("name", vec![sse("nul-tool-arg")]),
            rule("role", vec![nested]),
        ],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    let events = turn(&app, &conversation, "my name").await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    let result = of_kind(&events, "tool.result")[0];
    assert_eq!(result["is_error"], false, "{result}");
    assert_eq!(
        of_kind(&events, "tool.call")[0]["arguments"]["value"],
        "Ada\u{FFFD}Lovelace"
    );
    let events = turn(&app, &conversation, "my role").await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    // The nested argument is cleaned where it is kept and shown; the tool
    // refuses it (update_profile declares no `extra`), and the run goes on.
    let call = of_kind(&events, "tool.call")[0];
    assert_eq!(call["arguments"]["value"], "eng\u{FFFD}ineer");
    assert_eq!(
        call["arguments"]["extra"],
        json!({"k\u{FFFD}": ["\u{FFFD}"]})
    );
    let result = of_kind(&events, "tool.result")[0];
    assert_eq!(result["is_error"], true, "{result}");
    assert!(
        result["output"]["error"]
            .as_str()
            .unwrap()
            .contains("extra"),
        "{result}"
    );
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"], json!({"name": "Ada\u{FFFD}Lovelace"}));
    // What goes back upstream holds no NUL either.
    let last = replay.requests().pop().unwrap().to_string();
    assert!(!last.contains("\\u0000"), "{last}");
    app.stop().await;
}
both!(nul_in_tool_calls_is_cleaned);

/// Separate tool calls that share an `index` (Gemini), or have none, stay
/// separate: each runs and gets its own result.
async fn calls_sharing_an_index_are_separate(backend: Backend) {
    // Three whole calls with no index and no id, each in a chunk of its own.
    let unindexed = body(&[
        chunk(
            json!({"tool_calls": [{"function": {"name": "update_profile", "arguments": "{\"field\":\"name\",\"value\":\"Grace\"}"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"function": {"name": "update_profile", "arguments": "{\"field\":\"role\",\"value\":\"Admiral\"}"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"function": {"name": "update_profile", "arguments": "{\"field\":\"goals\",\"value\":\"COBOL\"}"}}]}),
            Some("tool_calls"),
        ),
    ]);
    let (app, _dir, replay) = replay_app(
        backend,
        vec![
            rule("gemini", vec![sse("gemini-parallel-index0")]),
            rule("unindexed", vec![unindexed]),
        ],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    let events = turn(&app, &conversation, "gemini").await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    let calls = of_kind(&events, "tool.call");
    let results = of_kind(&events, "tool.result");
    assert_eq!(calls.len(), 2, "{events:#?}");
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r["is_error"] == false),
        "{results:?}"
    );
    assert_eq!(calls[0]["call_id"], "function-call-7301");
    assert_eq!(calls[1]["call_id"], "function-call-7302");
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(
        profile["fields"],
        json!({"name": "Ada Lovelace", "role": "Engineer"})
    );
    // The upstream hears back both calls and both results.
    let second = &replay.requests()[1];
    let tool_ids: Vec<&Value> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| &m["tool_call_id"])
        .collect();
    assert_eq!(
        tool_ids,
        [&json!("function-call-7301"), &json!("function-call-7302")]
    );

    let events = turn(&app, &conversation, "unindexed").await;
    assert_eq!(of_kind(&events, "tool.call").len(), 3, "{events:#?}");
    let ids: std::collections::HashSet<&Value> = of_kind(&events, "tool.call")
        .iter()
        .map(|c| &c["call_id"])
        .collect();
    assert_eq!(ids.len(), 3, "three distinct call ids");
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(
        profile["fields"],
        json!({"name": "Grace", "role": "Admiral", "goals": "COBOL"})
    );
    app.stop().await;
}
both!(calls_sharing_an_index_are_separate);

/// An upstream that reuses a tool-call ID for another call (within a run,
/// across runs): every call runs and gets its own result; agentstream's IDs
/// are unique, and the upstream hears back the IDs it gave.
async fn reused_tool_call_ids_get_their_own_results(backend: Backend) {
    let (app, _dir, replay) = replay_app(
        backend,
        vec![
            rule("kimi", vec![sse("dup-tool-ids"), sse("dup-tool-ids.2")]),
            rule("again", vec![sse("dup-tool-ids")]),
        ],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    let events = turn(&app, &conversation, "kimi").await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    let calls = of_kind(&events, "tool.call");
    let results = of_kind(&events, "tool.result");
    assert_eq!((calls.len(), results.len()), (2, 2), "{events:#?}");
    assert_ne!(calls[0]["call_id"], calls[1]["call_id"]);
    assert_eq!(results[0]["output"]["value"], "Ada Lovelace");
    assert_eq!(
        results[1]["output"]["value"], "Engineer",
        "not the first call's output"
    );
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(
        profile["fields"],
        json!({"name": "Ada Lovelace", "role": "Engineer"})
    );
    // The third request carries both calls under the upstream's own ID,
    // each followed by its own result.
    let third = &replay.requests()[2];
    let sent: Vec<(String, String)> = third["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| match m["role"].as_str() {
            Some("assistant") => Some((
                "call".to_owned(),
                m["tool_calls"][0]["id"].as_str()?.to_owned(),
            )),
            Some("tool") => Some(("result".to_owned(), m["content"].as_str()?.to_owned())),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 4, "{third:#}");
    assert_eq!(sent[0], ("call".to_owned(), "update_profile:0".to_owned()));
    assert!(sent[1].1.contains("Ada Lovelace"), "{sent:?}");
    assert_eq!(sent[2], ("call".to_owned(), "update_profile:0".to_owned()));
    assert!(sent[3].1.contains("Engineer"), "{sent:?}");

    // The same ID once more in a later run of the conversation.
    let events = turn(&app, &conversation, "again").await;
    let call = of_kind(&events, "tool.call")[0];
    assert_ne!(call["call_id"], calls[0]["call_id"]);
    assert_eq!(of_kind(&events, "tool.result")[0]["is_error"], false);
    app.stop().await;
}
both!(reused_tool_call_ids_get_their_own_results);

/// `function.arguments` sent as a JSON object is the arguments.
async fn arguments_as_an_object_are_accepted(backend: Backend) {
    let (app, _dir, _replay) = replay_app(
        backend,
        vec![rule("object", vec![sse("args-as-object")])],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    let events = turn(&app, &conversation, "object").await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    assert_eq!(
        of_kind(&events, "tool.call")[0]["arguments"],
        json!({"field": "name", "value": "Ada Lovelace"})
    );
    assert_eq!(of_kind(&events, "tool.result")[0]["is_error"], false);
    app.stop().await;
}
both!(arguments_as_an_object_are_accepted);

/// A thinking model's reasoning for its tool calls goes back on the next
/// call of the same turn (never as content), and not in later turns; the
/// assistant message with tool calls carries `content: ""`, never `null`.
async fn reasoning_goes_back_within_the_turn(backend: Backend) {
    let (app, _dir, replay) = replay_app(
        backend,
        vec![rule("think", vec![sse("deepseek-reasoning")])],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    let events = turn(&app, &conversation, "think").await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    assert!(
        !text_of(&events).contains("save it"),
        "reasoning is not the reply"
    );
    let requests = replay.requests();
    let assistant = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap()
        .clone();
    assert_eq!(
        assistant["reasoning_content"],
        "The user gave a name; save it with update_profile."
    );
    assert_eq!(assistant["content"], "", "never null: {assistant}");
    turn(&app, &conversation, "next").await;
    let later = replay.requests().pop().unwrap();
    assert!(
        later["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("reasoning_content").is_none() && !m["content"].is_null()),
        "{later:#}"
    );
    app.stop().await;
}
both!(reasoning_goes_back_within_the_turn);

/// A stream that ends with neither a finish reason nor `[DONE]` is a cut
/// reply: `failed` with a code, the partial text kept as `failed`, and
/// marked as cut when the conversation goes on.
async fn a_truncated_stream_is_a_cut_reply(backend: Backend) {
    let (app, _dir, replay) = replay_app(
        backend,
        vec![rule("steps", vec![sse("truncated-no-done")])],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("chat").await;
    let mut app = app;
    app.expect_log("run failed");
    let events = turn(&app, &conversation, "steps please").await;
    assert_eq!(done_status(&events), "failed");
    let error = of_kind(&events, "error")[0];
    assert_eq!(error["code"], "upstream_incomplete", "{error}");
    let stored = messages(&app, &conversation).await;
    assert_eq!(stored[1]["status"], "failed");
    assert_eq!(
        stored[1]["content"],
        "Thanks Ada. Before we go on, here are the three steps of"
    );
    let run = app
        .get_json(&format!(
            "/v1/runs/{}",
            events[0].data["run_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(run["status"], "failed");
    let next = turn(&app, &conversation, "go on").await;
    assert_eq!(done_status(&next), "completed");
    let sent = replay.requests().pop().unwrap();
    let cut = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cut.starts_with("Thanks Ada."), "{cut}");
    assert!(cut.contains("cut off"), "marked as cut: {cut}");
    app.stop().await;
}
both!(a_truncated_stream_is_a_cut_reply);

/// `finish_reason` `length` or `content_filter` is on the `done` and the
/// stored message; `stop` is not shown on `done`.
async fn a_short_finish_is_visible(backend: Backend) {
    let filtered = body(&[
        chunk(json!({"role": "assistant", "content": "I cannot"}), None),
        chunk(json!({}), Some("content_filter")),
    ]);
    let (app, _dir, _replay) = replay_app(
        backend,
        vec![
            rule("long", vec![sse("finish-length")]),
            rule("filtered", vec![filtered]),
        ],
        Duration::ZERO,
        "",
    )
    .await;
    let conversation = app.create_conversation("chat").await;
    for (input, reason) in [("long", "length"), ("filtered", "content_filter")] {
        let events = turn(&app, &conversation, input).await;
        let done = &events.last().unwrap().data;
        assert_eq!(done["status"], "completed");
        assert_eq!(done["finish_reason"], reason, "{done}");
    }
    let events = turn(&app, &conversation, "plain").await;
    assert!(events.last().unwrap().data.get("finish_reason").is_none());
    let stored = messages(&app, &conversation).await;
    let reasons: Vec<&Value> = stored
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(|m| &m["finish_reason"])
        .collect();
    assert_eq!(
        reasons,
        [&json!("length"), &json!("content_filter"), &json!("stop")]
    );
    app.stop().await;
}
both!(a_short_finish_is_visible);

/// An upstream error that echoes the request: clients get a short message
/// and a code; the log line has the detail, on one line, without the
/// user's words or the tool arguments.
async fn upstream_errors_are_short_and_do_not_leak(backend: Backend) {
    let secret = "my-secret-words-4242";
    let echoing = Answer::Status(
        500,
        json!({"error": {"message": format!("validation failed:\n  messages[1].content = {secret:?}\n  at /srv/model/server.py:311"), "code": 500}}),
    );
    let (mut app, _dir, _replay) = replay_app(
        backend,
        vec![rule(secret, vec![echoing])],
        Duration::ZERO,
        "",
    )
    .await;
    app.expect_log("run failed");
    let conversation = app.create_conversation("chat").await;
    let events = turn(&app, &conversation, secret).await;
    assert_eq!(done_status(&events), "failed");
    let error = of_kind(&events, "error")[0];
    assert_eq!(error["code"], "upstream_error");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("500"), "{message}");
    assert!(
        !message.contains(secret) && !message.contains("server.py"),
        "{message}"
    );
    assert!(message.len() < 120, "short: {message}");
    let logged = app.logs_matching("run failed");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("server.py"),
        "the detail is logged: {logged:?}"
    );
    assert!(!logged[0].contains(secret), "no user text: {logged:?}");
    assert!(!logged[0].contains('\n'), "one line: {logged:?}");
    app.stop().await;
}
both!(upstream_errors_are_short_and_do_not_leak);

/// Installs a trigger that makes the database refuse any row of `table`
/// whose `column` contains `marker`: a refusal no cleaning can foresee.
async fn refuse_rows(app: &TestApp, backend: Backend, table: &str, column: &str, marker: &str) {
    let sql = match backend {
        Backend::Sqlite => format!(
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
             WHEN NEW.{column} LIKE '%{marker}%' BEGIN SELECT RAISE(ABORT, 'refused by test'); END; \
             CREATE TRIGGER refuse_{table}_update BEFORE UPDATE ON {table} \
             WHEN NEW.{column} LIKE '%{marker}%' BEGIN SELECT RAISE(ABORT, 'refused by test'); END;"
        ),
        Backend::Postgres => format!(
            "CREATE FUNCTION refuse_{table}() RETURNS trigger AS $$ BEGIN \
             IF NEW.{column} LIKE '%{marker}%' THEN RAISE EXCEPTION 'refused by test'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
        ),
    };
    sqlx::raw_sql(&sql)
        .execute(app.state.store().pool())
        .await
        .unwrap();
}

/// A body of `n` deltas `w0 w1 …`, with `marker` as delta `at`.
fn words(n: usize, marker: Option<(usize, &str)>) -> Answer {
    let mut chunks: Vec<Value> = (0..n)
        .map(|i| {
            let word = match marker {
                Some((at, marker)) if at == i => marker.to_owned(),
                _ => format!("w{i} "),
            };
            chunk(json!({"content": word}), None)
        })
        .collect();
    chunks.push(chunk(json!({}), Some("stop")));
    body(&chunks)
}

/// The database refuses one run's events mid-stream while other runs
/// stream: the others lose nothing and end `completed`; the refused run
/// ends `failed` with one `done`, its log without a gap; its conversation
/// takes the next message.
async fn one_runs_refused_events_harm_no_other_run(backend: Backend) {
    let (mut app, _dir, _replay) = replay_app(
        backend,
        vec![
            rule("poison", vec![words(30, Some((10, "POISON")))]),
            rule("clean", vec![words(30, None)]),
        ],
        Duration::from_millis(3),
        "",
    )
    .await;
    refuse_rows(&app, backend, "run_events", "data", "POISON").await;
    app.expect_log("the database refused this run's events");
    app.expect_log("run failed");
    let mut conversations = Vec::new();
    for _ in 0..6 {
        conversations.push(app.create_conversation("chat").await);
    }
    let streams = conversations.iter().enumerate().map(|(i, conversation)| {
        let app = &app;
        async move {
            let input = if i == 2 { "poison" } else { "clean" };
            turn(app, conversation, input).await
        }
    });
    let all = futures_util::future::join_all(streams).await;
    let expected: String = (0..30).map(|i| format!("w{i} ")).collect();
    for (i, events) in all.iter().enumerate() {
        assert_seq_contiguous(events);
        if i == 2 {
            assert_eq!(done_status(events), "failed", "{events:#?}");
            let error = of_kind(events, "error")[0];
            assert_eq!(error["code"], "storage_error", "{error}");
            assert!(!text_of(events).contains("POISON"));
        } else {
            assert_eq!(done_status(events), "completed", "run {i}: {events:#?}");
            assert_eq!(text_of(events), expected, "run {i} lost nothing");
        }
    }
    // A resumed stream of the refused run replays the same, ending in `done`.
    let refused_run = all[2][0].data["run_id"].as_str().unwrap();
    let replayed = app.follow(refused_run).await;
    assert_eq!(replayed, all[2]);
    // Its conversation is not stuck.
    let next = turn(&app, &conversations[2], "clean").await;
    assert_eq!(done_status(&next), "completed");
    app.stop().await;
}
both!(one_runs_refused_events_harm_no_other_run);

/// The database refuses what a run's end carries (its reply's text): the
/// run still ends, `failed`, with exactly one `done`.
async fn a_refused_end_still_ends_the_run(backend: Backend) {
    let (mut app, _dir, _replay) = replay_app(
        backend,
        vec![rule("poison", vec![words(5, Some((3, "MSGPOISON")))])],
        Duration::ZERO,
        "",
    )
    .await;
    refuse_rows(&app, backend, "messages", "content", "MSGPOISON").await;
    app.expect_log("the database refused this run's events");
    app.expect_log("run failed");
    let conversation = app.create_conversation("chat").await;
    let events = turn(&app, &conversation, "poison").await;
    assert_eq!(done_status(&events), "failed", "{events:#?}");
    assert_seq_contiguous(&events);
    let run_id = events[0].data["run_id"].as_str().unwrap();
    let run = app.get_json(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(app.follow(run_id).await, events);
    let next = turn(&app, &conversation, "fine").await;
    assert_eq!(done_status(&next), "completed");
    app.stop().await;
}
both!(a_refused_end_still_ends_the_run);

/// Text with U+0000 from the user (a message, a title) gets the same answer
/// on both databases, and is stored as U+FFFD.
async fn nul_from_the_user_is_stored_alike(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .post(app.url("/api/v1/chat/onboarding/stream"))
        .json(&json!({ "message": "Ada\u{0}Lovelace" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let conversation = response.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "completed");
    let stored = messages(&app, &conversation).await;
    assert_eq!(stored[0]["content"], "Ada\u{FFFD}Lovelace");
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"]["name"], "Ada\u{FFFD}Lovelace");
    let (status, body) = status_and_body(
        app.post_json(
            "/v1/conversations",
            json!({"kind": "chat", "title": "a\u{0}b"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["title"], "a\u{FFFD}b");
    app.stop().await;
}
both!(nul_from_the_user_is_stored_alike);

/// Three inputs queued on one conversation (`multitask: "enqueue"`): each
/// run answers its own, and the transcript reads question, answer, in order.
async fn queued_runs_answer_their_own_message(backend: Backend) {
    let (app, _dir, replay) = replay_app(backend, vec![], Duration::from_millis(40), "").await;
    let conversation = app.create_conversation("chat").await;
    let first = app
        .stream_run(&conversation, json!({ "input": "first" }))
        .await;
    let mut runs = vec![run_id_of(&first)];
    for input in ["second", "third"] {
        let (status, run) = status_and_body(
            app.post_json(
                &format!("/v1/conversations/{conversation}/runs"),
                json!({ "input": input, "multitask": "enqueue" }),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{run}");
        assert_eq!(run["status"], "queued", "the first run is still going");
        runs.push(run["id"].as_str().unwrap().to_owned());
    }
    read_all(first).await;
    for run in &runs {
        assert_eq!(app.run_until_terminal(run).await["status"], "completed");
    }
    let transcript: Vec<(String, String)> = messages(&app, &conversation)
        .await
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = ["first", "second", "third"]
        .iter()
        .flat_map(|input| {
            [
                ("user".to_owned(), (*input).to_owned()),
                ("assistant".to_owned(), format!("You said: {input}")),
            ]
        })
        .collect();
    assert_eq!(transcript, expected);
    // Each model call saw the conversation up to its own input.
    let last_users: Vec<String> = replay
        .requests()
        .iter()
        .map(|r| {
            let messages = r["messages"].as_array().unwrap();
            assert_eq!(
                messages.iter().filter(|m| m["role"] == "user").count(),
                messages.iter().filter(|m| m["role"] == "assistant").count() + 1,
                "no later question: {r:#}"
            );
            messages.last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(last_users, ["first", "second", "third"]);
    app.stop().await;
}
both!(queued_runs_answer_their_own_message);

/// `Last-Event-ID` beyond a running run's last event: the stream sends
/// nothing and ends cleanly when the run ends.
async fn resume_past_the_end_ends_when_the_run_does(backend: Backend) {
    let (app, _dir, _replay) = replay_app(
        backend,
        vec![rule("slow", vec![words(20, None)])],
        Duration::from_millis(10),
        "",
    )
    .await;
    let conversation = app.create_conversation("chat").await;
    let started = app
        .stream_run(&conversation, json!({ "input": "slow" }))
        .await;
    let run = run_id_of(&started);
    let resumed = app
        .client
        .get(app.url(&format!("/v1/runs/{run}/events")))
        .header("last-event-id", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let seen: Vec<SseEvent> =
        tokio::time::timeout(Duration::from_secs(30), events(resumed).collect::<Vec<_>>())
            .await
            .expect("the resumed stream ended with the run");
    assert!(seen.is_empty(), "nothing after the cursor: {seen:#?}");
    let all = read_all(started).await;
    assert_eq!(done_status(&all), "completed");
    // Once the run is over: 204.
    let over = app
        .client
        .get(app.url(&format!("/v1/runs/{run}/events?after=1000")))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 204);
    app.stop().await;
}
both!(resume_past_the_end_ends_when_the_run_does);

/// The agent's `max_tokens` goes upstream, and `tool_choice` too until the
/// run has called a tool.
async fn agents_send_max_tokens_and_tool_choice(backend: Backend) {
    let (app, _dir, replay) = replay_app(
        backend,
        vec![rule("name", vec![sse("dup-tool-ids")])],
        Duration::ZERO,
        "max_tokens = 64\ntool_choice = \"update_profile\"",
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    let events = turn(&app, &conversation, "name").await;
    assert_eq!(done_status(&events), "completed");
    let requests = replay.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r["max_tokens"] == 64));
    assert_eq!(
        requests[0]["tool_choice"],
        json!({"type": "function", "function": {"name": "update_profile"}})
    );
    assert!(
        requests[1].get("tool_choice").is_none(),
        "{:#}",
        requests[1]
    );
    app.stop().await;
}
both!(agents_send_max_tokens_and_tool_choice);

/// Tool-call arguments streamed in 1-byte pieces, two calls interleaved (one
/// with no ID), then the same again in a later run (the upstream's ID reused):
/// each call's `tool.call.delta`s carry the ID of its `tool.call`, come before
/// it, are coalesced, and join to exactly the arguments text stored for the
/// call; the stored log replays them alike.
async fn tool_call_pieces_join_to_the_arguments(backend: Backend) {
    let name = r#"{"field":"name","value":"Ada Lovelace"}"#;
    let role = r#"{"field": "role", "value": "Engineer"}"#;
    let mut chunks = vec![chunk(
        json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_frag", "type": "function",
            "function": {"name": "update_profile", "arguments": ""}}]}),
        None,
    )];
    let role_pieces = [&role[..10], &role[10..25], &role[25..]];
    for (i, piece) in name.chars().enumerate() {
        chunks.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece.to_string()}}]}),
            None,
        ));
        if i % 10 == 0
            && let Some(role_piece) = role_pieces.get(i / 10)
        {
            let function = if i == 0 {
                json!({"name": "update_profile", "arguments": role_piece})
            } else {
                json!({"arguments": role_piece})
            };
            chunks.push(chunk(
                json!({"tool_calls": [{"index": 1, "function": function}]}),
                None,
            ));
        }
    }
    chunks.push(chunk(json!({}), Some("tool_calls")));
    let fragmented = body(&chunks);
    let (app, _dir, _replay) = replay_app(
        backend,
        vec![
            rule("pieces", vec![fragmented.clone()]),
            rule("again", vec![fragmented]),
        ],
        Duration::from_millis(15),
        "",
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    let mut first_ids = Vec::new();
    for input in ["pieces", "again"] {
        let events = turn(&app, &conversation, input).await;
        assert_eq!(done_status(&events), "completed", "{events:#?}");
        assert_seq_contiguous(&events);
        let run_id = events[0].data["run_id"].as_str().unwrap().to_owned();
        let stored = messages(&app, &conversation).await;
        let stored_calls: Vec<&Value> = stored
            .iter()
            .filter(|m| m["run_id"] == run_id.as_str())
            .filter_map(|m| m["tool_calls"].as_array())
            .flatten()
            .collect();
        let calls = of_kind(&events, "tool.call");
        assert_eq!((calls.len(), stored_calls.len()), (2, 2), "{stored:#?}");
        let pieces = of_kind(&events, "tool.call.delta");
        assert!(
            pieces
                .iter()
                .all(|p| calls.iter().any(|c| c["call_id"] == p["call_id"])),
            "{events:#?}"
        );
        for (call, stored_call) in calls.iter().zip(&stored_calls) {
            let own: Vec<&&Value> = pieces
                .iter()
                .filter(|p| p["call_id"] == call["call_id"])
                .collect();
            assert!(own.iter().all(|p| p["name"] == "update_profile"));
            assert!(own.iter().all(|p| p["seq"].as_i64() < call["seq"].as_i64()));
            let joined: String = own
                .iter()
                .map(|p| p["arguments_delta"].as_str().unwrap())
                .collect();
            assert_eq!(stored_call["id"], call["call_id"]);
            assert_eq!(joined, stored_call["arguments"].as_str().unwrap());
            assert_eq!(
                serde_json::from_str::<Value>(&joined).unwrap(),
                call["arguments"]
            );
        }
        let name_pieces = pieces
            .iter()
            .filter(|p| p["call_id"] == calls[0]["call_id"])
            .count();
        assert!(
            (2..name.len()).contains(&name_pieces),
            "{name_pieces} events for {} pieces: coalesced, yet streamed",
            name.len()
        );
        let ids: Vec<Value> = calls.iter().map(|c| c["call_id"].clone()).collect();
        assert_ne!(ids[0], ids[1]);
        if first_ids.is_empty() {
            assert_eq!(ids[0], "call_frag");
            first_ids = ids;
        } else {
            assert!(ids.iter().all(|id| !first_ids.contains(id)), "{ids:?}");
        }
        let replayed: Vec<Value> = app
            .follow(&run_id)
            .await
            .into_iter()
            .map(|e| e.data)
            .collect();
        let live: Vec<Value> = events.into_iter().map(|e| e.data).collect();
        assert_eq!(replayed, live);
    }
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(
        profile["fields"],
        json!({"name": "Ada Lovelace", "role": "Engineer"})
    );
    app.stop().await;
}
both!(tool_call_pieces_join_to_the_arguments);
