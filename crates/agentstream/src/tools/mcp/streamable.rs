//! Streamable HTTP servers (`url`): rmcp's transport on the workspace's
//! reqwest client and TLS, with the configured headers on every request and,
//! on a tool call, the caller's values in the headers that ask for them
//! (`headers.X-User = { caller = "subject" }`).
//!
//! rmcp fixes a transport's headers when it is made, so a call's own headers
//! travel with its request: [`caller_meta`] puts them under a private key of
//! the request's `_meta`, and [`CallerHeaders`], the HTTP client the
//! transport sends through, takes them out of the message again and sends
//! them as headers. The server never sees the key.

use std::{collections::HashMap, sync::Arc, time::Duration};

use reqwest::header::{HeaderName, HeaderValue};
use rmcp::{
    model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage, RequestMetaObject},
    transport::{
        StreamableHttpClientTransport,
        streamable_http_client::{
            StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
            StreamableHttpPostResponse, StreamableHttpResponseLimits,
        },
    },
};
use serde::Deserialize;
use serde_json::Value;

use crate::tools::{
    ToolInput,
    http::{EnvValue, env_value},
};

/// The `_meta` key a call's caller headers travel under, from the call to
/// [`CallerHeaders`]; removed before the request is sent.
const CALLER_META: &str = "agentstream.internal/caller-headers";
/// Longest wait to connect to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers rmcp sets itself, which `headers` may not name.
const RESERVED: [&str; 6] = [
    "accept",
    "content-type",
    "content-length",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// A header's value: text, a variable's value, or the caller's.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, { env = \"VARIABLE\" } or { caller = \"subject\" }"
)]
pub enum McpHeader {
    /// This text, as written.
    Value(String),
    /// The value of an environment variable, read at start-up.
    Env(EnvValue),
    /// A value of the call's caller, set per call.
    Caller(CallerValue),
}

/// `{ caller = "subject" }`: one of the caller's values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerValue {
    /// Which value.
    pub caller: CallerField,
}

/// A value of the run a call is made in, from the server, never the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerField {
    /// The signed-in user's name (an API key's user, a token's subject).
    Subject,
    /// The user's ID.
    UserId,
    /// The conversation's ID.
    ConversationId,
    /// The run's ID.
    RunId,
    /// The call's ID.
    CallId,
}

impl CallerField {
    fn of(self, input: &ToolInput<'_>) -> String {
        match self {
            CallerField::Subject => input.ctx.caller.subject.clone(),
            CallerField::UserId => input.ctx.user_id.to_string(),
            CallerField::ConversationId => input.ctx.conversation_id.to_string(),
            CallerField::RunId => input.ctx.run_id.to_string(),
            CallerField::CallId => input.call_id.to_owned(),
        }
    }
}

/// A streamable HTTP server's endpoint and headers, checked.
#[derive(Debug)]
pub(super) struct Endpoint {
    url: String,
    /// Sent with every request; values from variables marked sensitive.
    headers: HashMap<HeaderName, HeaderValue>,
    /// Sent with tool calls: the caller's values.
    caller: Vec<(HeaderName, CallerField)>,
}

impl Endpoint {
    /// The endpoint at `url` with these headers. Fails when the URL is not
    /// http(s), a header is invalid or one rmcp sets, or a variable is not
    /// set.
    pub(super) fn new(
        url: &str,
        config: &std::collections::BTreeMap<String, McpHeader>,
    ) -> Result<Endpoint, String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("`url` is not a URL ({e}): {url:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(format!(
                "`url` must be an http:// or https:// URL with a host: {url:?}"
            ));
        }
        let mut headers = HashMap::new();
        let mut caller = Vec::new();
        for (name, source) in config {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a valid header name"))?;
            if RESERVED.contains(&header.as_str()) {
                return Err(format!(
                    "headers: {name:?} is set by the MCP client itself; leave it out"
                ));
            }
            let value = match source {
                McpHeader::Value(text) => HeaderValue::from_str(text),
                McpHeader::Env(EnvValue { env }) => {
                    let text = env_value(env, &format!("headers.{name}"))?;
                    HeaderValue::from_str(&text).map(|mut value| {
                        value.set_sensitive(true);
                        value
                    })
                }
                McpHeader::Caller(CallerValue { caller: field }) => {
                    caller.push((header, *field));
                    continue;
                }
            }
            .map_err(|_| format!("headers.{name}: the value is not a valid header value"))?;
            headers.insert(header, value);
        }
        Ok(Endpoint {
            url: url.to_owned(),
            headers,
            caller,
        })
    }

    /// The endpoint's URL.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// A transport to the server, for one session.
    pub(super) fn transport(&self) -> Result<StreamableHttpClientTransport<CallerHeaders>, String> {
        let client = crate::tls::client_builder()
            .map_err(|e| format!("no TLS: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("agentstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.url.as_str())
            .custom_headers(self.headers.clone());
        // A server that restarted forgets its sessions: start a new one.
        config.reinit_on_expired_session = true;
        Ok(StreamableHttpClientTransport::with_client(
            CallerHeaders(client),
            config,
        ))
    }

    /// The `_meta` that carries a call's caller headers to [`CallerHeaders`]
    /// (`None` when none is configured). Fails, with the message the model
    /// reads, on a value that cannot be a header's.
    pub(super) fn caller_meta(
        &self,
        input: &ToolInput<'_>,
    ) -> Result<Option<RequestMetaObject>, String> {
        if self.caller.is_empty() {
            return Ok(None);
        }
        let mut headers = serde_json::Map::new();
        for (name, field) in &self.caller {
            let value = field.of(input);
            if HeaderValue::from_str(&value).is_err() {
                return Err(format!(
                    "the caller's {field:?} cannot be sent in the header {name} the MCP \
                     server's configuration asks for"
                ));
            }
            headers.insert(name.as_str().to_owned(), Value::String(value));
        }
        let mut meta = serde_json::Map::new();
        meta.insert(CALLER_META.to_owned(), Value::Object(headers));
        Ok(Some(RequestMetaObject::from(meta)))
    }
}

