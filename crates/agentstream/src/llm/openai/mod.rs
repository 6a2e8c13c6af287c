//! The OpenAI-compatible streaming provider: Chat Completions with `stream: true`.
//!
//! It serves OpenAI, Ollama, vLLM, llama.cpp server, LM Studio, OpenRouter, Gemini's
//! OpenAI endpoint and other "compatible" servers. This file holds the provider, its settings
//! and its start-up probe; `wire` the request and chunk types, `stream` the chunk parser, and
//! `llm::transport` the HTTP calls: time limits, retries before the first chunk, and
//! error details that never show the API key nor the request's texts.

mod stream;
pub(crate) mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;

use self::stream::ChunkParser;
pub use self::stream::parse_body;
use self::wire::RequestBody;
use super::transport::{ApiKey, Transport, TransportSettings, error_chain, one_line};
use super::{ChatRequest, LlmError, LlmStream, Probe, Provider};

/// The whole time a start-up probe may take: it must not hold start-up for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach an OpenAI-compatible server, and how long to wait for it.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiSettings {
    /// The API's base URL, e.g. `http://127.0.0.1:11434/v1`, without `/chat/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set. Never logged or shown.
    pub api_key: Option<String>,
    /// Time allowed to open the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the first SSE event, headers included.
    pub first_token_timeout: Duration,
    /// Time allowed between two SSE events once the first has arrived.
    pub chunk_timeout: Duration,
    /// Retries before the first token, so at most `max_retries + 1` requests per call.
    pub max_retries: u32,
    /// The pause before the first retry, doubled for each later one.
    pub retry_backoff: Duration,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            first_token_timeout: Duration::from_secs(60),
            chunk_timeout: Duration::from_secs(60),
            max_retries: 2,
            retry_backoff: Duration::from_millis(250),
        }
    }
}

// By hand, so the API key never reaches a log line.
impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("chunk_timeout", &self.chunk_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .finish()
    }
}
/// A provider for one OpenAI-compatible server. Cheap to clone; clones share the connection
/// pool.
#[derive(Clone)]
pub struct OpenAi {
    shared: Arc<Shared>,
}

/// What every call of one provider shares; lives as long as the provider and its streams.
struct Shared {
    settings: OpenAiSettings,
    /// The client, its time limits and retries, and the key.
    transport: Arc<Transport>,
    /// `{base_url}/chat/completions`.
    endpoint: reqwest::Url,
    /// `{base_url}/models`, which the start-up probe reads.
    models: reqwest::Url,
}

impl OpenAi {
    /// A provider for the server at `settings.base_url`. Fails when the URL or the key cannot
    /// be used; the message never contains the key.
    pub fn new(settings: OpenAiSettings) -> Result<OpenAi, String> {
        let base = settings.base_url.trim().trim_end_matches('/');
        let url = |path: &str| {
            reqwest::Url::parse(&format!("{base}/{path}"))
                .map_err(|e| format!("invalid base URL {:?}: {e}", settings.base_url))
        };
        let endpoint = url("chat/completions")?;
        let models = url("models")?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(format!(
                "invalid base URL {:?}: the scheme must be http or https",
                settings.base_url
            ));
        }
        let key = settings.api_key.clone().map(|key| ApiKey {
            key,
            header: AUTHORIZATION,
            prefix: "Bearer ",
        });
        let transport = Transport::new(
            TransportSettings {
                connect_timeout: settings.connect_timeout,
                first_token_timeout: settings.first_token_timeout,
                chunk_timeout: settings.chunk_timeout,
                max_retries: settings.max_retries,
                retry_backoff: settings.retry_backoff,
            },
            key,
        )?;
        Ok(OpenAi {
            shared: Arc::new(Shared {
                settings,
                transport: Arc::new(transport),
                endpoint,
                models,
            }),
        })
    }
}

