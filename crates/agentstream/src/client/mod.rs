//! `agentstream chat`: a terminal client for a running server. Reads lines
//! from stdin, streams each reply to stdout as it arrives, asks `y/n` for a
//! tool call that waits for approval, cancels the run on Ctrl-C, and rejoins
//! a run's events with `--resume`.

use std::{io::IsTerminal, time::Duration};

use anyhow::{Context, bail};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use term::{Interrupts, Term, stdin_lines};

mod term;

/// Reconnect delays after a lost stream; the last one repeats.
const BACKOFF_MS: [u64; 5] = [250, 500, 1000, 2000, 4000];
/// Reconnects in a row before the client gives up on a run.
const MAX_RECONNECTS: usize = 10;
/// Spinner frame interval.
const SPIN: Duration = Duration::from_millis(80);
const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// `agentstream chat [--onboarding] [--url URL] [--key KEY] [--resume RUN_ID]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Talk to the onboarding agent (it fills in your profile) instead of the chat agent.
    #[arg(long)]
    pub onboarding: bool,
    /// The server's base URL.
    #[arg(long, env = "AGENTSTREAM_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// An API key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "AGENTSTREAM_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Rejoin this run's events from its first one, then go on chatting in its conversation.
    #[arg(long, value_name = "RUN_ID")]
    pub resume: Option<Uuid>,
}

