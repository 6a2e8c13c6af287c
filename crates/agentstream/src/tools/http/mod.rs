//! HTTP tools (`kind = "http"`): a call is one signed JSON POST to the
//! team's backend, retried with the same idempotency key; the backend's JSON
//! answer is the tool's output.
//!
//! The request body is `{"tool", "arguments", "caller": {"subject",
//! "user_id", "conversation_id", "run_id", "call_id", "claims"?}}`; the
//! caller's values come from the run, never from the model. Headers:
//! `Idempotency-Key: <run_id>:<call_id>` and `X-Agentstream-Signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the scheme of
//! Stripe's webhook signatures (<https://docs.stripe.com/webhooks#verify-manually>),
//! so a backend can verify it with code it likely has already.
//!
//! Effects are [`Effects::Outside`]: recorded `started` before the request
//! and `finished` after, never sent again by a later process (at most once).

mod call;

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::Sha256;
use sqlx::AnyConnection;

use super::{
    Effects, Tool, ToolError, ToolInput,
    params::{self, ParamConfig},
};
use crate::llm::ToolSpec;

/// Default time one attempt may take, connecting to the end of the answer's
/// body, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default retries after a connection error, a 429 or a 5xx.
const DEFAULT_MAX_RETRIES: u32 = 2;
/// Most retries allowed: with the default timeout, 11 attempts are already
/// about two minutes of a run waiting on one call.
const MAX_RETRIES_LIMIT: u32 = 10;
/// Longest wait to connect, when the attempt's timeout is longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest cap on the answer's body, in bytes: a backend's error page must
/// fit even when the tool's output cap is small.
const MIN_RESPONSE_BYTES: usize = 1024 * 1024;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-agentstream-signature";
/// The header carrying `<run_id>:<call_id>`, the same on every attempt.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Headers agentstream sets itself, which `headers` may not name.
const RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
];

/// The caller's values a call sends under `caller`: an argument of one of
/// these names is refused (unless the tool declares it as a parameter).
const CALLER_FIELDS: [&str; 5] = ["subject", "user_id", "conversation_id", "run_id", "call_id"];

/// A static header's value: text, or an environment variable holding it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a string, or { env = \"VARIABLE\" }")]
pub enum HeaderSource {
    /// This text, as written.
    Value(String),
    /// The value of an environment variable, read at start-up; marked
    /// sensitive, so it stays out of debug output.
    Env(EnvValue),
}

/// `{ env = "VARIABLE" }`: a value read from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvValue {
    /// The variable's name.
    pub env: String,
}

/// One `[tools.NAME]` table of `kind = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolConfig {
    /// What the tool does, for the model.
    pub description: String,
    /// Where calls are POSTed: an `http://` or `https://` URL.
    pub url: String,
    /// The arguments the model gives, by name (none may start with
    /// `caller`).
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamConfig>,
    /// The environment variable holding the HMAC secret the backend
    /// verifies. Required unless `unsigned = true`.
    pub secret_env: Option<String>,
    /// Sends no signature (a backend that verifies nothing); excludes
    /// `secret_env`.
    #[serde(default)]
    pub unsigned: bool,
    /// Time one attempt may take, from connecting to the end of the
    /// answer, in milliseconds (default 10000).
    pub timeout_ms: Option<u64>,
    /// Retries after a connection error, a 429 or a 5xx (default 2, at
    /// most 10); a timeout is not retried.
    pub max_retries: Option<u32>,
    /// Extra headers sent with every call, by name.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderSource>,
    /// Largest output the model is sent, in bytes (default 16 KiB).
    pub max_output_bytes: Option<usize>,
    /// `always`: each call waits for the user's approval (default `never`).
    #[serde(default)]
    pub approval: crate::tools::Approval,
}

/// Signs request bodies with the tool's secret. Its `Debug` shows no key.
#[derive(Clone)]
struct Signer(Hmac<Sha256>);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    fn new(secret: &[u8]) -> Result<Signer, String> {
        // HMAC takes a key of any length: this never fails.
        Hmac::<Sha256>::new_from_slice(secret)
            .map(Signer)
            .map_err(|e| format!("the secret is not a usable HMAC key: {e}"))
    }

    /// The signature header's value for `body` sent at `timestamp` (Unix
    /// seconds): `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
    fn sign(&self, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("t={timestamp},v1={hex}")
    }
}

