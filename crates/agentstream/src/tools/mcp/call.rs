//! An imported MCP tool and one call of it: the request on the server's
//! current session within the tool's timeout, the cancellation sent when
//! the call is abandoned, and the result turned into the tool's output or
//! an error the model reads.

use std::{sync::Arc, time::Instant};

use futures_util::future::BoxFuture;
use rmcp::{
    model::{CallToolRequestParams, CallToolResult},
    service::ServiceError,
};
use serde_json::{Value, json};
use sqlx::AnyConnection;

use super::server::{Launch, Server};
use crate::{
    llm::ToolSpec,
    telemetry::metrics,
    tools::{Effects, Tool, ToolError, ToolInput},
};

/// A tool of an MCP server, as the registry holds it.
#[derive(Debug)]
pub struct McpTool {
    /// The imported name, the server's description, and its input schema
    /// as the parameters (so every call is checked against it first).
    spec: ToolSpec,
    server: Arc<Server>,
    /// The tool's name on the server; `None` for the stand-in of a tool of
    /// a server that was down at start-up, found by its imported name in
    /// the tools the server lists once it is up.
    remote: Option<String>,
}

impl McpTool {
    /// The tool `remote` of `server`, imported.
    pub(super) fn imported(server: &Arc<Server>, remote: &rmcp::model::Tool) -> McpTool {
        let description = remote
            .description
            .as_deref()
            .or(remote.title.as_deref())
            .unwrap_or_default()
            .to_owned();
        let mut parameters = Value::Object((*remote.input_schema).clone());
        if parameters.get("type").is_none() {
            parameters["type"] = json!("object");
        }
        McpTool {
            spec: ToolSpec {
                name: super::imported_name(&server.prefix, &remote.name),
                description,
                parameters,
            },
            server: server.clone(),
            remote: Some(remote.name.to_string()),
        }
    }

    /// A stand-in named `name` for a tool of `server`, which was down at
    /// start-up: any object is accepted as arguments, and the server
    /// checks them.
    pub(super) fn stand_in(server: &Arc<Server>, name: &str) -> McpTool {
        McpTool {
            spec: ToolSpec {
                name: name.to_owned(),
                description: format!(
                    "A tool of the MCP server {:?} (unavailable at start-up).",
                    server.name
                ),
                parameters: json!({"type": "object"}),
            },
            server: server.clone(),
            remote: None,
        }
    }

    /// The imported name.
    pub(super) fn name(&self) -> &str {
        &self.spec.name
    }

    /// The server's `[mcp.NAME]`.
    pub(super) fn server_name(&self) -> &str {
        &self.server.name
    }

    /// The tool's name on the server, when known.
    pub(super) fn remote_name(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    /// The cap on what the model is sent.
    pub(super) fn max_output_bytes(&self) -> usize {
        self.server.max_output_bytes
    }

    /// Whether its calls wait for the user's approval: the server's
    /// `approval`, or its name (on the server) in `approval_tools`.
    pub(super) fn approval(&self) -> crate::tools::Approval {
        let remote = self
            .remote_name()
            .or_else(|| self.name().strip_prefix(self.server.prefix.as_str()));
        let listed =
            remote.is_some_and(|name| self.server.approval_tools.iter().any(|t| t == name));
        if listed {
            crate::tools::Approval::Always
        } else {
            self.server.approval
        }
    }
}

impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effects(&self) -> Effects {
        Effects::Outside
    }

    fn call<'a>(
        &'a self,
        input: ToolInput<'a>,
        _conn: Option<&'a mut AnyConnection>,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(call(self, input))
    }
}

/// Records a call's outcome once: when it ends, or, dropped before (the
/// run was stopped mid-call), as `stopped`; counts it in flight meanwhile.
struct InFlight<'a> {
    tool: &'a McpTool,
    started: Instant,
    done: bool,
}

impl InFlight<'_> {
    fn start(tool: &McpTool) -> InFlight<'_> {
        metrics::mcp_call_in_flight(tool.server_name(), true);
        InFlight {
            tool,
            started: Instant::now(),
            done: false,
        }
    }

    fn end(&mut self, outcome: &'static str) {
        self.done = true;
        metrics::mcp_call_in_flight(self.tool.server_name(), false);
        tracing::Span::current().record("outcome", outcome);
        metrics::mcp_tool_call(
            self.tool.server_name(),
            self.tool.name(),
            outcome,
            self.started.elapsed(),
        );
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            // rmcp sent `notifications/cancelled` for the request when its
            // future was dropped with this one.
            tracing::info!(
                server = %self.tool.server_name(),
                tool = %self.tool.name(),
                "the call was abandoned mid-flight; the server was sent a cancellation"
            );
            self.end("stopped");
        }
    }
}

