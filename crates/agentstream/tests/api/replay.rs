//! A replaying upstream: an OpenAI-compatible server that answers with
//! recorded Chat Completions bodies (`tests/fixtures/upstream/`), chosen by
//! the turn's user message and the step of the turn, and records every
//! request it gets. It speaks the real protocol over a real socket; what it
//! streams is byte for byte what a model server in the field sent.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::LoopbackServer;

/// A recorded upstream body by its fixture name (without `.sse`).
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/upstream/{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the upstream answers one model call with.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This SSE body, event by event.
    Sse(String),
    /// This status and JSON body.
    Status(u16, Value),
}

/// The answers for the turns whose user message contains `when`: the first
/// model call of such a turn gets `answers[0]`, the next `answers[1]`…;
/// later calls, and turns no rule names, get a short text reply that
/// quotes the user's message ("You said: …").
#[derive(Debug, Clone)]
pub struct Rule {
    pub when: String,
    pub answers: Vec<Answer>,
}

pub fn rule(when: &str, answers: Vec<Answer>) -> Rule {
    Rule {
        when: when.to_owned(),
        answers,
    }
}

pub fn sse(name: &str) -> Answer {
    Answer::Sse(fixture(name))
}

/// The model's answer: one call of `name` with `arguments`.
pub fn tool_call(id: &str, name: &str, arguments: Value) -> Answer {
    raw_tool_call(id, name, &arguments.to_string())
}

/// The model's answer: one call of `name` whose arguments are this text,
/// JSON or not.
pub fn raw_tool_call(id: &str, name: &str, arguments: &str) -> Answer {
    let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0,
        "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": id, "type": "function",
            "function": {"name": name, "arguments": arguments}}]},
        "finish_reason": "tool_calls"}]});
    Answer::Sse(format!("data: {chunk}\n\ndata: [DONE]\n\n"))
}

#[derive(Clone)]
struct Shared {
    rules: Arc<Vec<Rule>>,
    /// Pause between two SSE events of an answer.
    pace: Duration,
    requests: Arc<Mutex<Vec<Value>>>,
}

/// The server; stops when dropped.
pub struct Replay {
    pub base_url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    _server: LoopbackServer,
}

impl Replay {
    pub async fn start(rules: Vec<Rule>, pace: Duration) -> Replay {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            rules: Arc::new(rules),
            pace,
            requests: requests.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route(
                "/v1/models",
                get(|| async {
                    Json(json!({"object": "list", "data": [{"id": "replay", "object": "model"}]}))
                }),
            )
            .with_state(shared);
        let server = LoopbackServer::start(app).await;
        let addr = server.addr;
        Replay {
            base_url: format!("http://{addr}/v1"),
            requests,
            _server: server,
        }
    }

    /// Every request body so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// The tool message the model was last sent for the `tool.result`
    /// `result`, parsed; it must equal the result's output.
    pub fn told(&self, result: &Value) -> Value {
        let request = self.requests().pop().unwrap();
        let message = request["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == result["call_id"])
            .unwrap_or_else(|| panic!("the model was not sent {result}: {request:#}"))
            .clone();
        let told: Value = serde_json::from_str(message["content"].as_str().unwrap()).unwrap();
        assert_eq!(told, result["output"]);
        told
    }
}

/// The last user message of a request, and how many model calls of its
/// turn came before (assistant messages after it).
fn turn_of(request: &Value) -> (String, usize) {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .unwrap_or(0);
    let text = messages
        .get(last_user)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let step = messages[last_user..]
        .iter()
        .filter(|m| m["role"] == "assistant")
        .count();
    (text, step)
}

/// A short text reply quoting the user's message, in three chunks.
fn echo(text: &str) -> String {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "replay", "object": "chat.completion.chunk", "model": "replay",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    [
        chunk(
            json!({"role": "assistant", "content": "You said: "}),
            Value::Null,
        ),
        chunk(json!({"content": text}), Value::Null),
        chunk(json!({}), json!("stop")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat()
}

async fn complete(State(shared): State<Shared>, Json(request): Json<Value>) -> Response {
    shared.requests.lock().unwrap().push(request.clone());
    let (text, step) = turn_of(&request);
    let answer = shared
        .rules
        .iter()
        .find(|rule| text.contains(&rule.when))
        .and_then(|rule| rule.answers.get(step).cloned())
        .unwrap_or_else(|| Answer::Sse(echo(&text)));
    match answer {
        Answer::Status(status, body) => {
            (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
        }
        Answer::Sse(body) => {
            let pace = shared.pace;
            let events: Vec<String> = body.split_inclusive("\n\n").map(str::to_owned).collect();
            let stream = futures_util::stream::iter(events).then(move |event| async move {
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                Ok::<_, Infallible>(Bytes::from(event))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}