/// Takes a tool call's caller headers out of its `_meta` into `headers`.
fn take_caller_headers(
    message: &mut ClientJsonRpcMessage,
    headers: &mut HashMap<HeaderName, HeaderValue>,
) {
    let JsonRpcMessage::Request(request) = message else {
        return;
    };
    let ClientRequest::CallToolRequest(call) = &mut request.request else {
        return;
    };
    let Some(Value::Object(found)) = call
        .params
        .meta
        .as_mut()
        .and_then(|meta| meta.0.0.remove(CALLER_META))
    else {
        return;
    };
    if call
        .params
        .meta
        .as_ref()
        .is_some_and(|meta| meta.0.0.is_empty())
    {
        call.params.meta = None;
    }
    for (name, value) in found {
        if let (Ok(name), Some(Ok(value))) = (
            HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(HeaderValue::from_str),
        ) {
            headers.insert(name, value);
        }
    }
}

/// The HTTP client of a streamable HTTP transport: reqwest's, with each
/// tool call's caller headers added (see the module's documentation).
#[derive(Debug, Clone)]
pub(super) struct CallerHeaders(reqwest::Client);

impl StreamableHttpClient for CallerHeaders {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        take_caller_headers(&mut message, &mut custom_headers);
        self.0
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        take_caller_headers(&mut message, &mut custom_headers);
        self.0
            .post_message_with_max_sse_event_size(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        mut message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        take_caller_headers(&mut message, &mut custom_headers);
        self.0
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<
        futures_util::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
        StreamableHttpError<Self::Error>,
    > {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<
        futures_util::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
        StreamableHttpError<Self::Error>,
    > {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rmcp::model::{CallToolRequest, CallToolRequestParams, JsonRpcRequest, RequestId};

    use super::*;

    fn headers(toml: &str) -> BTreeMap<String, McpHeader> {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn an_endpoint_is_checked() {
        let endpoint = Endpoint::new(
            "https://mcp.example.com/mcp",
            &headers("X-User = { caller = \"subject\" }\nX-Team = \"ops\""),
        )
        .unwrap();
        assert_eq!(
            endpoint.caller,
            [(HeaderName::from_static("x-user"), CallerField::Subject)]
        );
        assert_eq!(endpoint.headers[&HeaderName::from_static("x-team")], "ops");
        let cases = [
            ("ftp://x.example/mcp", "", "http://"),
            ("not a url", "", "`url`"),
            (
                "http://x.example/mcp",
                "Mcp-Session-Id = \"x\"",
                "set by the MCP client",
            ),
            (
                "http://x.example/mcp",
                "\"X Bad\" = \"x\"",
                "not a valid header name",
            ),
            (
                "http://x.example/mcp",
                "X-Key = { env = \"AGENTSTREAM_TEST_SURELY_UNSET\" }",
                "(headers.X-Key) is not set",
            ),
        ];
        for (url, toml, expected) in cases {
            let error = Endpoint::new(url, &headers(toml)).unwrap_err();
            assert!(error.contains(expected), "{url} {toml}\n→ {error}");
        }
        assert!(
            toml::from_str::<BTreeMap<String, McpHeader>>("X = { caller = \"password\" }").is_err()
        );
    }

    #[test]
    fn caller_headers_leave_the_message_for_the_request() {
        let mut meta = serde_json::Map::new();
        meta.insert(CALLER_META.to_owned(), serde_json::json!({"x-user": "ada"}));
        let mut params = CallToolRequestParams::new("echo");
        params.meta = Some(RequestMetaObject::from(meta));
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let mut message =
            JsonRpcMessage::Request(JsonRpcRequest::new(RequestId::Number(1), request));
        let mut sent = HashMap::new();
        take_caller_headers(&mut message, &mut sent);
        assert_eq!(sent[&HeaderName::from_static("x-user")], "ada");
        let body = serde_json::to_string(&message).unwrap();
        assert!(
            !body.contains("agentstream") && !body.contains("_meta"),
            "{body}"
        );
    }
}