/// Runs one call on the server's current session. Every failure is a
/// [`ToolError::Invalid`] the model reads; it never fails otherwise.
#[tracing::instrument(
    name = "mcp_tool",
    skip_all,
    fields(server = %tool.server.name, tool = %tool.spec.name, call_id = %input.call_id, outcome)
)]
async fn call(tool: &McpTool, input: ToolInput<'_>) -> Result<Value, ToolError> {
    let mut flight = InFlight::start(tool);
    let (outcome, result) = attempt(tool, input).await;
    flight.end(outcome);
    match &result {
        Ok(_) => tracing::debug!("the MCP server answered"),
        // The server's refusal or failure is for the model to read, not an
        // alarm for the operator: INFO, not WARN.
        Err(error) => tracing::info!(%error, outcome, "the call failed; the model is told"),
    }
    result
}

/// The call's outcome label and result.
async fn attempt(tool: &McpTool, input: ToolInput<'_>) -> (&'static str, Result<Value, ToolError>) {
    let server = &tool.server;
    let invalid = |message: String| Err(ToolError::Invalid(message));
    let session = match server.session() {
        Ok(session) => session,
        Err(reason) => {
            return (
                "unavailable",
                invalid(format!(
                    "the MCP server {:?} is unavailable ({reason}); the call was not made",
                    server.name
                )),
            );
        }
    };
    let remote = match &tool.remote {
        Some(remote) => remote.clone(),
        None => match session
            .tools
            .iter()
            .find(|t| super::imported_name(&server.prefix, &t.name) == tool.spec.name)
        {
            Some(found) => found.name.to_string(),
            None => {
                return (
                    "unavailable",
                    invalid(format!(
                        "the MCP server {:?} has no tool imported as {:?}",
                        server.name, tool.spec.name
                    )),
                );
            }
        },
    };
    let caller = match &server.launch {
        Launch::Http(endpoint) => match endpoint.caller_meta(&input) {
            Ok(meta) => meta,
            Err(message) => return ("refused", invalid(message)),
        },
        Launch::Stdio { .. } => None,
    };
    let arguments = match input.arguments {
        Value::Object(arguments) => arguments,
        _ => serde_json::Map::new(),
    };
    let mut request = CallToolRequestParams::new(remote).with_arguments(arguments);
    request.meta = caller;
    // Dropping the request's future, at the timeout or when the run is
    // stopped, makes rmcp send `notifications/cancelled` for it.
    match tokio::time::timeout(server.timeout, session.peer.call_tool(request)).await {
        Err(_) => (
            "timeout",
            invalid(format!(
                "the MCP server did not answer within {} ms; the call was cancelled, and \
                 its outcome is unknown",
                server.timeout.as_millis()
            )),
        ),
        Ok(Err(ServiceError::McpError(error))) => (
            "refused",
            invalid(format!(
                "the MCP server refused the call: {} (code {})",
                error.message, error.code.0
            )),
        ),
        Ok(Err(
            error @ (ServiceError::TransportClosed
            | ServiceError::TransportSend(_)
            | ServiceError::Cancelled { .. }),
        )) => {
            server.check_session();
            (
                "lost",
                invalid(format!(
                    "the call to the MCP server failed on the way ({}); its outcome is unknown",
                    super::server::describe(&error)
                )),
            )
        }
        Ok(Err(error)) => ("failed", invalid(format!("the MCP call failed: {error}"))),
        Ok(Ok(result)) if result.is_error == Some(true) => {
            let text = texts(&result).join("\n");
            (
                "tool_error",
                invalid(if text.trim().is_empty() {
                    "the tool reported an error, without a message".to_owned()
                } else {
                    text
                }),
            )
        }
        Ok(Ok(result)) => ("ok", Ok(output(result))),
    }
}

/// The text blocks of a result.
fn texts(result: &CallToolResult) -> Vec<String> {
    blocks(result)
        .iter()
        .filter_map(|block| match block {
            Block::Text(text) => Some(text.clone()),
            Block::Other(_) => None,
        })
        .collect()
}

/// One content block: its text, or a summary of what it holds.
enum Block {
    Text(String),
    Other(Value),
}

