//! The context window: a conversation of hundreds of turns with a model
//! whose window is small (mock-llm's `context=N` refuses longer prompts as
//! OpenAI does): every turn completes, every request is within the budget
//! and well formed, the transcript keeps everything; and a budget larger
//! than the model's window ends the run with `context_length`.

use mock_llm::{ChatRequest, MockLlm};
use serde_json::{Value, json};

use crate::{both, helpers::*};

/// The model's window, in mock-llm's count.
const WINDOW: usize = 400;
/// The room kept for the reply.
const REPLY: usize = 60;
/// Turns of the long conversation.
const TURNS: usize = 200;

fn config(base_url: &str) -> String {
    on_mock(
        base_url,
        &format!(
            r#"
# Every turn calls get_profile, then answers.
[agents.small]
provider = "mock"
model = "mock;context={WINDOW};deltas=4"
tools = ["get_profile"]
context_tokens = {WINDOW}
max_tokens = {REPLY}

# Believes its model's window is far larger than it is.
[agents.overcommitted]
provider = "mock"
model = "mock;context={WINDOW};deltas=4"
context_tokens = 100000
"#
        ),
    )
}

/// Every tool result follows the call that asked for it, every call is
/// answered, and the history starts with the user's message.
fn assert_well_formed(body: &Value) {
    let messages = body["messages"].as_array().unwrap();
    let history: Vec<&Value> = messages.iter().filter(|m| m["role"] != "system").collect();
    assert_eq!(history[0]["role"], "user", "{body}");
    let mut open: Vec<&str> = Vec::new();
    for message in &history {
        match message["role"].as_str().unwrap() {
            "tool" => {
                let id = message["tool_call_id"].as_str().unwrap();
                assert!(open.contains(&id), "a result without its call: {body}");
                open.retain(|open| *open != id);
            }
            role => {
                assert!(
                    open.is_empty(),
                    "a call without its result before a {role}: {body}"
                );
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    open.push(call["id"].as_str().unwrap());
                }
            }
        }
    }
}

async fn a_long_conversation_fits_a_small_window(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let (app, _dir) = spawn_app_with_file(backend, &config(&mock.base_url()), |_| {}).await;
    let conversation = app.create_agent_conversation("small").await;
    let mut trimmed = 0;
    let mut last = (String::new(), Value::Null);
    for turn in 0..TURNS {
        let input = format!("Turn {turn}: tell me something about the weather in town today");
        let response = app
            .stream_run(&conversation, json!({ "input": input }))
            .await;
        let run_id = run_id_of(&response);
        let events = read_all(response).await;
        assert_eq!(done_status(&events), "completed", "turn {turn}: {events:?}");
        if let Some(event) = events.iter().rfind(|e| e.event == "context.trimmed") {
            last = (run_id, event.data.clone());
        }
        for event in events.iter().filter(|e| e.event == "context.trimmed") {
            trimmed += 1;
            let data = &event.data;
            assert!(data["messages_dropped"].as_u64().unwrap() > 0, "{data}");
            assert!(
                data["tokens"].as_u64().unwrap() as usize <= WINDOW - REPLY,
                "{data}"
            );
            assert_eq!(data["context_tokens"], WINDOW);
        }
    }
    // Trimmed from early on: most model calls left messages out.
    assert!(trimmed > TURNS, "{trimmed} trimmed calls");
    // The run records what its last model call sent.
    let (run_id, event) = last;
    let run = app.get_json(&format!("/v1/runs/{run_id}")).await;
    for field in [
        "messages_sent",
        "messages_dropped",
        "tokens",
        "context_tokens",
    ] {
        assert_eq!(run["context"][field], event[field], "{field}: {run}");
    }
    // The demo model has no window: nothing to record.
    let demo = app.create_conversation("chat").await;
    let response = app.stream_run(&demo, json!({ "input": "hello" })).await;
    let demo_run = run_id_of(&response);
    read_all(response).await;
    let run = app.get_json(&format!("/v1/runs/{demo_run}")).await;
    assert_eq!(run["context"], Value::Null, "{run}");
    // Every request the model got was within the budget, in its own count
    // too, and well formed.
    let bodies = mock.request_bodies();
    assert!(bodies.len() >= 2 * TURNS.min(500), "{}", bodies.len());
    for body in &bodies {
        let request: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert!(
            request.context_tokens() <= WINDOW - REPLY,
            "{} tokens: {body}",
            request.context_tokens()
        );
        assert_well_formed(body);
    }
    // The last request still has the current question.
    let last = bodies.last().unwrap();
    assert!(last.to_string().contains(&format!("Turn {}", TURNS - 1)));
    // The transcript keeps everything: question, call, result, answer.
    let stored = transcript(&app, &conversation).await;
    assert_eq!(stored.len(), 4 * TURNS);
    // Each entry is [role, content, status, tool_calls, tool_call_id].
    assert_eq!(stored[0][0], "user");
    assert!(stored[0][1].as_str().unwrap().starts_with("Turn 0:"));
    app.stop().await;
    mock.shutdown().await;
}
both!(a_long_conversation_fits_a_small_window);

async fn a_window_larger_than_the_models_is_a_context_length_error(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let (mut app, _dir) = spawn_app_with_file(backend, &config(&mock.base_url()), |_| {}).await;
    app.expect_log("run failed");
    let conversation = app.create_agent_conversation("overcommitted").await;
    let mut turn = 0;
    let events = loop {
        let input = format!("Turn {turn}: tell me something about the weather in town today");
        let events = read_all(
            app.stream_run(&conversation, json!({ "input": input }))
                .await,
        )
        .await;
        if done_status(&events) != "completed" {
            break events;
        }
        turn += 1;
        assert!(turn < 100, "the model never refused");
    };
    assert!(turn > 0, "the first turn already failed");
    assert_eq!(done_status(&events), "failed");
    let error = events.iter().find(|e| e.event == "error").unwrap();
    assert_eq!(error.data["code"], "context_length");
    let message = error.data["message"].as_str().unwrap();
    assert!(message.contains("context_tokens"), "{message}");
    app.stop().await;
    mock.shutdown().await;
}
both!(a_window_larger_than_the_models_is_a_context_length_error);