/// Runs the client until stdin ends or Ctrl-C at the prompt. A reply that
/// fails is reported and the session goes on; at the end, the replies that
/// failed are named. Fails only when the session does: the server cannot be
/// reached, does not take the key, or a run's stream is lost for good.
pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let api = Api::new(&args)?;
    let mut term = Term::new();
    let mut interrupts = Interrupts::new()?;
    let mut lines = stdin_lines();
    let mut conversation = None;
    // The replies that did not complete, for the summary at the end.
    let mut failed = Failed::default();

    if let Some(run_id) = args.resume {
        let run: RunInfo = api.json(api.get(&format!("/v1/runs/{run_id}"))).await?;
        conversation = Some(run.conversation_id);
        match api.events(run_id, 0).await? {
            Some(response) => {
                if !follow(
                    &api,
                    &mut term,
                    &mut interrupts,
                    &mut lines,
                    run_id,
                    response,
                )
                .await?
                {
                    failed.push(format!("the resumed run {run_id}"));
                }
            }
            None => term.note(&format!(
                "run {run_id} ended {}; its events are no longer kept",
                run.status
            ))?,
        }
    }

    let kind = if args.onboarding {
        "onboarding"
    } else {
        "chat"
    };
    if std::io::stdin().is_terminal() {
        let what = match args.resume {
            Some(run_id) => format!("the conversation of run {run_id}"),
            None => format!("a new {kind} conversation"),
        };
        term.note(&format!(
            "agentstream at {}: {what}. Ctrl-C stops a reply; Ctrl-C or Ctrl-D here exits.",
            api.base
        ))?;
    }
    // Lines sent, to name the replies that failed.
    let mut sent = 0usize;
    loop {
        term.prompt()?;
        let line = tokio::select! {
            line = lines.recv() => line,
            () = interrupts.recv() => {
                term.end_line()?;
                break;
            }
        };
        let Some(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        sent += 1;
        let conversation_id = match conversation {
            Some(id) => id,
            None => {
                let created: Created = api
                    .json(
                        api.post("/v1/conversations")
                            .json(&serde_json::json!({ "kind": kind })),
                    )
                    .await?;
                conversation = Some(created.id);
                created.id
            }
        };
        let started = api
            .send(
                api.post(&format!("/v1/conversations/{conversation_id}/runs"))
                    .header(header::ACCEPT, "text/event-stream")
                    .json(&serde_json::json!({
                        "input": line,
                        "client_message_id": Uuid::now_v7().to_string(),
                    })),
            )
            .await;
        let response = match started {
            Ok(response) => response,
            // Without the server, or without a key it takes, no later line can do better.
            Err(error) if error.ends_session() => return Err(error.into()),
            Err(error) => {
                term.error(&format!("{:#}", anyhow::Error::from(error)))?;
                failed.push(format!("reply {sent} (not started)"));
                continue;
            }
        };
        let run_id = response
            .headers()
            .get("x-run-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Uuid::parse_str(v).ok())
            .context("the server did not name the run (no X-Run-Id header)")?;
        if !follow(
            &api,
            &mut term,
            &mut interrupts,
            &mut lines,
            run_id,
            response,
        )
        .await?
        {
            failed.push(format!("reply {sent} (run {run_id})"));
        }
    }
    // A reply that failed was said so when it did, and the session went on:
    // it is not a failed session, so the exit status stays 0.
    if let Some(summary) = failed.summary() {
        term.note(&summary)?;
    }
    Ok(())
}

/// The replies of a session that did not complete.
#[derive(Debug, Default)]
struct Failed(Vec<String>);

impl Failed {
    fn push(&mut self, which: String) {
        self.0.push(which);
    }

    /// `N replies did not complete: …`, when any did not.
    fn summary(&self) -> Option<String> {
        let n = self.0.len();
        (n > 0).then(|| {
            format!(
                "{n} repl{} did not complete: {}",
                if n == 1 { "y" } else { "ies" },
                self.0.join(", ")
            )
        })
    }
}

/// Draws one run's events until `done`, reconnecting from the last `seq`
/// when the stream breaks. A run that pauses for approval gets the user's
/// `y/n` (from `lines`) on each call it asked about, then is followed on.
/// Ctrl-C cancels the run, then waits for its `done`. Returns false when the
/// run failed or was interrupted.
async fn follow(
    api: &Api,
    term: &mut Term,
    interrupts: &mut Interrupts,
    lines: &mut mpsc::Receiver<String>,
    run_id: Uuid,
    first: Response,
) -> anyhow::Result<bool> {
    let mut reply = Reply::default();
    let mut next = Some(first);
    let mut reconnects = 0;
    'stream: loop {
        let response = match next.take() {
            Some(response) => response,
            None => match api.events(run_id, reply.seq).await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    // Over, and nothing after our cursor: the stored run says how.
                    let run: RunInfo = api.json(api.get(&format!("/v1/runs/{run_id}"))).await?;
                    term.clear_spinner()?;
                    return reply.finish(term, &run.status);
                }
                Err(error) if reconnects < MAX_RECONNECTS => {
                    term.error(&format!("{error:#}; retrying"))?;
                    reconnects += 1;
                    backoff(reconnects, interrupts, api, run_id, &mut reply, term).await?;
                    continue;
                }
                Err(error) => return Err(error),
            },
        };
        let mut events = response.bytes_stream().eventsource();
        let mut spin = tokio::time::interval(SPIN);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                            continue;
                        };
                        let Some(seq) = data.get("seq").and_then(Value::as_i64) else {
                            // Not a run event (the server could not read the log now).
                            term.error(data.get("message").and_then(Value::as_str).unwrap_or("stream error"))?;
                            continue;
                        };
                        if seq <= reply.seq {
                            continue;
                        }
                        reply.seq = seq;
                        reconnects = 0;
                        match reply.apply(term, &data)? {
                            Some(status) if status == "requires_action" => {
                                term.clear_spinner()?;
                                // A replay passes a pause the run went on after.
                                let run: RunInfo =
                                    api.json(api.get(&format!("/v1/runs/{run_id}"))).await?;
                                if run.status != "requires_action" {
                                    reply.asked.clear();
                                    continue 'stream;
                                }
                                if !reply.decide(api, term, interrupts, lines, run_id).await? {
                                    term.note(&format!(
                                        "run {run_id} waits for your decision; rejoin it with \
                                         --resume {run_id}"
                                    ))?;
                                    return Ok(true);
                                }
                                // Follow it on from its pause.
                                continue 'stream;
                            }
                            Some(status) => return reply.finish(term, &status),
                            None => {}
                        }
                    }
                    Some(Err(_)) | None => break,
                },
                () = interrupts.recv() => reply.cancel(api, term, run_id).await?,
                _ = spin.tick(), if !reply.started && term.fancy_out => term.spin()?,
            }
        }
        reconnects += 1;
        if reconnects > MAX_RECONNECTS {
            term.clear_spinner()?;
            bail!("lost the stream of run {run_id}; rejoin it with --resume {run_id}");
        }
        backoff(reconnects, interrupts, api, run_id, &mut reply, term).await?;
    }
}

