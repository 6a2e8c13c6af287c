//! The `openai` provider end to end against `mock-llm`, the fake upstream
//! that speaks the real protocol: the onboarding flow, every fault, and the
//! API key kept out of the logs.

use mock_llm::MockLlm;
use serde_json::json;

use crate::{both, helpers::*, process::ServerProcess};

/// A config whose agents use `mock-llm` at `base_url`: the onboarding agent
/// with `onboarding`, the chat agent with `chat` as the model (its options).
fn mock_config(base_url: &str, onboarding: &str, chat: &str, extra: &str) -> String {
    format!(
        r#"
[providers.mock]
kind = "openai"
base_url = "{base_url}"
chunk_timeout_ms = 500
first_token_timeout_ms = 500
{extra}

[agents.onboarding]
provider = "mock"
model = "{onboarding}"
tools = ["update_profile", "complete_onboarding"]

[agents.chat]
provider = "mock"
model = "{chat}"
"#
    )
}

/// The onboarding flow through the `openai` provider: each answer is saved
/// by an `update_profile` call the upstream streams in pieces.
async fn onboarding_through_openai(backend: Backend) {
    let mock = MockLlm::start().await.unwrap();
    let (app, _dir) = spawn_app_with_file(
        backend,
        &mock_config(&mock.base_url(), "mock;deltas=6", "mock", ""),
        |_| {},
    )
    .await;
    let conversation = app.create_conversation("onboarding").await;
    for answer in ["Ada Lovelace", "engineer", "ship it"] {
        let events = read_all(
            app.stream_run(&conversation, json!({ "input": answer }))
                .await,
        )
        .await;
        let call = events.iter().find(|e| e.event == "tool.call").unwrap();
        assert_eq!(call.data["name"], "update_profile");
        assert_eq!(call.data["arguments"]["value"], answer);
        assert_eq!(text_of(&events), "Noted. lorem ipsum dolor sit amet");
        assert_eq!(
            events.iter().filter(|e| e.event == "delta").count(),
            6,
            "streamed, not buffered"
        );
        assert_eq!(done_status(&events), "completed");
        let usage = &events.last().unwrap().data["usage"];
        assert!(usage["total_tokens"].as_u64().unwrap() > 0, "{usage}");
    }
    let profile = app.get_json("/v1/profile").await;
    assert_eq!(
        profile["fields"],
        json!({ "name": "Ada Lovelace", "role": "engineer", "goals": "ship it" })
    );
    // The upstream saw the whole conversation, tool results included.
    let last = mock.request_bodies().pop().unwrap();
    let roles: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.first(), Some(&"system"));
    assert_eq!(roles.last(), Some(&"tool"));
    assert_eq!(last["stream"], true);
    app.stop().await;
}
both!(onboarding_through_openai);

/// One upstream fault, as a client and the store see it.
struct Fault {
    model: &'static str,
    code: &'static str,
    requests: u64,
    deltas: usize,
}

const FAULTS: [Fault; 7] = [
    Fault {
        model: "mock;fault=500",
        code: "upstream_error",
        requests: 3,
        deltas: 0,
    },
    Fault {
        model: "mock;fault=429",
        code: "upstream_error",
        requests: 3,
        deltas: 0,
    },
    Fault {
        model: "mock;fault=reset;after=3;tools=never",
        code: "upstream_error",
        requests: 1,
        deltas: 2,
    },
    Fault {
        model: "mock;fault=malformed;after=3;tools=never",
        code: "upstream_protocol",
        requests: 1,
        deltas: 2,
    },
    Fault {
        model: "mock;fault=stall;after=3;tools=never",
        code: "upstream_timeout",
        requests: 1,
        deltas: 2,
    },
    Fault {
        model: "mock;ttft_ms=5000;tools=never",
        code: "upstream_timeout",
        requests: 1,
        deltas: 0,
    },
    Fault {
        model: "mock;fail_first=2;deltas=4;tools=never",
        code: "",
        requests: 3,
        deltas: 4,
    },
];