/// A result's content blocks, read from their JSON form (the protocol's,
/// stable across SDK versions): text is kept; images, audio and resources
/// are summarised by their type, MIME type, size and URI.
fn blocks(result: &CallToolResult) -> Vec<Block> {
    result
        .content
        .iter()
        .filter_map(|block| serde_json::to_value(block).ok())
        .map(|block| {
            let kind = block["type"].as_str().unwrap_or("unknown").to_owned();
            if kind == "text" {
                return Block::Text(block["text"].as_str().unwrap_or_default().to_owned());
            }
            let inner = if kind == "resource" {
                &block["resource"]
            } else {
                &block
            };
            let bytes = match (
                &inner["text"],
                &inner["data"],
                &inner["blob"],
                &inner["size"],
            ) {
                (Value::String(text), _, _, _) => Some(text.len() as u64),
                (_, Value::String(data), _, _) | (_, _, Value::String(data), _) => {
                    Some(base64_len(data))
                }
                (_, _, _, Value::Number(size)) => size.as_u64(),
                _ => None,
            };
            let mut summary = json!({ "type": kind });
            if let Some(mime) = inner["mimeType"].as_str() {
                summary["mime_type"] = json!(mime);
            }
            if let Some(bytes) = bytes {
                summary["bytes"] = json!(bytes);
            }
            if let Some(uri) = inner["uri"].as_str() {
                summary["uri"] = json!(uri);
            }
            Block::Other(summary)
        })
        .collect()
}

/// The bytes a base64 text decodes to.
fn base64_len(data: &str) -> u64 {
    let data = data.trim_end();
    let padding = data.len() - data.trim_end_matches('=').len();
    ((data.len() / 4 * 3).saturating_sub(padding)) as u64
}

/// The tool's output: `{"content": [texts and summaries], "structured":
/// the structured content}`, each only when present. A text block that is
/// the structured content as JSON (servers send both, for older clients)
/// is left out.
fn output(result: CallToolResult) -> Value {
    let structured = result.structured_content.clone();
    let content: Vec<Value> = blocks(&result)
        .into_iter()
        .filter_map(|block| match block {
            Block::Text(text) => {
                let duplicate = structured.as_ref().is_some_and(|structured| {
                    serde_json::from_str::<Value>(&text).is_ok_and(|parsed| parsed == *structured)
                });
                (!duplicate).then_some(Value::String(text))
            }
            Block::Other(summary) => Some(summary),
        })
        .collect();
    let mut output = serde_json::Map::new();
    if !content.is_empty() || structured.is_none() {
        output.insert("content".to_owned(), Value::Array(content));
    }
    if let Some(structured) = structured {
        output.insert("structured".to_owned(), structured);
    }
    Value::Object(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(value: Value) -> CallToolResult {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn text_and_structured_content_become_the_output() {
        let plain = result(json!({"content": [{"type": "text", "text": "Echo: hi"}]}));
        assert_eq!(output(plain), json!({"content": ["Echo: hi"]}));
        let structured = result(json!({
            "content": [{"type": "text", "text": "{\"temperature\": 33}"}, {"type": "text", "text": "a note"}],
            "structuredContent": {"temperature": 33},
        }));
        assert_eq!(
            output(structured),
            json!({"content": ["a note"], "structured": {"temperature": 33}})
        );
        let only = result(json!({
            "content": [{"type": "text", "text": "{\"a\":1}"}],
            "structuredContent": {"a": 1},
        }));
        assert_eq!(output(only), json!({"structured": {"a": 1}}));
        let empty = result(json!({"content": []}));
        assert_eq!(output(empty), json!({"content": []}));
    }

    #[test]
    fn other_content_is_summarised() {
        let mixed = result(json!({"content": [
            {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
            {"type": "audio", "data": "AAAA", "mimeType": "audio/wav"},
            {"type": "resource", "resource": {"uri": "test://static/1", "mimeType": "text/plain", "text": "hello"}},
            {"type": "resource_link", "uri": "test://static/2", "name": "two", "mimeType": "application/octet-stream"},
        ]}));
        assert_eq!(
            output(mixed),
            json!({"content": [
                {"type": "image", "mime_type": "image/png", "bytes": 8},
                {"type": "audio", "mime_type": "audio/wav", "bytes": 3},
                {"type": "resource", "mime_type": "text/plain", "bytes": 5, "uri": "test://static/1"},
                {"type": "resource_link", "mime_type": "application/octet-stream", "uri": "test://static/2"},
            ]})
        );
    }

    #[test]
    fn an_error_result_reads_as_its_text() {
        let error = result(json!({
            "content": [{"type": "text", "text": "Invalid timezone"}, {"type": "image", "data": "", "mimeType": "image/png"}],
            "isError": true,
        }));
        assert_eq!(texts(&error), ["Invalid timezone"]);
    }
}
