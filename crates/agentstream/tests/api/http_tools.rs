//! HTTP tools end to end, on both databases: a team backend on a loopback
//! port that verifies every call's signature and records its idempotency
//! key, headers and body; the model is the replaying upstream, whose
//! recorded requests show what the model was told after each call.

use std::{
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use agentstream::App;
use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::post,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::{
    both,
    helpers::*,
    replay::{Replay, rule, tool_call},
};

/// The variable holding the HMAC secret and the API key header's value:
/// one cargo sets for every test process, since a test cannot set one
/// (`std::env::set_var` is unsafe, and unsafe code is forbidden).
const SECRET_ENV: &str = "CARGO_PKG_NAME";

fn secret() -> String {
    std::env::var(SECRET_ENV).expect("cargo sets CARGO_PKG_NAME for tests")
}

/// One request the backend received.
#[derive(Debug, Clone)]
struct Received {
    idempotency_key: String,
    /// Whether `X-Agentstream-Signature` verified.
    signed: bool,
    api_key: Option<String>,
    team: Option<String>,
    body: Value,
}

#[derive(Clone)]
struct Shared {
    secret: String,
    received: Arc<Mutex<Vec<Received>>>,
}

/// The team's backend; stops when dropped. What it answers depends on the
/// `mode` argument: `ok` (the order, as JSON), `slow` (never answers),
/// `flaky` (503 to a key's first attempt, then JSON), `bad` (422),
/// `html` (200 with HTML), `empty` (204).
struct TeamBackend {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    _server: LoopbackServer,
}

impl TeamBackend {
    async fn start() -> TeamBackend {
        let received = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            secret: secret(),
            received: received.clone(),
        };
        let app = Router::new()
            .route("/agent/orders", post(order_action))
            .with_state(shared);
        let server = LoopbackServer::start(app).await;
        let addr = server.addr;
        TeamBackend {
            url: format!("http://{addr}/agent/orders"),
            received,
            _server: server,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Verifies `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` as a
/// backend would: the MAC, and a timestamp within five minutes.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers
        .get("x-agentstream-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v1)) => signatures.push(v1.to_owned()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(timestamp) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    signatures.contains(&expected)
}

async fn order_action(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let signed = verify(&shared.secret, &headers, &body);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let idempotency_key = header("idempotency-key").unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let seen_before = {
        let mut received = shared.received.lock().unwrap();
        let seen = received
            .iter()
            .filter(|r| r.idempotency_key == idempotency_key)
            .count();
        received.push(Received {
            idempotency_key,
            signed,
            api_key: header("x-api-key"),
            team: header("x-team"),
            body: request.clone(),
        });
        seen
    };
    if !signed {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let order = &request["arguments"]["order"];
    match request["arguments"]["mode"].as_str() {
        Some("ok") => Json(json!({"order": order, "status": "shipped"})).into_response(),
        Some("slow") => std::future::pending().await,
        Some("flaky") if seen_before == 0 => {
            (StatusCode::SERVICE_UNAVAILABLE, "busy, try again").into_response()
        }
        Some("flaky") => {
            Json(json!({"order": order, "status": "shipped", "attempt": seen_before + 1}))
                .into_response()
        }
        // A 429 asking for no wait, then the answer.
        Some("throttled") if seen_before == 0 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "0")],
            "slow down",
        )
            .into_response(),
        Some("throttled") => {
            Json(json!({"order": order, "attempt": seen_before + 1})).into_response()
        }
        // Down for an hour: not worth holding the run for.
        Some("closed") => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "3600")],
            "closed for maintenance",
        )
            .into_response(),
        Some("bad") => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "order 42 cannot be cancelled"})),
        )
            .into_response(),
        Some("html") => Html("<html>\n  <body>Done!</body>\n</html>").into_response(),
        Some("empty") => StatusCode::NO_CONTENT.into_response(),
        _ => (StatusCode::BAD_REQUEST, "no such mode").into_response(),
    }
}

/// An agent with two HTTP tools on the backend: `order_action`, and
/// `slow_action` with a short timeout.
fn config(replay: &str, backend: &str) -> String {
    format!(
        r#"
[providers.replay]
kind = "openai"
base_url = "{replay}"
max_retries = 0

[agents.ops]
description = "Acts on orders."
provider = "replay"
model = "replay"
tools = ["order_action", "slow_action"]

[tools.order_action]
kind = "http"
description = "Act on an order."
url = "{backend}"
secret_env = "{SECRET_ENV}"
headers.X-Api-Key = {{ env = "{SECRET_ENV}" }}
headers.X-Team = "ops"

[tools.order_action.parameters.mode]
type = "string"
enum = ["ok", "flaky", "throttled", "closed", "bad", "html", "empty"]

[tools.order_action.parameters.order]
type = "integer"
default = 42

[tools.slow_action]
kind = "http"
description = "Act on an order, slowly."
url = "{backend}"
secret_env = "{SECRET_ENV}"
timeout_ms = 300

[tools.slow_action.parameters.mode]
type = "string"
"#
    )
}

