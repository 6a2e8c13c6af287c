//! The agent loop: turns a conversation into model calls and tool calls.

use std::{collections::HashMap, sync::Arc};

use futures_util::StreamExt;

use crate::{
    llm::{ChatMessage, ChatRequest, LlmEvent, Provider, ToolCall, Usage},
    runs::{Emitter, Event, RunControl},
    store::{self, AssistantMessage, Message, MessageStatus, Role, RunStatus, Store},
    tools::{self, Tool, ToolContext},
};

/// An agent: a model, its instructions, its tools and its limits.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The agent's name; a conversation's kind picks the agent of that name.
    pub name: String,
    /// Where replies come from.
    pub provider: Arc<dyn Provider>,
    /// The model's name at the provider.
    pub model: String,
    /// The system prompt.
    pub system_prompt: String,
    /// The tools the model may call.
    pub tools: Vec<Arc<dyn Tool>>,
    /// Most model calls in one run.
    pub max_steps: u32,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Most tokens in one reply.
    pub max_tokens: Option<u32>,
    /// `tool_choice` until the run has called a tool; `auto` after.
    pub tool_choice: Option<crate::llm::ToolChoice>,
}

impl Agent {
    fn tool(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools
            .iter()
            .find(|tool| tool.spec().name == name)
            .cloned()
    }
}

/// The agents this server runs, by name.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    by_name: HashMap<String, Arc<Agent>>,
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
}

/// How a run's agent loop ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The run's final status.
    pub status: RunStatus,
    /// Why it failed: (code, message).
    pub error: Option<(String, String)>,
    /// Tokens used, summed over the run's model calls.
    pub usage: Option<Usage>,
}

impl Outcome {
    fn failed(code: &str, message: impl Into<String>) -> Outcome {
        Outcome {
            status: RunStatus::Failed,
            error: Some((code.to_owned(), message.into())),
            usage: None,
        }
    }