/// An HTTP tool, its URL, secret and headers checked at start-up.
#[derive(Debug)]
pub struct HttpTool {
    spec: ToolSpec,
    url: reqwest::Url,
    /// This tool's own client: its connect timeout, no redirects, and the
    /// static headers.
    client: reqwest::Client,
    /// `None` when `unsigned = true`.
    signer: Option<Signer>,
    timeout: Duration,
    max_retries: u32,
    /// Most bytes of an answer's body read; a longer one is an error.
    max_response_bytes: usize,
    caller_bound: Vec<String>,
}

impl HttpTool {
    /// Builds the tool: parses its URL, reads its secret and header values
    /// from the environment. Fails with a message (the caller adds the
    /// tool's name) when the URL is not http(s), a variable is not set, a
    /// header is not valid or is one agentstream sets, the signing choice is
    /// missing or contradictory, or a parameter is named `caller…`.
    pub fn build(name: &str, config: &HttpToolConfig) -> Result<HttpTool, String> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("`url` is not a URL ({e}): {:?}", config.url))?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err(format!(
                "`url` must be an http:// or https:// URL with a host: {:?}",
                config.url
            ));
        }
        let signer = match (&config.secret_env, config.unsigned) {
            (Some(var), false) => {
                let secret = env_value(var, "secret_env")?;
                if secret.is_empty() {
                    return Err(format!(
                        "the environment variable {var} (secret_env) is empty"
                    ));
                }
                Some(Signer::new(secret.as_bytes())?)
            }
            (None, true) => None,
            (Some(_), true) => {
                return Err("give `secret_env` or `unsigned = true`, not both".to_owned());
            }
            (None, false) => {
                return Err(
                    "`secret_env` is required: the environment variable holding the secret \
                     the backend verifies requests with (or `unsigned = true` for a backend \
                     that verifies nothing)"
                        .to_owned(),
                );
            }
        };
        if let Some(param) = config.parameters.keys().find(|p| p.starts_with("caller")) {
            return Err(format!(
                "the parameter {param:?}: names starting with `caller` are the server's \
                 (the request's `caller` object)"
            ));
        }
        let parameters = params::schema(&config.parameters)?;
        let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(1));
        let max_retries = config.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries > MAX_RETRIES_LIMIT {
            return Err(format!(
                "`max_retries` is {max_retries}; at most {MAX_RETRIES_LIMIT} are allowed"
            ));
        }
        let client = crate::tls::client_builder()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .connect_timeout(timeout.min(CONNECT_TIMEOUT))
            // A redirected POST becomes a GET without its body: a 3xx is
            // the backend's answer, an error the model reads.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentstream/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers(&config.headers)?)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpTool {
            spec: ToolSpec {
                name: name.to_owned(),
                description: config.description.clone(),
                parameters,
            },
            url,
            client,
            signer,
            timeout,
            max_retries,
            max_response_bytes: config.max_output_bytes.unwrap_or(0).max(MIN_RESPONSE_BYTES),
            caller_bound: CALLER_FIELDS
                .iter()
                .filter(|field| !config.parameters.contains_key(**field))
                .map(|field| format!("caller.{field}"))
                .collect(),
        })
    }
}

/// The value of the environment variable `var`, named by `key`.
pub(crate) fn env_value(var: &str, key: &str) -> Result<String, String> {
    std::env::var(var).map_err(|e| match e {
        std::env::VarError::NotPresent => {
            format!("the environment variable {var} ({key}) is not set")
        }
        std::env::VarError::NotUnicode(_) => {
            format!("the environment variable {var} ({key}) is not UTF-8")
        }
    })
}

/// The static headers, checked; values from the environment are marked
/// sensitive, and no message contains a value.
fn headers(config: &BTreeMap<String, HeaderSource>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, source) in config {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: {name:?} is not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "headers: {name:?} is set by agentstream on every call; leave it out"
            ));
        }
        let value = match source {
            HeaderSource::Value(text) => HeaderValue::from_str(text),
            HeaderSource::Env(EnvValue { env }) => {
                let text = env_value(env, &format!("headers.{name}"))?;
                HeaderValue::from_str(&text).map(|mut value| {
                    value.set_sensitive(true);
                    value
                })
            }
        }
        .map_err(|_| format!("headers.{name}: the value is not a valid header value"))?;
        headers.insert(header, value);
    }
    Ok(headers)
}

