//! The agent loop: turns a conversation into model calls and tool calls.

mod approval;
pub mod context;
mod control;
mod pieces;
pub mod registry;
mod sink;

pub use control::RunControl;
pub use sink::{EventSink, SinkError};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use futures_util::StreamExt;

use crate::{
    events::{ContextUse, ErrorCode, Event, RunFailure},
    llm::{ChatMessage, ChatRequest, LlmError, LlmEvent, Provider, ToolCall, Usage},
    store::{self, AssistantMessage, Message, MessageStatus, Role, RunStatus, Store},
    text,
    tools::{self, AgentTool, ToolContext},
};

/// An agent: a model, its instructions, its tools and its limits.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The agent's name, which a conversation records.
    pub name: String,
    /// What it is for, in one line.
    pub description: String,
    /// Where replies come from.
    pub provider: Arc<dyn Provider>,
    /// The model's name at the provider.
    pub model: String,
    /// The system prompt.
    pub system_prompt: String,
    /// The tools the model may call.
    pub tools: Vec<Arc<AgentTool>>,
    /// Most model calls in one run.
    pub max_steps: u32,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Most tokens in one reply.
    pub max_tokens: Option<u32>,
    /// `tool_choice` until the run has called a tool; `auto` after.
    pub tool_choice: Option<crate::llm::ToolChoice>,
    /// Its model's context window; none for a model without a limit.
    pub context: Option<context::Window>,
    /// How long a run paused for the user's approval of a tool call waits
    /// for the decision.
    pub approval_timeout: std::time::Duration,
}

impl Agent {
    fn tool(&self, name: &str) -> Option<Arc<AgentTool>> {
        self.tools
            .iter()
            .find(|tool| tool.spec().name == name)
            .cloned()
    }

    /// Whether a call waits for the user's approval before it is made.
    fn asks_about(&self, call: &ToolCall) -> bool {
        self.tool(&call.name)
            .is_some_and(|tool| tool.approval() == tools::Approval::Always)
    }
}

/// The agents this server runs, by name.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    by_name: BTreeMap<String, Arc<Agent>>,
}

impl Agents {
    /// Adds an agent under its name.
    pub fn add(&mut self, agent: Agent) {
        self.by_name.insert(agent.name.clone(), Arc::new(agent));
    }

    /// The agent with this name.
    pub fn get(&self, name: &str) -> Option<Arc<Agent>> {
        self.by_name.get(name).cloned()
    }

    /// Every agent, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.by_name.values()
    }

    /// Every agent's name, in order, joined with `, ` (for messages).
    pub fn names(&self) -> String {
        self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// How a run's agent loop ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The run's final status.
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<RunFailure>,
    /// What the log gets besides: the full cause, on one line.
    pub detail: Option<String>,
    /// Tokens used, summed over the run's model calls.
    pub usage: Option<Usage>,
    /// Why the model stopped its last reply, when it stopped short of a
    /// whole one (`length`, `content_filter`, …).
    pub finish_reason: Option<String>,
    /// What the last model call sent of the conversation, for an agent with
    /// a context window.
    pub context: Option<ContextUse>,
}

impl Outcome {
    /// A failed run, with its `error` event's code and message.
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Outcome {
        Outcome {
            error: Some(RunFailure {
                code,
                message: message.into(),
            }),
            ..Outcome::status(RunStatus::Failed)
        }
    }

    /// A run that ended with `status` and no error.
    pub fn status(status: RunStatus) -> Outcome {
        Outcome {
            status,
            error: None,
            detail: None,
            usage: None,
            finish_reason: None,
            context: None,
        }
    }

    fn upstream(error: &LlmError) -> Outcome {
        Outcome {
            detail: Some(error.detail().to_owned()),
            ..Outcome::failed(error.code(), error.to_string())
        }
    }
}

/// What a run's model calls add up to.
#[derive(Debug, Default)]
struct Tally {
    /// Tokens used, summed over the calls.
    usage: Option<Usage>,
    /// Why the model stopped its last reply.
    finish_reason: Option<String>,
    /// What the last call sent of the conversation.
    context: Option<ContextUse>,
}