struct Setup {
    app: TestApp,
    _dir: tempfile::TempDir,
    replay: Replay,
    backend: TeamBackend,
    conversation: String,
}

async fn setup(backend: Backend) -> Setup {
    let team = TeamBackend::start().await;
    let replay = Replay::start(
        vec![
            rule(
                "ship it",
                vec![tool_call(
                    "call_ok",
                    "order_action",
                    json!({"mode": "ok", "order": 7}),
                )],
            ),
            rule(
                "flaky",
                vec![tool_call(
                    "call_flaky",
                    "order_action",
                    json!({"mode": "flaky"}),
                )],
            ),
            rule(
                "throttled",
                vec![tool_call(
                    "call_throttled",
                    "order_action",
                    json!({"mode": "throttled"}),
                )],
            ),
            rule(
                "closed",
                vec![tool_call(
                    "call_closed",
                    "order_action",
                    json!({"mode": "closed"}),
                )],
            ),
            rule(
                "refused",
                vec![tool_call(
                    "call_bad",
                    "order_action",
                    json!({"mode": "bad"}),
                )],
            ),
            rule(
                "html",
                vec![tool_call(
                    "call_html",
                    "order_action",
                    json!({"mode": "html"}),
                )],
            ),
            rule(
                "empty",
                vec![tool_call(
                    "call_empty",
                    "order_action",
                    json!({"mode": "empty"}),
                )],
            ),
            rule(
                "slow",
                vec![tool_call(
                    "call_slow",
                    "slow_action",
                    json!({"mode": "slow"}),
                )],
            ),
            rule(
                "impersonate",
                vec![tool_call(
                    "call_user",
                    "order_action",
                    json!({"mode": "ok", "user_id": "someone-else"}),
                )],
            ),
            rule(
                "caller object",
                vec![tool_call(
                    "call_caller",
                    "order_action",
                    json!({"mode": "ok", "caller": {"subject": "admin"}}),
                )],
            ),
        ],
        std::time::Duration::ZERO,
    )
    .await;
    let (app, dir) =
        spawn_app_with_file(backend, &config(&replay.base_url, &team.url), |_| {}).await;
    let conversation = app.create_agent_conversation("ops").await;
    Setup {
        app,
        _dir: dir,
        replay,
        backend: team,
        conversation,
    }
}

/// What one turn with one tool call came to.
struct Turn {
    run_id: String,
    /// The `tool.result` event's data.
    result: Value,
    /// The tool message the model was sent next, parsed.
    told: Value,
}

/// Runs a turn whose model makes one tool call: it ends `completed`, with
/// one `tool.result`, and the model's next request carries the result.
async fn turn(setup: &Setup, input: &str) -> Turn {
    let response = setup
        .app
        .stream_run(&setup.conversation, json!({ "input": input }))
        .await;
    let run_id = run_id_of(&response);
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    let results: Vec<&SseEvent> = events.iter().filter(|e| e.event == "tool.result").collect();
    assert_eq!(results.len(), 1, "{events:#?}");
    let result = results[0].data.clone();
    let told = setup.replay.told(&result);
    Turn {
        run_id,
        result,
        told,
    }
}

/// The backend's calls with this idempotency key.
fn calls_with_key(setup: &Setup, key: &str) -> Vec<Received> {
    setup
        .backend
        .received()
        .into_iter()
        .filter(|r| r.idempotency_key == key)
        .collect()
}