    fn status(status: RunStatus) -> Outcome {
        Outcome {
            status,
            error: None,
            usage: None,
        }
    }
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

/// Runs the agent on the conversation (its messages, when the caller has
/// read them already) until it answers without a tool call, is stopped,
/// fails or reaches its step limit. The reply is written with the run's
/// events and each tool call in a short transaction of its own; nothing is
/// held across a wait.
#[tracing::instrument(skip_all, fields(run_id = %ctx.run_id, agent = %agent.name))]
pub async fn run(
    agent: &Agent,
    store: &Store,
    ctx: ToolContext,
    history: Option<Vec<Message>>,
    emitter: &mut Emitter,
    control: &RunControl,
) -> Outcome {
    let mut usage = None;
    let mut outcome = steps(agent, store, ctx, history, emitter, control, &mut usage).await;
    outcome.usage = usage;
    outcome
}

async fn steps(
    agent: &Agent,
    store: &Store,
    ctx: ToolContext,
    history: Option<Vec<Message>>,
    emitter: &mut Emitter,
    control: &RunControl,
    usage: &mut Option<Usage>,
) -> Outcome {
    let history = match history {
        Some(messages) => Ok(messages),
        None => store.messages(ctx.conversation_id).await,
    };
    let mut history = match history {
        Ok(messages) => to_chat(&agent.system_prompt, &messages),
        Err(e) => return Outcome::failed("storage_error", e.to_string()),
    };
    let specs: Vec<_> = agent.tools.iter().map(|tool| tool.spec()).collect();
    for _ in 0..agent.max_steps {
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
            created_at: store::now(),
        };
        let message_id = message.id;
        emitter.stage_message(message.clone());
        let mut stream = crate::telemetry::metrics::observe_upstream(
            &agent.name,
            agent.provider.stream(ChatRequest {
                model: agent.model.clone(),
                messages: history.clone(),
                tools: specs.clone(),
                temperature: agent.temperature,
                max_tokens: agent.max_tokens,
                tool_choice: None,
            }),
        );
        let mut text = String::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        // Between chunks is a safe point: a stop lands here, never inside a write.
        let end = loop {
            let item = tokio::select! {
                biased;
                () = control.cancelled() => break control.stopped().map_or(StepEnd::Finished, StepEnd::Stopped),
                item = stream.next() => item,
            };
            match item {
                None => break StepEnd::Finished,
                Some(Ok(LlmEvent::Delta(delta))) => {
                    let emitted = emitter
                        .emit(Event::Delta {
                            text: delta.clone(),
                        })
                        .await;
                    // The reply keeps what clients were sent, and no more.
                    if let Err(e) = emitted {
                        break StepEnd::Failed(Outcome::failed(e.code(), e.to_string()));
                    }
                    text.push_str(&delta);
                }
                Some(Ok(LlmEvent::ToolCall(call))) => calls.push(call),
                Some(Ok(LlmEvent::Usage(more))) => *usage.get_or_insert_default() += more,
                Some(Ok(LlmEvent::Reasoning(_) | LlmEvent::Finished(_))) => {}
                Some(Err(e)) => break StepEnd::Failed(Outcome::failed(e.code(), e.to_string())),
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
            ..message
        });
        match end {
            StepEnd::Finished => {}
            StepEnd::Stopped(status) => return Outcome::status(status),
            StepEnd::Failed(outcome) => return outcome,
        }
        if let Err(e) = emitter.emit(Event::MessageCompleted { message_id }).await {
            return Outcome::failed(e.code(), e.to_string());
        }
        if calls.is_empty() {
            return Outcome::status(RunStatus::Completed);
        }
        history.push(ChatMessage::Assistant {
            content: text,
            tool_calls: calls.clone(),
            reasoning: None,
        });
        for call in calls {
            // Between tool calls is a safe point too.
            if let Some(status) = control.stopped() {
                return Outcome::status(status);
            }
            let arguments = serde_json::from_str(&call.arguments)
                .unwrap_or_else(|_| serde_json::Value::String(call.arguments.clone()));
            let announced = emitter
                .emit(Event::ToolCall {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    arguments,
                })
                .await;
            if let Err(e) = announced {
                return Outcome::failed(e.code(), e.to_string());
            }
            let tool = agent.tool(&call.name);
            let executed = match tools::execute(store, ctx, tool, call.clone()).await {
                Ok(executed) => executed,
                Err(e) => return Outcome::failed("storage_error", e.to_string()),
            };
            let reported = emitter
                .emit(Event::ToolResult {
                    call_id: call.id.clone(),
                    output: executed.output,
                    is_error: executed.record.is_error,
                })
                .await;
            if let Err(e) = reported {
                return Outcome::failed(e.code(), e.to_string());
            }
            history.push(ChatMessage::Tool {
                call_id: call.id,
                content: executed.record.output,
            });
        }
    }
    Outcome::failed(
        "step_limit",
        format!(
            "the agent reached its limit of {} model calls in one run",
            agent.max_steps
        ),
    )
}

/// The stored transcript as the model sees it. Tool calls without a result
/// (a run stopped between calls) and results without a call are left out,
/// since providers reject a conversation where they do not pair up.
fn to_chat(system_prompt: &str, messages: &[Message]) -> Vec<ChatMessage> {
    let answered: std::collections::HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    let mut asked = std::collections::HashSet::new();
    let mut chat = vec![ChatMessage::System(system_prompt.to_owned())];
    for message in messages {
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
                asked.extend(tool_calls.iter().map(|call| call.id.clone()));
                if message.content.is_empty() && tool_calls.is_empty() {
                    continue;
                }
                chat.push(ChatMessage::Assistant {
                    content: message.content.clone(),
                    tool_calls,
                    reasoning: None,
                });
            }
            Role::Tool => {
                let Some(call_id) = &message.tool_call_id else {
                    continue;
                };
                if asked.contains(call_id) {
                    chat.push(ChatMessage::Tool {
                        call_id: call_id.clone(),
                        content: message.content.clone(),
                    });
                }
            }
        }
    }
    chat
}