/// How one model call ended.
enum StepEnd {
    /// The model finished its reply.
    Finished,
    /// The run was asked to stop with this status.
    Stopped(RunStatus),
    /// The model or the event log failed.
    Failed(Outcome),
}

/// The finish reasons of a reply the model finished: any other (`length`,
/// `content_filter`, a server's own) is shown on the run's `done`.
const WHOLE_REPLY: [&str; 5] = ["stop", "tool_calls", "function_call", "eos", "end_turn"];

/// Marks, for the model, an earlier reply that was cut off.
const CUT_MARK: &str = "\n\n[This reply was cut off before it was finished.]";

/// Runs the agent on the conversation (its messages, when the caller has
/// read them already) until it answers without a tool call, is stopped,
/// fails, reaches its step limit, or pauses for the user's approval of a
/// call (`requires_action`). A `resumed` run, one that paused and has its
/// decisions, first makes the calls it asked about. The reply is written
/// with the run's events and each tool call in a short transaction of its
/// own; nothing is held across a wait.
#[tracing::instrument(skip_all, fields(run_id = %ctx.run_id, agent = %agent.name))]
pub async fn run(
    agent: &Agent,
    store: &Store,
    ctx: ToolContext,
    history: Option<Vec<Message>>,
    resumed: bool,
    emitter: &mut impl EventSink,
    control: &RunControl,
) -> Outcome {
    let mut tally = Tally::default();
    let mut outcome = steps(
        agent, store, ctx, history, resumed, emitter, control, &mut tally,
    )
    .await;
    outcome.usage = tally.usage;
    outcome.context = tally.context;
    outcome.finish_reason = tally
        .finish_reason
        .filter(|reason| !WHOLE_REPLY.contains(&reason.as_str()));
    outcome
}

