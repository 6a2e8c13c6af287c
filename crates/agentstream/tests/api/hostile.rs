//! Hostile input: generated bodies, query strings and headers against every
//! route that parses them. The server never panics, never answers 5xx, and
//! every refusal carries the JSON error body.

use proptest::{
    collection::{btree_map, vec},
    prelude::*,
    strategy::ValueTree,
    test_runner::TestRunner,
};
use serde_json::{Value, json};

use crate::{both, helpers::*};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        "[0-9a-f-]{36}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects with the fields the routes know, holding anything.
fn shaped_body() -> impl Strategy<Value = Value> {
    let field =
        |name: &'static str| proptest::option::of(json_value()).prop_map(move |v| (name, v));
    (
        field("input"),
        field("message"),
        field("kind"),
        field("conversation_id"),
        field("client_message_id"),
        field("multitask"),
        field("on_disconnect"),
        field("title"),
    )
        .prop_map(|fields| {
            let (a, b, c, d, e, f, g, h) = fields;
            Value::Object(
                [a, b, c, d, e, f, g, h]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                    .collect(),
            )
        })
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    route: usize,
    body: Body,
    content_type: Option<String>,
    last_event_id: Option<String>,
    authorization: Option<String>,
    accept_stream: bool,
    query: String,
}

fn case() -> impl Strategy<Value = Case> {
    let body = prop_oneof![
        3 => shaped_body().prop_map(Body::Json),
        2 => json_value().prop_map(Body::Json),
        1 => vec(any::<u8>(), 0..200).prop_map(Body::Raw),
    ];
    let header = || proptest::option::of("[ -~]{0,40}");
    (
        0..8usize,
        body,
        proptest::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("application/json; charset=utf-8".to_owned()),
            Just("text/plain".to_owned()),
            "[ -~]{0,30}"
        ]),
        header(),
        header(),
        any::<bool>(),
        "[ -~&=]{0,30}",
    )
        .prop_map(
            |(route, body, content_type, last_event_id, authorization, accept_stream, query)| {
                Case {
                    route,
                    body,
                    content_type,
                    last_event_id,
                    authorization,
                    accept_stream,
                    query,
                }
            },
        )
}

async fn hostile_input_never_breaks_the_server(backend: Backend) {
    let mut app = spawn_app_with(backend, |config| config.max_runs_per_user = 1000).await;
    app.expect_log("run failed");
    let conversation = app.create_conversation("onboarding").await;
    let response = app
        .stream_run(&conversation, json!({ "input": "Ada" }))
        .await;
    let run = response.headers()["x-run-id"].to_str().unwrap().to_owned();
    read_all(response).await;
    let routes = [
        ("POST", "/v1/conversations".to_owned()),
        ("GET", "/v1/conversations".to_owned()),
        ("POST", format!("/v1/conversations/{conversation}/runs")),
        ("POST", "/api/v1/chat/stream".to_owned()),
        ("POST", "/api/v1/chat/onboarding/stream".to_owned()),
        ("GET", format!("/v1/runs/{run}/events")),
        ("POST", format!("/v1/runs/{run}/cancel")),
        ("GET", format!("/v1/conversations/{conversation}/messages")),
    ];
    // A fixed seed, so a failure reproduces.
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let (mut refused, mut served) = (0, 0);
    for n in 0..400 {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let (method, path) = &routes[case.route];
        let url = format!("{}?{}", app.url(path), case.query);
        let mut request = app.client.request(method.parse().unwrap(), &url);
        request = match &case.body {
            Body::Json(value) => request.body(value.to_string()),
            Body::Raw(bytes) => request.body(bytes.clone()),
        };
        for (name, value) in [
            ("content-type", &case.content_type),
            ("last-event-id", &case.last_event_id),
            ("authorization", &case.authorization),
        ] {
            if let Some(value) = value {
                request = request.header(name, value.as_str());
            }
        }
        if case.accept_stream {
            request = request.header("accept", "text/event-stream");
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(
            !status.is_server_error(),
            "case {n}: {status} for {case:#?}"
        );
        if status.is_client_error() {
            refused += 1;
        } else {
            served += 1;
        }
        let is_stream = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if is_stream {
            let events = read_all(response).await;
            assert!(!events.is_empty(), "case {n}");
        } else if status.is_client_error() {
            let body: Value = response
                .json()
                .await
                .unwrap_or_else(|e| panic!("case {n}: no JSON body: {e}"));
            assert!(body["error"]["code"].is_string(), "case {n}: {body}");
            assert!(body["error"]["message"].is_string(), "case {n}: {body}");
        }
    }
    // The cases reach past the parsers, not only into their refusals.
    assert!(
        refused > 100 && served > 20,
        "refused {refused}, served {served}"
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.stop().await;
}
both!(hostile_input_never_breaks_the_server);