impl Tool for HttpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effects(&self) -> Effects {
        Effects::Outside
    }

    fn caller_bound(&self) -> &[String] {
        &self.caller_bound
    }

    fn call<'a>(
        &'a self,
        input: ToolInput<'a>,
        _conn: Option<&'a mut AnyConnection>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ToolError>> {
        Box::pin(call::call(self, input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable cargo sets for every test process: tests cannot set one
    /// (`std::env::set_var` is unsafe, and unsafe code is forbidden).
    const SET_VAR: &str = "CARGO_PKG_NAME";

    fn config(toml: &str) -> HttpToolConfig {
        toml::from_str(toml).unwrap()
    }

    fn build(toml: &str) -> Result<HttpTool, String> {
        HttpTool::build("notify_team", &config(toml))
    }

    #[test]
    fn the_signature_is_stripes_scheme() {
        // Computed apart: printf '1700000000.{"arguments":{"order":42}}' |
        //   openssl dgst -sha256 -hmac whsec_test_secret
        let signer = Signer::new(b"whsec_test_secret").unwrap();
        assert_eq!(
            signer.sign(1_700_000_000, br#"{"arguments":{"order":42}}"#),
            "t=1700000000,v1=8d237b1de8b9676005e34f00226bfb1aee64888b20309d383949ffaee9a0eaf8"
        );
        assert_eq!(format!("{signer:?}"), "Signer(..)");
    }

    #[test]
    fn a_tool_is_built_from_its_table() {
        let tool = build(&format!(
            r#"
            description = "Tell the team."
            url = "https://hooks.example.com/agent"
            secret_env = "{SET_VAR}"
            timeout_ms = 250
            headers.X-Team = "ops"
            headers.X-Api-Key = {{ env = "{SET_VAR}" }}
            [parameters.text]
            type = "string"
            "#
        ))
        .unwrap();
        assert_eq!(tool.effects(), Effects::Outside);
        assert_eq!(tool.timeout, Duration::from_millis(250));
        assert_eq!(tool.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(
            tool.spec.parameters["required"],
            serde_json::json!(["text"])
        );
        assert!(tool.caller_bound.contains(&"caller.user_id".to_owned()));
    }

    #[test]
    fn start_up_refuses_what_cannot_work() {
        let base = "description = \"d\"\n";
        let signed = format!("secret_env = \"{SET_VAR}\"\n");
        let cases = [
            (format!("{base}url = \"not a url\"\n{signed}"), "`url`"),
            (
                format!("{base}url = \"ftp://x.example\"\n{signed}"),
                "http://",
            ),
            (
                format!("{base}url = \"http://x.example\"\n"),
                "`secret_env` is required",
            ),
            (
                format!(
                    "{base}url = \"http://x.example\"\nsecret_env = \"AGENTSTREAM_TEST_SURELY_UNSET\"\n"
                ),
                "AGENTSTREAM_TEST_SURELY_UNSET (secret_env) is not set",
            ),
            (
                format!("{base}url = \"http://x.example\"\n{signed}unsigned = true\n"),
                "not both",
            ),
            (
                format!(
                    "{base}url = \"http://x.example\"\nunsigned = true\nheaders.Idempotency-Key = \"x\"\n"
                ),
                "set by agentstream",
            ),
            (
                format!(
                    "{base}url = \"http://x.example\"\nunsigned = true\nheaders.X-Key = {{ env = \"AGENTSTREAM_TEST_SURELY_UNSET\" }}\n"
                ),
                "(headers.X-Key) is not set",
            ),
            (
                format!(
                    "{base}url = \"http://x.example\"\nunsigned = true\nheaders.X-Key = \"a\\nb\"\n"
                ),
                "not a valid header value",
            ),
            (
                format!("{base}url = \"http://x.example\"\nunsigned = true\nmax_retries = 11\n"),
                "at most 10",
            ),
            (
                format!(
                    "{base}url = \"http://x.example\"\nunsigned = true\n[parameters.caller_id]\ntype = \"string\"\n"
                ),
                "caller_id",
            ),
        ];
        for (toml, expected) in cases {
            let error = build(&toml).unwrap_err();
            assert!(error.contains(expected), "{toml}\n→ {error}");
        }
    }

    #[test]
    fn a_declared_parameter_is_not_caller_bound() {
        let tool = build(
            "description = \"d\"\nurl = \"http://x.example\"\nunsigned = true\n\
             [parameters.subject]\ntype = \"string\"\n",
        )
        .unwrap();
        assert!(tool.signer.is_none());
        assert!(!tool.caller_bound.contains(&"caller.subject".to_owned()));
        assert!(tool.caller_bound.contains(&"caller.run_id".to_owned()));
    }
}