#[expect(
    clippy::too_many_arguments,
    reason = "the loop's state, passed down from `run` once"
)]
async fn steps(
    agent: &Agent,
    store: &Store,
    ctx: ToolContext,
    history: Option<Vec<Message>>,
    resumed: bool,
    emitter: &mut impl EventSink,
    control: &RunControl,
    tally: &mut Tally,
) -> Outcome {
    let history = match history {
        Some(messages) => Ok(messages),
        None => store.messages_up_to(ctx.conversation_id, ctx.run_id).await,
    };
    let mut messages = match history {
        Ok(messages) => messages,
        Err(e) => return unreadable(&e),
    };
    // A run that paused for approval makes the calls it asked about first.
    let mut steps_taken = 0;
    if resumed {
        match approval::resume(agent, store, &ctx, &messages, emitter, control).await {
            Ok(()) => {}
            Err(outcome) => return outcome,
        }
        messages = match store.messages_up_to(ctx.conversation_id, ctx.run_id).await {
            Ok(messages) => messages,
            Err(e) => return unreadable(&e),
        };
        steps_taken = messages
            .iter()
            .filter(|m| m.role == Role::Assistant && m.run_id == Some(ctx.run_id))
            .count();
    }
    // Tool-call IDs are unique in the conversation: an upstream that reuses
    // one keeps it only as the ID it is sent back under.
    let mut call_ids: HashSet<String> = messages
        .iter()
        .filter_map(|m| m.tool_calls.as_ref())
        .filter_map(|calls| serde_json::from_value::<Vec<ToolCall>>(calls.clone()).ok())
        .flatten()
        .map(|call| call.id)
        .collect();
    let mut history = to_chat(&agent.system_prompt, &messages);
    let specs: Vec<_> = agent.tools.iter().map(|tool| tool.spec().clone()).collect();
    let mut called_a_tool = resumed;
    for _ in u32::try_from(steps_taken).unwrap_or(u32::MAX)..agent.max_steps {
        if let Some(status) = control.stopped() {
            return Outcome::status(status);
        }
        // Stored with the step's first event; its ID is taken now, so the
        // transcript keeps the order of the steps.
        let message = AssistantMessage {
            id: uuid::Uuid::now_v7(),
            conversation_id: ctx.conversation_id,
            run_id: ctx.run_id,
            content: String::new(),
            tool_calls: None,
            status: MessageStatus::Streaming,
            finish_reason: None,
            created_at: store::now(),
        };
        let message_id = message.id;
        emitter.stage_message(message.clone());
        // What fits the model's context window.
        let messages = match &agent.context {
            Some(window) => {
                let fitted = window.fit(&history, &specs);
                let used = ContextUse {
                    messages_sent: fitted.messages.len(),
                    messages_dropped: fitted.dropped,
                    tokens: fitted.tokens,
                    context_tokens: window.tokens,
                };
                tally.context = Some(used);
                if fitted.dropped > 0
                    && let Err(e) = emitter.emit(used.trimmed()).await
                {
                    return Outcome::failed(e.code, e.message);
                }
                fitted.messages
            }
            None => history.clone(),
        };
        let mut stream = crate::telemetry::metrics::observe_upstream(
            &agent.name,
            agent.provider.stream(ChatRequest {
                model: agent.model.clone(),
                messages,
                tools: specs.clone(),
                temperature: agent.temperature,
                max_tokens: agent.max_tokens,
                // Forced only until a tool was called, so that a forced call
                // does not repeat until the step limit.
                tool_choice: agent.tool_choice.clone().filter(|_| !called_a_tool),
            }),
        );
        let mut text = String::new();
        let mut reasoning = pieces::Reasoning::default();
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut pieces = pieces::Pieces::default();
        tally.finish_reason = None;
        // Between chunks is a safe point: a stop lands here, never inside a write.
        let end = 'reply: loop {
            let item = tokio::select! {
                biased;
                () = control.cancelled() => break control.stopped().map_or(StepEnd::Finished, StepEnd::Stopped),
                item = stream.next() => item,
            };
            // Reasoning held back goes out before the reply's next other event.
            let reasoned = matches!(
                item,
                Some(Ok(LlmEvent::Reasoning(_)
                    | LlmEvent::Usage(_)
                    | LlmEvent::Finished(_)))
            );
            if !reasoned
                && let Some(event) = reasoning.flush(tokio::time::Instant::now())
                && let Err(e) = emitter.emit(event).await
            {
                break StepEnd::Failed(Outcome::failed(e.code, e.message));
            }
            match item {
                None => {
                    for event in pieces.flush(tokio::time::Instant::now()) {
                        if let Err(e) = emitter.emit(event).await {
                            break 'reply StepEnd::Failed(Outcome::failed(e.code, e.message));
                        }
                    }
                    break StepEnd::Finished;
                }
                Some(Ok(LlmEvent::Delta(delta))) => {
                    let emitted = emitter
                        .emit(Event::Delta {
                            text: delta.clone(),
                        })
                        .await;
                    // The reply keeps what clients were sent, and no more.
                    if let Err(e) = emitted {
                        break StepEnd::Failed(Outcome::failed(e.code, e.message));
                    }
                    text.push_str(&delta);
                }
                Some(Ok(LlmEvent::ToolCallDelta(piece))) => {
                    let now = tokio::time::Instant::now();
                    if let Some(event) = pieces.add(piece, &mut call_ids, now)
                        && let Err(e) = emitter.emit(event).await
                    {
                        break StepEnd::Failed(Outcome::failed(e.code, e.message));
                    }
                }
                Some(Ok(LlmEvent::ToolCall(call))) => {
                    // The reply's n-th call is the one whose pieces were numbered n.
                    let (id, held) = pieces.complete(calls.len(), tokio::time::Instant::now());
                    if let Some(event) = held
                        && let Err(e) = emitter.emit(event).await
                    {
                        break StepEnd::Failed(Outcome::failed(e.code, e.message));
                    }
                    calls.push(own_call(call, &mut call_ids, id));
                }
                Some(Ok(LlmEvent::Usage(more))) => *tally.usage.get_or_insert_default() += more,
                Some(Ok(LlmEvent::Reasoning(more))) => {
                    if let Some(event) = reasoning.add(&more, tokio::time::Instant::now())
                        && let Err(e) = emitter.emit(event).await
                    {
                        break StepEnd::Failed(Outcome::failed(e.code, e.message));
                    }
                }
                Some(Ok(LlmEvent::Finished(reason))) => tally.finish_reason = Some(reason),
                Some(Err(e)) => break StepEnd::Failed(Outcome::upstream(&e)),
            }
        };
        drop(stream);
        // The step's message ends whole or as far as it got: written with
        // `message.completed`, or with the run's end.
        let (status, tool_calls) = match &end {
            StepEnd::Finished => (
                MessageStatus::Complete,
                (!calls.is_empty()).then(|| serde_json::json!(calls)),
            ),
            StepEnd::Stopped(RunStatus::Cancelled) => (MessageStatus::Cancelled, None),
            StepEnd::Stopped(_) => (MessageStatus::Interrupted, None),
            StepEnd::Failed(_) => (MessageStatus::Failed, None),
        };
        emitter.stage_message(AssistantMessage {
            content: text.clone(),
            tool_calls,
            status,
            finish_reason: tally.finish_reason.clone(),
            ..message
        });
        match end {
            StepEnd::Finished => {}
            StepEnd::Stopped(status) => return Outcome::status(status),
            StepEnd::Failed(outcome) => return outcome,
        }
        if let Err(e) = emitter.emit(Event::MessageCompleted { message_id }).await {
            return Outcome::failed(e.code, e.message);
        }
        if calls.is_empty() {
            return Outcome::status(RunStatus::Completed);
        }
        called_a_tool = true;
        if calls.iter().any(|call| agent.asks_about(call)) {
            // A call to approve runs once the user has decided: the run
            // pauses, and goes on (perhaps on another node) from its stored
            // transcript.
            return approval::pause(agent, store, &ctx, &calls, emitter, control).await;
        }
        history.push(ChatMessage::Assistant {
            content: text,
            tool_calls: calls.clone(),
            // A thinking model needs its reasoning for the calls back on the
            // next call of the same turn; it is not kept for later runs.
            reasoning: (!reasoning.text.is_empty()).then_some(reasoning.text),
        });
        match run_calls(agent, store, &ctx, &calls, None, emitter, control).await {
            Ok(results) => history.extend(results),
            Err(outcome) => return outcome,
        }
    }
    Outcome::failed(
        ErrorCode::StepLimit,
        format!(
            "the agent reached its limit of {} model calls in one run",
            agent.max_steps
        ),
    )
}

