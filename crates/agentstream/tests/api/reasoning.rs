//! Reasoning: a thinking model's `reasoning_content` (or `reasoning`) deltas
//! become `reasoning.delta` events, stored and replayed with the run, apart
//! from the reply's text, and never sent back to the model as the reply.

use mock_llm::{MockLlm, reasoning_piece};
use serde_json::{Value, json};

use crate::{both, helpers::*};

/// `thinker` streams twelve reasoning pieces in `reasoning_content`, then
/// its reply; `router` sends its reasoning in OpenRouter's `reasoning`.
fn config(base_url: &str) -> String {
    on_mock(
        base_url,
        r#"
[agents.thinker]
provider = "mock"
model = "mock;tools=never;reasoning=12;deltas=6"

[agents.router]
provider = "mock"
model = "mock;tools=never;reasoning=3;reasoning_field=reasoning;deltas=2"
"#,
    )
}

async fn reasoning_streams_apart_from_the_reply(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let (app, _dir) = spawn_app_with_file(backend, &config(&mock.base_url()), |_| {}).await;
    for (agent, pieces) in [("thinker", 12), ("router", 3)] {
        let expected: String = (0..pieces).map(reasoning_piece).collect();
        let conversation = app.create_agent_conversation(agent).await;
        let mut runs = Vec::new();
        for input in ["Why is the sky blue?", "And at sunset?"] {
            let response = app
                .stream_run(&conversation, json!({ "input": input }))
                .await;
            let run_id = run_id_of(&response);
            let events = read_all(response).await;
            assert_eq!(done_status(&events), "completed", "{agent}");
            let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
            let first_reasoning = kinds.iter().position(|k| *k == "reasoning.delta");
            let first_delta = kinds.iter().position(|k| *k == "delta");
            assert!(
                first_reasoning.unwrap() < first_delta.unwrap(),
                "{agent}: {kinds:?}"
            );
            let reasoning: String = events
                .iter()
                .filter(|e| e.event == "reasoning.delta")
                .map(|e| e.data["text"].as_str().unwrap())
                .collect();
            assert_eq!(reasoning, expected, "{agent}");
            let text = text_of(&events);
            assert!(
                !text.contains("think"),
                "{agent}: the reply has the reasoning: {text}"
            );
            // Stored with the run: a replay has the same events.
            let replayed = app.follow(&run_id).await;
            let replayed: Vec<(&str, &Value)> = replayed
                .iter()
                .map(|e| (e.event.as_str(), &e.data))
                .collect();
            let live: Vec<(&str, &Value)> =
                events.iter().map(|e| (e.event.as_str(), &e.data)).collect();
            assert_eq!(replayed, live, "{agent}");
            runs.push(run_id);
        }
        // The transcript holds the replies without the reasoning, and the
        // model was never sent it back.
        // Each entry is [role, content, status, tool_calls, tool_call_id].
        let stored = transcript(&app, &conversation).await;
        assert_eq!(stored.len(), 4, "{agent}: {stored:?}");
        for message in stored {
            let content = message[1].as_str().unwrap();
            assert!(
                !content.is_empty() && !content.contains("think"),
                "{agent}: stored {message}"
            );
        }
        let last = mock.request_bodies().pop().unwrap();
        let assistants = last["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count();
        assert_eq!(assistants, 1, "the first reply went back: {last}");
        let sent = last.to_string();
        assert!(!sent.contains("Let me think"), "{agent}: sent back: {sent}");
    }
    app.stop().await;
    mock.shutdown().await;
}
both!(reasoning_streams_apart_from_the_reply);