/// A call reaches the backend signed, with the run's key, the static
/// headers and the caller from the run; its JSON answer is what the model
/// reads. A 503 is retried with the same key and body, and the model sees
/// the one result.
async fn a_call_is_signed_and_bound_to_the_caller(backend: Backend) {
    let setup = setup(backend).await;
    let app = &setup.app;

    let turn_ok = turn(&setup, "ship it").await;
    assert_eq!(turn_ok.result["is_error"], false, "{}", turn_ok.result);
    assert_eq!(turn_ok.told, json!({"order": 7, "status": "shipped"}));
    let key = format!("{}:call_ok", turn_ok.run_id);
    let calls = calls_with_key(&setup, &key);
    assert_eq!(calls.len(), 1, "{:#?}", setup.backend.received());
    let call = &calls[0];
    assert!(call.signed);
    assert_eq!(call.api_key.as_deref(), Some(secret().as_str()));
    assert_eq!(call.team.as_deref(), Some("ops"));
    assert_eq!(
        call.body,
        json!({
            "tool": "order_action",
            "arguments": {"mode": "ok", "order": 7},
            "caller": {
                "subject": "local",
                "user_id": app.state.local_user().id.to_string(),
                "conversation_id": setup.conversation,
                "run_id": turn_ok.run_id,
                "call_id": "call_ok",
            },
        })
    );

    let flaky = turn(&setup, "flaky").await;
    assert_eq!(flaky.result["is_error"], false, "{}", flaky.result);
    assert_eq!(
        flaky.told,
        json!({"order": 42, "status": "shipped", "attempt": 2})
    );
    let calls = calls_with_key(&setup, &format!("{}:call_flaky", flaky.run_id));
    assert_eq!(calls.len(), 2, "{:#?}", setup.backend.received());
    assert!(calls.iter().all(|c| c.signed));
    assert_eq!(calls[0].body, calls[1].body);

    // A 429's `Retry-After` is waited out when it is short; one asking for
    // an hour is not: the model reads the answer after one attempt.
    let throttled = turn(&setup, "throttled").await;
    assert_eq!(throttled.told, json!({"order": 42, "attempt": 2}));
    let calls = calls_with_key(&setup, &format!("{}:call_throttled", throttled.run_id));
    assert_eq!(calls.len(), 2);
    let closed = turn(&setup, "closed").await;
    assert_eq!(closed.result["is_error"], true, "{}", closed.result);
    let calls = calls_with_key(&setup, &format!("{}:call_closed", closed.run_id));
    assert_eq!(calls.len(), 1, "not retried");

    // One tool message per call in the transcript, the retry's included.
    let messages = app
        .get_json(&format!(
            "/v1/conversations/{}/messages",
            setup.conversation
        ))
        .await;
    let tool_messages: Vec<&Value> = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 4, "{messages:#}");

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"agentstream_http_tool_calls_total{tool="order_action",outcome="ok"}"#),
        "{metrics}"
    );
    setup.app.stop().await;
}
both!(a_call_is_signed_and_bound_to_the_caller);

/// A 4xx, a 200 that is not JSON and a timeout are tool errors the model
/// reads, and the run completes; a 204 is `{"ok": true}`; an argument
/// naming the caller is refused before the backend is called.
async fn backend_failures_are_tool_errors(backend: Backend) {
    let setup = setup(backend).await;

    let refused = turn(&setup, "refused").await;
    assert_eq!(refused.result["is_error"], true);
    assert_eq!(
        refused.told,
        json!({"error": r#"the backend answered 422 Unprocessable Entity: {"error":"order 42 cannot be cancelled"}"#})
    );

    let html = turn(&setup, "html").await;
    assert_eq!(html.result["is_error"], true);
    assert_eq!(
        html.told,
        json!({"error": "the backend answered 200 OK with a body that is not JSON: <html> <body>Done!</body> </html>"})
    );

    let empty = turn(&setup, "empty").await;
    assert_eq!(empty.result["is_error"], false);
    assert_eq!(empty.told, json!({"ok": true}));

    // Not retried: the backend saw the call once.
    let slow = turn(&setup, "slow").await;
    assert_eq!(slow.result["is_error"], true);
    assert_eq!(
        slow.told,
        json!({"error": "the backend did not answer within 300 ms"})
    );
    assert_eq!(
        calls_with_key(&setup, &format!("{}:call_slow", slow.run_id)).len(),
        1
    );

    let before = setup.backend.received().len();
    let impersonate = turn(&setup, "impersonate").await;
    assert_eq!(impersonate.result["is_error"], true);
    let error = impersonate.told["error"].as_str().unwrap();
    assert!(error.contains("`user_id` is set by the server"), "{error}");
    let caller = turn(&setup, "caller object").await;
    assert_eq!(caller.result["is_error"], true);
    let error = caller.told["error"].as_str().unwrap();
    assert!(error.contains("`caller` is set by the server"), "{error}");
    assert_eq!(setup.backend.received().len(), before);
    assert!(setup.backend.received().iter().all(|r| r.signed));
    setup.app.stop().await;
}
both!(backend_failures_are_tool_errors);

/// A tool whose secret's variable is not set stops start-up, named.
#[tokio::test]
async fn start_up_names_the_tool_without_its_secret() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentstream.toml");
    std::fs::write(
        &path,
        r#"
[tools.notify_team]
kind = "http"
description = "Tell the team."
url = "https://hooks.example.com/agent"
secret_env = "AGENTSTREAM_TEST_SURELY_UNSET_SECRET"
"#,
    )
    .unwrap();
    let mut config = test_config(&db);
    config.config_file = Some(path);
    let error = App::build(config).await.unwrap_err().to_string();
    assert!(
        error.contains(r#"tool "notify_team""#)
            && error.contains("AGENTSTREAM_TEST_SURELY_UNSET_SECRET (secret_env) is not set"),
        "{error}"
    );
}