/// Makes the reply's calls in order, each announced with `tool.call` unless
/// the run announced them before it paused (`decisions`, the user's, are
/// given then), and reported with `tool.result`: a denied call is recorded
/// as declined and not made. Returns the tool messages for the next model
/// call, or how the run ends when it stops or its database fails.
async fn run_calls(
    agent: &Agent,
    store: &Store,
    ctx: &ToolContext,
    calls: &[ToolCall],
    decisions: Option<&[store::Approval]>,
    emitter: &mut impl EventSink,
    control: &RunControl,
) -> Result<Vec<ChatMessage>, Outcome> {
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        // Between tool calls is a safe point too.
        if let Some(status) = control.stopped() {
            return Err(Outcome::status(status));
        }
        if decisions.is_none() {
            emitter
                .emit(announce(call))
                .await
                .map_err(|e| Outcome::failed(e.code, e.message))?;
        }
        let denied = decisions
            .and_then(|all| all.iter().find(|a| a.call_id == call.id))
            .filter(|decision| decision.approved == Some(false));
        let executed = match denied {
            Some(denied) => tools::decline(store, ctx, call, denied.reason.as_deref()).await,
            None => {
                let tool = agent.tool(&call.name);
                tools::execute(store, ctx, tool, call, control.cancelled()).await
            }
        };
        let executed = executed.map_err(|e| Outcome {
            detail: Some(e.to_string()),
            ..Outcome::failed(ErrorCode::StorageError, "a tool call could not be stored")
        })?;
        emitter
            .emit(Event::ToolResult {
                call_id: call.id.clone(),
                output: executed.output,
                is_error: executed.record.is_error,
            })
            .await
            .map_err(|e| Outcome::failed(e.code, e.message))?;
        results.push(ChatMessage::Tool {
            call_id: call.upstream_id().to_owned(),
            content: executed.record.output,
        });
    }
    Ok(results)
}

