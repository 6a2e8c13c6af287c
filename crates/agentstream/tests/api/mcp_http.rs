//! MCP over streamable HTTP, end to end: npm's "everything" server in its
//! `streamableHttp` mode, behind a recording proxy that shows which headers
//! each request carried; the model is the replaying upstream.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    both,
    helpers::*,
    mcp::everything,
    replay::{Replay, rule, tool_call},
};

/// The "everything" server over streamable HTTP on `port`, once it
/// listens; killed when dropped.
async fn http_server(port: u16) -> tokio::process::Child {
    let mut child = tokio::process::Command::new("node")
        .args([everything().as_str(), "streamableHttp"])
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("listening on port") {
                return;
            }
        }
        panic!("the HTTP server ended before it listened");
    })
    .await
    .expect("the HTTP server listens within 30 s");
    child
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
struct Seen {
    /// The JSON-RPC method of a POST.
    method: Option<String>,
    user: Option<String>,
    team: Option<String>,
    body: Value,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Forwards everything to the server, streaming the answers back, and
/// records each request; stops when dropped.
struct Proxy {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: LoopbackServer,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            upstream,
            client: agentstream::tls::client_builder().unwrap().build().unwrap(),
            seen: seen.clone(),
        };
        let app = Router::new().route("/mcp", any(forward)).with_state(shared);
        let server = LoopbackServer::start(app).await;
        let addr = server.addr;
        Proxy {
            url: format!("http://{addr}/mcp"),
            seen,
            _server: server,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn forward(
    State(shared): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.seen.lock().unwrap().push(Seen {
        method: json["method"].as_str().map(str::to_owned),
        user: text("x-user"),
        team: text("x-team"),
        body: json,
    });
    let mut request = shared.client.request(method, &shared.upstream).body(body);
    for (name, value) in &headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    let Ok(answer) = request.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != header::TRANSFER_ENCODING && name != header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap()
}

/// A call over streamable HTTP reaches the server with the configured
/// headers, and the caller's subject in the header that asks for it, only
/// on the call, never in what the model or the server's `_meta` sees. A
/// server that went away is noticed at the next call, and reconnected when
/// it is back.
async fn calls_go_over_streamable_http(backend: Backend) {
    let port = free_port();
    let mut server = http_server(port).await;
    let proxy = Proxy::start(format!("http://127.0.0.1:{port}/mcp")).await;
    let replay = Replay::start(
        vec![
            rule(
                "echo it",
                vec![tool_call(
                    "call_echo",
                    "remote__echo",
                    json!({"message": "hi"}),
                )],
            ),
            rule(
                "while it is gone",
                vec![tool_call(
                    "call_gone",
                    "remote__echo",
                    json!({"message": "gone"}),
                )],
            ),
            rule(
                "echo again",
                vec![tool_call(
                    "call_back",
                    "remote__echo",
                    json!({"message": "back"}),
                )],
            ),
        ],
        Duration::ZERO,
    )
    .await;
    let file = format!(
        r#"
[providers.replay]
kind = "openai"
base_url = "{replay}"
max_retries = 0

[agents.ops]
description = "Uses a remote MCP server."
provider = "replay"
model = "replay"
tools = ["remote__echo"]

[mcp.remote]
url = "{url}"
headers.X-User = {{ caller = "subject" }}
headers.X-Team = {{ env = "CARGO_PKG_NAME" }}
"#,
        replay = replay.base_url,
        url = proxy.url,
    );
    let (mut app, _dir) = spawn_app_with_file(backend, &file, |_| {}).await;
    app.expect_log("the MCP server was lost");
    let created = app
        .post_json("/v1/conversations", json!({"agent": "ops"}))
        .await;
    let conversation = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let say = |input: &'static str| {
        let app = &app;
        let conversation = conversation.clone();
        async move {
            let events = read_all(
                app.stream_run(&conversation, json!({ "input": input }))
                    .await,
            )
            .await;
            assert_eq!(done_status(&events), "completed", "{events:#?}");
            events
                .into_iter()
                .find(|e| e.event == "tool.result")
                .unwrap()
                .data
        }
    };

    let result = say("echo it").await;
    assert_eq!(
        result["output"],
        json!({"content": ["Echo: hi"]}),
        "{result}"
    );
    let seen = proxy.seen();
    let calls: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method.as_deref() == Some("tools/call"))
        .collect();
    assert_eq!(calls.len(), 1, "{seen:#?}");
    assert_eq!(calls[0].user.as_deref(), Some("local"));
    assert_eq!(calls[0].team.as_deref(), Some("agentstream"));
    assert_eq!(
        calls[0].body["params"]["arguments"],
        json!({"message": "hi"})
    );
    let meta = calls[0].body["params"]["_meta"].to_string();
    assert!(!meta.contains("agentstream"), "{meta}");
    let initialize = seen
        .iter()
        .find(|s| s.method.as_deref() == Some("initialize"))
        .unwrap();
    assert_eq!(initialize.user, None, "the caller is sent with calls only");
    assert_eq!(initialize.team.as_deref(), Some("agentstream"));

    // The server goes away: the next call fails, and the session is found
    // lost; when the server is back, the session is made again.
    server.kill().await.unwrap();
    let gone = say("while it is gone").await;
    assert_eq!(gone["is_error"], true);
    let error = gone["output"]["error"].as_str().unwrap();
    assert!(error.contains("its outcome is unknown"), "{error}");
    let mcp = app.state.mcp().clone();
    let wait = |up: bool| {
        let mcp = mcp.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                mcp.wait_for("remote", |s| (s.state == "up") == up),
            )
            .await
            .unwrap_or_else(|_| panic!("remote up={up}: {:?}", mcp.status()))
            .unwrap()
        }
    };
    let down = wait(false).await;
    assert_eq!(down.state, "down");
    let _server = http_server(port).await;
    wait(true).await;
    let back = say("echo again").await;
    assert_eq!(back["output"], json!({"content": ["Echo: back"]}), "{back}");
    app.stop().await;
}
both!(calls_go_over_streamable_http);