/// Each fault ends the run with `error` then `done(failed)`, keeps the
/// partial reply with status `failed`, retries only before the first token,
/// and leaves the server healthy.
async fn upstream_faults(backend: Backend) {
    for fault in &FAULTS {
        let mock = MockLlm::start().await.unwrap();
        let config = mock_config(&mock.base_url(), "mock", fault.model, "max_retries = 2");
        let (mut app, _dir) = spawn_app_with_file(backend, &config, |_| {}).await;
        app.expect_log("run failed");
        app.expect_log("retrying");
        let conversation = app.create_conversation("chat").await;
        let events = read_all(
            app.stream_run(&conversation, json!({ "input": "hello" }))
                .await,
        )
        .await;
        let deltas = events.iter().filter(|e| e.event == "delta").count();
        assert_eq!(deltas, fault.deltas, "{}: {events:#?}", fault.model);
        assert_eq!(mock.requests(), fault.requests, "{}", fault.model);
        let messages = app
            .get_json(&format!("/v1/conversations/{conversation}/messages"))
            .await;
        let reply = &messages["data"][1];
        assert_eq!(reply["content"], text_of(&events), "{}", fault.model);
        if fault.code.is_empty() {
            assert_eq!(done_status(&events), "completed", "{}", fault.model);
            assert_eq!(reply["status"], "complete");
        } else {
            let error = &events[events.len() - 2];
            assert_eq!(error.event, "error", "{}", fault.model);
            assert_eq!(error.data["code"], fault.code, "{}", fault.model);
            assert_eq!(done_status(&events), "failed", "{}", fault.model);
            assert_eq!(reply["status"], "failed");
        }
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        app.stop().await;
        mock.shutdown().await;
    }
}
both!(upstream_faults);

/// The key reaches the upstream and never the logs, even at debug level
/// and through failures.
#[tokio::test]
async fn the_api_key_stays_out_of_the_logs() {
    const KEY: &str = "sk-test-7f3a9c1e5b";
    let mock = MockLlm::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentstream.toml");
    let file = mock_config(
        &mock.base_url(),
        "mock;fail_first=1;deltas=3",
        "mock;fault=500",
        "api_key_env = \"MOCK_KEY\"",
    );
    std::fs::write(&config, file).unwrap();
    let database = format!("sqlite://{}/db.sqlite", dir.path().display());
    let mut server = ServerProcess::start(
        &[
            "--config",
            config.to_str().unwrap(),
            "--database-url",
            &database,
        ],
        &[("MOCK_KEY", KEY), ("RUST_LOG", "debug")],
    )
    .await;
    let client = client();
    for (path, kind) in [
        ("/api/v1/chat/onboarding/stream", "onboarding"),
        ("/api/v1/chat/stream", "chat"),
    ] {
        let response = client
            .post(server.url(path))
            .json(&json!({ "message": "hello" }))
            .send()
            .await
            .unwrap();
        let events = read_all(response).await;
        let expected = if kind == "onboarding" {
            "completed"
        } else {
            "failed"
        };
        assert_eq!(done_status(&events), expected);
    }
    assert!(
        mock.authorizations()
            .iter()
            .all(|a| a == &format!("Bearer {KEY}"))
    );
    assert!(mock.requests() >= 5);
    server.signal("TERM").await;
    assert!(server.wait().await.success());
    assert!(server.log.len() > 10, "debug logging was on");
    let leaks: Vec<&String> = server
        .log
        .iter()
        .filter(|line| line.contains(KEY))
        .collect();
    assert!(leaks.is_empty(), "the key leaked: {leaks:#?}");
}

/// A provider whose `base_url` answers 404 for its models list is set up
/// wrong, not down: start-up stops with an error naming it. (Needs the
/// `openai` provider's start-up check; the default check finds nothing.)
#[tokio::test]
async fn a_provider_at_a_wrong_url_stops_start_up() {
    let mock = MockLlm::start().await.unwrap();
    // mock-llm answers 404 to every path but its own.
    let wrong = format!("{}/nope", mock.base_url());
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentstream.toml");
    std::fs::write(&path, mock_config(&wrong, "mock", "mock", "")).unwrap();
    let mut config = test_config(&db);
    config.config_file = Some(path);
    let error = match agentstream::App::build(config).await {
        Ok(_) => panic!("started with a provider at {wrong}"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("provider \"mock\"") && error.contains(&wrong),
        "{error}"
    );
    db.drop_schema().await;
}
