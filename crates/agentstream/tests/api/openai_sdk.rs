//! The official `openai` Python SDK against `/v1/chat/completions`: its
//! streams, completions, errors and retries as a real client sees them
//! (`tests/openai_sdk/sdk_test.py`), and the README's Python snippet. The
//! SDK is pinned and installed once into `target/openai-venv` by
//! `scripts/openai-venv.sh`, which `scripts/test.sh` runs first.

use std::sync::OnceLock;

use mock_llm::MockLlm;
use serde_json::{Value, json};

use crate::{both, helpers::*};

const README: &str = include_str!("../../../../README.md");

/// The venv's python, installing the pinned SDK the first time (one
/// install for every test of the run).
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = std::process::Command::new(repo_root().join("scripts/openai-venv.sh"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/openai-venv.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    })
}

/// Agents beside the built-in ones: `slow` (a long reply) and `flaky` (its
/// model server drops the connection mid-reply), on `mock-llm`.
fn config(base_url: &str) -> String {
    on_mock(
        base_url,
        r#"
[agents.slow]
provider = "mock"
model = "mock;tools=never;deltas=2000;pace_ms=20"

[agents.flaky]
provider = "mock"
model = "mock;tools=never;fault=reset;after=3"
"#,
    )
}

/// Runs `python` on `script` against the app with `key`; its stdout.
async fn run_python(app: &TestApp, key: &str, script: &[&str], envs: &[(&str, &str)]) -> String {
    let output = tokio::process::Command::new(python())
        .args(script)
        .env("OPENAI_BASE_URL", app.url("/v1"))
        .env("OPENAI_API_KEY", key)
        .envs(envs.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "python {script:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The SDK streams, completes, continues a conversation and raises the
/// right errors, each after one request; what it read is what was stored.
async fn the_openai_sdk_works(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let (mut app, _dir) = spawn_app_with_file(backend, &config(&mock.base_url()), |_| {}).await;
    app.expect_log("run failed");
    let key = app.state.store().create_api_key("alice").await.unwrap().key;
    let alice = |request: reqwest::RequestBuilder| request.bearer_auth(&key);

    // A conversation whose run goes on while the SDK tries it.
    let busy: Value = alice(app.client.post(app.url("/v1/conversations")))
        .json(&json!({ "agent": "slow" }))
        .fetch_json()
        .await;
    let busy = busy["id"].as_str().unwrap();
    let run: Value = alice(
        app.client
            .post(app.url(&format!("/v1/conversations/{busy}/runs"))),
    )
    .json(&json!({ "input": "go on" }))
    .fetch_json()
    .await;

    let script = repo_root().join("crates/agentstream/tests/openai_sdk/sdk_test.py");
    let stdout = run_python(
        &app,
        &key,
        &[script.to_str().unwrap()],
        &[("BUSY_CONVERSATION", busy)],
    )
    .await;
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();

    let errors = &seen["errors"];
    for (name, status, code) in [
        ("unauthorized", json!(401), "invalid_api_key"),
        ("unknown_model", json!(404), "model_not_found"),
        ("unknown_conversation", json!(404), "not_found"),
        ("busy", json!(409), "conversation_busy"),
        ("tools", json!(400), "tools_not_supported"),
        ("mid_stream", Value::Null, "upstream_error"),
        ("failed_run", json!(502), "upstream_error"),
    ] {
        assert_eq!(errors[name]["status"], status, "{name}: {errors}");
        assert_eq!(errors[name]["code"], code, "{name}: {errors}");
        assert_eq!(errors[name]["requests"], 1, "{name}: retried: {errors}");
    }
    assert_eq!(
        seen["models"],
        json!(["chat", "flaky", "onboarding", "slow"])
    );

    // The history was stored (the system message is the agent's business),
    // and each reply the SDK read is the stored assistant message.
    let conversation = seen["conversation"].as_str().unwrap();
    let messages: Value = alice(
        app.client
            .get(app.url(&format!("/v1/conversations/{conversation}/messages"))),
    )
    .fetch_json()
    .await;
    let all: Vec<(&str, &str)> = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    // The agent's get_profile call (a message with no text) and its result
    // stayed on the server.
    let (tool_steps, stored): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(role, content)| *role == "tool" || content.is_empty());
    assert_eq!(tool_steps.len(), 2, "{tool_steps:?}");
    let text = |key: &str| seen[key].as_str().unwrap();
    assert_eq!(
        stored,
        [
            ("user", "Hi, I am Ada."),
            ("assistant", "Hello Ada."),
            ("user", "What can you do?"),
            ("assistant", text("streamed")),
            ("user", "Tell me about my profile"),
            ("assistant", text("second")),
            ("user", "Thanks"),
            ("assistant", text("third")),
        ]
    );
    assert!(text("second").contains("profile"), "{}", text("second"));

    // The refused request stored nothing in the busy conversation.
    let busy_messages: Value = alice(
        app.client
            .get(app.url(&format!("/v1/conversations/{busy}/messages"))),
    )
    .fetch_json()
    .await;
    let users = busy_messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .count();
    assert_eq!(users, 1);
    let run_id = run["id"].as_str().unwrap();
    let cancel = alice(
        app.client
            .post(app.url(&format!("/v1/runs/{run_id}/cancel"))),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(cancel.status(), 202);

    // The README's snippet, as a reader runs it.
    let snippet = readme_snippet();
    let stdout = run_python(&app, &key, &["-c", &snippet], &[]).await;
    assert!(stdout.contains("demo model"), "{stdout}");
    app.stop().await;
    mock.shutdown().await;
}
both!(the_openai_sdk_works);

/// The first Python block of the README's "OpenAI-compatible API" section.
fn readme_snippet() -> String {
    let section = README
        .split("\n## OpenAI-compatible API")
        .nth(1)
        .expect("README: a section \"OpenAI-compatible API\"");
    let block = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README: a Python block in \"OpenAI-compatible API\"");
    block.to_owned()
}