/// The `tool.call` event that announces a call.
fn announce(call: &ToolCall) -> Event {
    Event::ToolCall {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: arguments_json(call),
    }
}

/// A call's arguments as JSON: a string when the model wrote invalid JSON.
fn arguments_json(call: &ToolCall) -> serde_json::Value {
    serde_json::from_str(&call.arguments)
        .unwrap_or_else(|_| serde_json::Value::String(call.arguments.clone()))
}

/// The outcome of a run whose conversation could not be read.
fn unreadable(error: &store::StoreError) -> Outcome {
    Outcome {
        detail: Some(error.to_string()),
        ..Outcome::failed(
            ErrorCode::StorageError,
            "the conversation could not be read",
        )
    }
}

/// The call as agentstream keeps it: NUL-free, with an ID unique in the
/// conversation: `decided` when its argument pieces decided it already (see
/// [`pieces::own_id`]). An upstream ID that is missing or already taken is
/// replaced, and kept as the ID the call is sent back to the upstream under.
fn own_call(mut call: ToolCall, taken: &mut HashSet<String>, decided: Option<String>) -> ToolCall {
    call.name = text::clean_string(call.name);
    if call.arguments.contains('\0') || call.arguments.contains("\\u0000") {
        call.arguments = match serde_json::from_str::<serde_json::Value>(&call.arguments) {
            Ok(mut arguments) => {
                text::clean_json(&mut arguments);
                arguments.to_string()
            }
            Err(_) => text::clean_string(call.arguments),
        };
    }
    let upstream = text::clean_string(std::mem::take(&mut call.id));
    call.id = decided.unwrap_or_else(|| pieces::own_id(&upstream, taken));
    call.upstream_id = (!upstream.is_empty() && upstream != call.id).then_some(upstream);
    call
}

/// The stored transcript as the model sees it. Tool calls without a result
/// (a run stopped between calls) and results without a call are left out,
/// since providers reject a conversation where they do not pair up; a reply
/// that was cut off says so; calls and results go by the IDs the upstream
/// gave them.
fn to_chat(system_prompt: &str, messages: &[Message]) -> Vec<ChatMessage> {
    let answered: HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    // Asked calls, by agentstream's ID: the ID the upstream knows.
    let mut asked: HashMap<String, String> = HashMap::new();
    let mut chat = vec![ChatMessage::System(system_prompt.to_owned())];
    // What a retry or an edit replaced is not the model's to read again.
    for message in messages.iter().filter(|m| !m.superseded) {
        match message.role {
            Role::User => chat.push(ChatMessage::User(message.content.clone())),
            Role::Assistant => {
                let tool_calls: Vec<ToolCall> = message
                    .tool_calls
                    .clone()
                    .and_then(|calls| serde_json::from_value(calls).ok())
                    .unwrap_or_default();
                let tool_calls: Vec<ToolCall> = tool_calls
                    .into_iter()
                    .filter(|call| answered.contains(call.id.as_str()))
                    .collect();
                asked.extend(
                    tool_calls
                        .iter()
                        .map(|call| (call.id.clone(), call.upstream_id().to_owned())),
                );
                if message.content.is_empty() && tool_calls.is_empty() {
                    continue;
                }
                let cut = matches!(
                    message.status,
                    MessageStatus::Cancelled | MessageStatus::Failed | MessageStatus::Interrupted
                ) && !message.content.is_empty();
                chat.push(ChatMessage::Assistant {
                    content: if cut {
                        format!("{}{CUT_MARK}", message.content)
                    } else {
                        message.content.clone()
                    },
                    tool_calls,
                    reasoning: None,
                });
            }
            Role::Tool => {
                let Some(call_id) = &message.tool_call_id else {
                    continue;
                };
                if let Some(upstream_id) = asked.get(call_id) {
                    chat.push(ChatMessage::Tool {
                        call_id: upstream_id.clone(),
                        content: message.content.clone(),
                    });
                }
            }
        }
    }
    chat
}
