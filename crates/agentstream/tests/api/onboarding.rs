//! The onboarding flow, end to end, through the native and the seed routes.

use serde_json::json;

use crate::{both, helpers::*};

/// A three-turn onboarding conversation fills the profile through tool calls.
async fn onboarding_fills_the_profile(backend: Backend) {
    let app = spawn_app(backend).await;
    let conversation = app.create_conversation("onboarding").await;
    let answers = ["Ada Lovelace", "engineer", "ship a streaming server"];
    for (turn, answer) in answers.iter().enumerate() {
        let events = read_all(
            app.stream_run(&conversation, json!({ "input": answer }))
                .await,
        )
        .await;
        let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(kinds[0], "run.started");
        let call = events.iter().find(|e| e.event == "tool.call").unwrap();
        assert_eq!(call.data["name"], "update_profile");
        assert_eq!(call.data["arguments"]["value"], *answer);
        let result = events.iter().find(|e| e.event == "tool.result").unwrap();
        assert_eq!(result.data["call_id"], call.data["call_id"]);
        assert_eq!(result.data["is_error"], false);
        // Ids are the run's seq: 1, 2, 3… with no gap.
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.id, (i + 1).to_string());
            assert_eq!(event.data["seq"], i + 1);
        }
        assert_eq!(done_status(&events), "completed");
        let text = text_of(&events);
        if turn < 2 {
            assert!(text.starts_with("Thanks! I saved your"), "{text}");
            assert!(
                events.iter().filter(|e| e.event == "delta").count() > 5,
                "word by word"
            );
        } else {
            // The last answer completes onboarding and streams a summary.
            let names: Vec<&str> = events
                .iter()
                .filter(|e| e.event == "tool.call")
                .map(|e| e.data["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["update_profile", "complete_onboarding"]);
            assert_eq!(
                text,
                "You are all set! Your profile is name: Ada Lovelace; role: engineer; goals: \
                 ship a streaming server. Welcome aboard."
            );
        }
    }
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(
        profile["fields"],
        json!({ "name": "Ada Lovelace", "role": "engineer", "goals": "ship a streaming server" })
    );
    assert!(profile["completed_at"].is_string());

    let messages = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let messages = messages["data"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "tool",
            "assistant", // turn 1
            "user",
            "assistant",
            "tool",
            "assistant", // turn 2
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant", // turn 3
        ]
    );
    assert!(messages.iter().all(|m| m["status"] == "complete"));
    app.stop().await;
}
both!(onboarding_fills_the_profile);

/// Both seed-compatible routes stream deltas and end with `done`, creating
/// the conversation when none is given and continuing it when one is.
async fn seed_routes_stream(backend: Backend) {
    let app = spawn_app(backend).await;
    for (path, kind) in [
        ("/api/v1/chat/stream", "chat"),
        ("/api/v1/chat/onboarding/stream", "onboarding"),
    ] {
        let response = app
            .post_json(path, json!({ "message": "Hello there" }))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        let conversation = response.headers()["x-conversation-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let events = read_all(response).await;
        assert_eq!(events[0].data["conversation_id"], conversation);
        assert_eq!(done_status(&events), "completed");
        assert!(!text_of(&events).is_empty());
        let stored = app
            .get_json(&format!("/v1/conversations/{conversation}"))
            .await;
        assert_eq!(stored["kind"], kind);

        let again = app
            .post_json(
                path,
                json!({ "message": "And again", "conversation_id": conversation }),
            )
            .await;
        assert_eq!(
            again.headers()["x-conversation-id"].to_str().unwrap(),
            conversation
        );
        assert_eq!(done_status(&read_all(again).await), "completed");
    }
    app.stop().await;
}
both!(seed_routes_stream);

/// The chat agent reads the profile with `get_profile` when asked.
async fn chat_reads_the_profile(backend: Backend) {
    let app = spawn_app(backend).await;
    let onboarding = app.create_conversation("onboarding").await;
    read_all(
        app.stream_run(&onboarding, json!({ "input": "Grace" }))
            .await,
    )
    .await;
    let chat = app.create_conversation("chat").await;
    let events = read_all(
        app.stream_run(&chat, json!({ "input": "what is my profile?" }))
            .await,
    )
    .await;
    let result = events.iter().find(|e| e.event == "tool.result").unwrap();
    assert_eq!(result.data["output"]["fields"]["name"], "Grace");
    assert_eq!(text_of(&events), "Here is your profile: name: Grace.");
    app.stop().await;
}
both!(chat_reads_the_profile);