/// Waits before reconnect number `attempt`; Ctrl-C meanwhile still cancels.
async fn backoff(
    attempt: usize,
    interrupts: &mut Interrupts,
    api: &Api,
    run_id: Uuid,
    reply: &mut Reply,
    term: &mut Term,
) -> anyhow::Result<()> {
    let index = attempt.saturating_sub(1).min(BACKOFF_MS.len() - 1);
    let delay = Duration::from_millis(BACKOFF_MS.get(index).copied().unwrap_or(4000));
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = interrupts.recv() => reply.cancel(api, term, run_id).await,
    }
}

/// What one run has drawn so far.
#[derive(Debug, Default)]
struct Reply {
    /// The last event seen.
    seq: i64,
    /// A delta arrived: the spinner is done.
    started: bool,
    /// Ctrl-C was pressed once: the run is being cancelled.
    cancelling: bool,
    /// Tool names by call ID, for the result lines.
    tools: Vec<(String, String)>,
    /// The calls asked about since the last pause: ID, name, arguments.
    asked: Vec<(String, String, String)>,
}

impl Reply {
    /// Draws one event; returns the run's final status on `done`.
    fn apply(&mut self, term: &mut Term, data: &Value) -> anyhow::Result<Option<String>> {
        let text = |name: &str| data.get(name).and_then(Value::as_str).unwrap_or_default();
        match text("type") {
            "delta" => {
                if !self.started {
                    self.started = true;
                    term.clear_spinner()?;
                }
                term.text(text("text"))?;
            }
            "message.completed" => term.end_line()?,
            // The call is printed whole at its `tool.call`; a line per piece
            // would only repeat it.
            "tool.call.delta" => {}
            "tool.call" => {
                let arguments = data
                    .get("arguments")
                    .map(Value::to_string)
                    .unwrap_or_default();
                self.tools
                    .push((text("call_id").to_owned(), text("name").to_owned()));
                term.dim_line(&format!("tool {} {arguments}", text("name")))?;
            }
            "tool.result" => {
                let name = self
                    .tools
                    .iter()
                    .find(|(id, _)| id == text("call_id"))
                    .map_or("", |(_, name)| name.as_str());
                let mark = if data.get("is_error").and_then(Value::as_bool) == Some(true) {
                    "✗"
                } else {
                    "→"
                };
                let output = data.get("output").map(Value::to_string).unwrap_or_default();
                term.dim_line(&format!("tool {name} {mark} {output}"))?;
            }
            "tool.approval_requested" => {
                let arguments = data
                    .get("arguments")
                    .map(Value::to_string)
                    .unwrap_or_default();
                self.asked.push((
                    text("call_id").to_owned(),
                    text("name").to_owned(),
                    arguments,
                ));
            }
            "tool.approval_decided" => {
                let decided = if data.get("approved").and_then(Value::as_bool) == Some(true) {
                    "approved"
                } else {
                    "denied"
                };
                term.dim_line(&format!("tool call {} {decided}", text("call_id")))?;
            }
            "error" => {
                term.clear_spinner()?;
                term.error(&format!("{}: {}", text("code"), text("message")))?;
            }
            "done" => return Ok(Some(text("status").to_owned())),
            _ => {}
        }
        Ok(None)
    }

    /// Asks `y/n` for each call the paused run asked about (`n REASON`
    /// denies with a reason) and sends each answer. False when stdin ended
    /// first: the run goes on waiting. Ctrl-C cancels the run instead.
    async fn decide(
        &mut self,
        api: &Api,
        term: &mut Term,
        interrupts: &mut Interrupts,
        lines: &mut mpsc::Receiver<String>,
        run_id: Uuid,
    ) -> anyhow::Result<bool> {
        for (call_id, name, arguments) in std::mem::take(&mut self.asked) {
            let (approved, reason) = loop {
                term.note(&format!(
                    "run tool {name} {arguments}? [y/n, or n and a reason]"
                ))?;
                let line = tokio::select! {
                    line = lines.recv() => line,
                    () = interrupts.recv() => {
                        self.cancel(api, term, run_id).await?;
                        return Ok(true);
                    }
                };
                let Some(line) = line else { return Ok(false) };
                let line = line.trim();
                let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
                match word.to_lowercase().as_str() {
                    "y" | "yes" => break (true, None),
                    "n" | "no" => {
                        let reason = rest.trim();
                        break (false, (!reason.is_empty()).then(|| reason.to_owned()));
                    }
                    _ => {}
                }
            };
            let sent =
                api.send(api.post(&format!("/v1/runs/{run_id}/approvals")).json(
                    &serde_json::json!({
                        "call_id": call_id,
                        "approved": approved,
                        "reason": reason,
                    }),
                ))
                .await;
            if let Err(error) = sent {
                term.error(&format!(
                    "could not send the decision: {:#}",
                    anyhow::Error::from(error)
                ))?;
            }
        }
        Ok(true)
    }

