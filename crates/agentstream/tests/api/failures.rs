//! Failures mid-run end with `error` then `done(failed)`, keep the partial
//! reply, and leave the server healthy.

use serde_json::json;

use crate::{both, helpers::*};

const FAILING_CHAT: &str = r#"
[agents.chat]
provider = "scripted"
model = "demo;fail_after=3"
"#;

async fn a_model_failure_fails_the_run(backend: Backend) {
    let (mut app, _dir) = spawn_app_with_file(backend, FAILING_CHAT, |_| {}).await;
    app.expect_log("run failed");
    let conversation = app.create_conversation("chat").await;
    let events = read_all(
        app.stream_run(&conversation, json!({ "input": "hello" }))
            .await,
    )
    .await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["run.started", "delta", "delta", "delta", "error", "done"]
    );
    assert_eq!(events[4].data["code"], "upstream_error");
    assert_eq!(done_status(&events), "failed");
    let messages = app
        .get_json(&format!("/v1/conversations/{conversation}/messages"))
        .await;
    let reply = &messages["data"][1];
    assert_eq!(reply["status"], "failed");
    assert_eq!(reply["content"], text_of(&events));
    let run = app
        .get_json(&format!(
            "/v1/runs/{}",
            events[0].data["run_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "upstream_error");
    // The server stays healthy and the conversation takes the next run.
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let next = read_all(
        app.stream_run(&conversation, json!({ "input": "again" }))
            .await,
    )
    .await;
    assert_eq!(done_status(&next), "failed");
    assert_eq!(app.unexpected_logs(), Vec::<String>::new());
    assert!(
        !app.logs_matching("run failed").is_empty(),
        "the failure was logged"
    );
    app.stop().await;
}
both!(a_model_failure_fails_the_run);

/// A run that reaches its step limit ends `failed` with `step_limit`.
async fn the_step_limit_holds(backend: Backend) {
    let (mut app, _dir) = spawn_app_with_file(
        backend,
        "[agents.onboarding]\nprovider = \"scripted\"\nmodel = \"demo\"\nmax_steps = 1\n",
        |_| {},
    )
    .await;
    app.expect_log("run failed");
    let conversation = app.create_conversation("onboarding").await;
    let events = read_all(
        app.stream_run(&conversation, json!({ "input": "Ada" }))
            .await,
    )
    .await;
    let error = events.iter().find(|e| e.event == "error").unwrap();
    assert_eq!(error.data["code"], "step_limit");
    assert_eq!(done_status(&events), "failed");
    // The tool call of the one step was applied, once.
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(profile["fields"]["name"], "Ada");
    app.stop().await;
}
both!(the_step_limit_holds);