impl fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAi")
            .field("endpoint", &self.shared.endpoint.as_str())
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Provider for OpenAi {
    fn stream(&self, request: ChatRequest) -> LlmStream {
        let transport = Arc::clone(&self.shared.transport);
        match serde_json::to_vec(&RequestBody::of(&request)) {
            Ok(body) => transport.stream(
                self.shared.endpoint.clone(),
                Bytes::from(body),
                request,
                ChunkParser::default,
            ),
            Err(e) => {
                let error = LlmError::Protocol(format!("could not encode the request: {e}"));
                futures_util::stream::iter([Err(transport.scrub(error, &request))]).boxed()
            }
        }
    }

    fn label(&self, model: &str) -> String {
        model.to_owned()
    }

    fn probe(&self) -> BoxFuture<'static, Probe> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.probe().await })
    }
}

impl Shared {
    /// Reads `GET {base_url}/models` to tell a mistaken `base_url` or key from a server that
    /// is merely down.
    #[tracing::instrument(level = "debug", skip_all, fields(url = %self.models))]
    async fn probe(&self) -> Probe {
        let url = &self.models;
        let request = self.transport.get(url.clone()).timeout(PROBE_TIMEOUT);
        let probe = match request.send().await {
            Err(e) if e.is_timeout() => Probe::Unreachable(format!(
                "GET {url} did not answer within {PROBE_TIMEOUT:?}: {}",
                error_chain(&e.without_url())
            )),
            Err(e) => Probe::Unreachable(format!(
                "could not reach GET {url}: {}",
                error_chain(&e.without_url())
            )),
            Ok(response) => {
                let status = response.status();
                match status {
                    _ if status.is_success() => Probe::Ready,
                    StatusCode::NOT_FOUND => Probe::Misconfigured(format!(
                        "GET {url} answered HTTP 404: the base_url should be the API root, \
                         usually ending in /v1 (e.g. http://127.0.0.1:11434/v1)"
                    )),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        Probe::Misconfigured(if self.transport.has_key() {
                            format!(
                                "the model server refused the API key: GET {url} answered HTTP {status}"
                            )
                        } else {
                            format!(
                                "the model server wants an API key and none is set: \
                                 GET {url} answered HTTP {status}"
                            )
                        })
                    }
                    _ if status.is_server_error() => {
                        Probe::Unreachable(format!("GET {url} answered HTTP {status}"))
                    }
                    // Not every compatible server lists its models.
                    _ => Probe::Ready,
                }
            }
        };
        let clean = |text: String| one_line(&self.transport.redact_key(text));
        match probe {
            Probe::Ready => Probe::Ready,
            Probe::Unreachable(text) => Probe::Unreachable(clean(text)),
            Probe::Misconfigured(text) => Probe::Misconfigured(clean(text)),
        }
    }
}

/// A `[providers.<name>]` table of the config file with `kind = "openai"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// The API's base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The environment variable holding the API key, if the server wants one.
    pub api_key_env: Option<String>,
    /// Connect timeout (default 10 s).
    pub connect_timeout_ms: Option<u64>,
    /// Time allowed before the first token (default 60 s).
    pub first_token_timeout_ms: Option<u64>,
    /// Time allowed between chunks (default 60 s).
    pub chunk_timeout_ms: Option<u64>,
    /// Retries before the first token on connection errors, 429 and 5xx (default 2).
    pub max_retries: Option<u32>,
    /// The context window of its models, in tokens, for agents that set none
    /// (default: the window of an OpenAI model known by name, else 8192).
    pub context_tokens: Option<u32>,
}

impl OpenAiConfig {
    /// The provider the table describes, its key read from the environment. Fails when that
    /// variable is not set, or as [`OpenAi::new`] does.
    pub fn build(&self) -> Result<OpenAi, String> {
        let api_key = match &self.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| format!("the environment variable {var} is not set"))?,
            ),
            None => None,
        };
        let defaults = OpenAiSettings::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        OpenAi::new(OpenAiSettings {
            base_url: self.base_url.clone(),
            api_key,
            connect_timeout: ms(self.connect_timeout_ms, defaults.connect_timeout),
            first_token_timeout: ms(self.first_token_timeout_ms, defaults.first_token_timeout),
            chunk_timeout: ms(self.chunk_timeout_ms, defaults.chunk_timeout),
            max_retries: self.max_retries.unwrap_or(defaults.max_retries),
            retry_backoff: defaults.retry_backoff,
        })
    }
}

#[cfg(test)]
mod tests;