    /// Asks the server to cancel the run, once; a second Ctrl-C gives up waiting.
    async fn cancel(&mut self, api: &Api, term: &mut Term, run_id: Uuid) -> anyhow::Result<()> {
        if self.cancelling {
            term.clear_spinner()?;
            bail!("interrupted; the run may still be stopping (see --resume {run_id})");
        }
        self.cancelling = true;
        term.clear_spinner()?;
        term.note(&format!("cancelling run {run_id}…"))?;
        if let Err(error) = api
            .send(api.post(&format!("/v1/runs/{run_id}/cancel")))
            .await
        {
            term.error(&format!(
                "could not cancel: {:#}",
                anyhow::Error::from(error)
            ))?;
        }
        Ok(())
    }

    /// Ends the reply's line and says how it ended unless it completed;
    /// false when it failed or was interrupted.
    fn finish(&self, term: &mut Term, status: &str) -> anyhow::Result<bool> {
        term.clear_spinner()?;
        term.end_line()?;
        match status {
            "completed" => Ok(true),
            // Stopped on purpose: not a failure.
            "cancelled" => term.dim_line("[stopped]").map(|()| true),
            other => term.dim_line(&format!("[{other}]")).map(|()| false),
        }
    }
}

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// No answer at all.
    #[error("cannot reach {base}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// 401: no key, or one the server does not take.
    #[error("the server wants an API key: pass --key or set AGENTSTREAM_API_KEY ({0})")]
    Unauthorized(String),
    /// Any other error status: about this request only (busy, too large…).
    #[error("the server answered {status}: {message}")]
    Status { status: StatusCode, message: String },
}

impl ApiError {
    /// True when no later request can succeed either: the session is over.
    fn ends_session(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } | ApiError::Unauthorized(_) => true,
            ApiError::Status { .. } => false,
        }
    }
}

/// The server's API.
#[derive(Debug)]
struct Api {
    http: reqwest::Client,
    /// The base URL without a trailing slash.
    base: String,
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: Uuid,
}

#[derive(Debug, Deserialize)]
struct RunInfo {
    conversation_id: Uuid,
    status: String,
}

impl Api {
    fn new(args: &ChatArgs) -> anyhow::Result<Api> {
        let http = agentstream::tls::client_builder()
            .context("cannot set up TLS")?
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api {
            http,
            base: args.url.trim_end_matches('/').to_owned(),
            key: args.key.clone().filter(|k| !k.trim().is_empty()),
        })
    }

    fn with_key(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.key {
            Some(key) => request.bearer_auth(key.trim()),
            None => request,
        }
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.with_key(self.http.get(format!("{}{path}", self.base)))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.with_key(self.http.post(format!("{}{path}", self.base)))
    }

    /// Sends the request; an error status becomes an error with the server's message.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|source| ApiError::Unreachable {
                base: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no details")
            .to_owned();
        if status == StatusCode::UNAUTHORIZED {
            return Err(ApiError::Unauthorized(message));
        }
        Err(ApiError::Status { status, message })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> anyhow::Result<T> {
        self.send(request)
            .await?
            .json()
            .await
            .context("the server's answer is not the expected JSON")
    }

    /// The run's events after `after`; `None` when the run is over and nothing is left.
    async fn events(&self, run_id: Uuid, after: i64) -> anyhow::Result<Option<Response>> {
        let response = self
            .send(
                self.get(&format!("/v1/runs/{run_id}/events"))
                    .header(header::ACCEPT, "text/event-stream")
                    .header("last-event-id", after.to_string()),
            )
            .await?;
        Ok((response.status() != StatusCode::NO_CONTENT).then_some(response))
    }
}
