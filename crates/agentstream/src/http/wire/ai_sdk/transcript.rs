//! A conversation's transcript as the AI SDK's `UIMessage`s, the shape
//! `useChat({messages})` starts from (`packages/ai/src/ui/ui-messages.ts` in
//! github.com/vercel/ai): each user message as one, and each run's
//! assistant and tool messages as one assistant message with the run's ID,
//! a step per model call, as the UI message stream built it.

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;

use crate::{
    events::RunStatus,
    store::{Message, Role},
};

/// A message of the chat as the AI SDK holds it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UiMessage {
    /// A user message's ID, or a run's ID for its reply (the ID its stream
    /// gave it).
    pub id: String,
    /// `user` or `assistant`.
    #[schema(example = "assistant")]
    pub role: &'static str,
    /// A reply's run and conversation (`{conversation_id, run_id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Its parts.
    pub parts: Vec<UiPart>,
}

/// Which run wrote a reply, and how it stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Metadata {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The run.
    pub run_id: Uuid,
    /// Where the run stands: `completed`, or how it stopped short
    /// (`cancelled`, `failed`, `interrupted`), or `running`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// The run's tokens, when the model reported them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
}

/// Each run's status and usage, by run.
pub type RunStatuses = HashMap<Uuid, (RunStatus, Option<serde_json::Value>)>;

/// A part of a `UiMessage`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type")]
pub enum UiPart {
    /// A model call begins.
    #[serde(rename = "step-start")]
    StepStart,
    /// Text.
    #[serde(rename = "text")]
    Text {
        /// The text.
        text: String,
        /// Always `done`.
        state: &'static str,
    },
    /// A tool call the server ran.
    #[serde(rename = "dynamic-tool", rename_all = "camelCase")]
    DynamicTool {
        /// The tool's name.
        tool_name: String,
        /// The call's ID.
        tool_call_id: String,
        /// `output-available`, `output-error`, or `input-available` for a
        /// call whose run stopped before its result.
        state: &'static str,
        /// The arguments (a string when the model wrote invalid JSON).
        input: serde_json::Value,
        /// The result the model read.
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<serde_json::Value>,
        /// A tool error's message.
        #[serde(skip_serializing_if = "Option::is_none")]
        error_text: Option<String>,
        /// Always true.
        provider_executed: bool,
        /// For a call the user was asked about (AI SDK 6 parts only): the
        /// approval and its decision, once given.
        #[serde(skip_serializing_if = "Option::is_none")]
        approval: Option<ApprovalPart>,
    },
}

/// A tool part's approval, as AI SDK 6 holds it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApprovalPart {
    /// The approval's ID: the call's ID.
    pub id: String,
    /// The decision, once given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved: Option<bool>,
    /// The user's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Adds AI SDK 6's approval states to the tool parts of the calls a run
/// asked about: `approval-requested` while undecided, `approval-responded`
/// once approved and not yet made, `output-denied` once denied; a call made
/// keeps its result's state, with its approval.
pub fn with_approvals(messages: &mut [UiMessage], approvals: &[crate::store::Approval]) {
    let parts = messages.iter_mut().flat_map(|m| m.parts.iter_mut());
    for part in parts {
        let UiPart::DynamicTool {
            tool_call_id,
            state,
            output,
            error_text,
            approval,
            ..
        } = part
        else {
            continue;
        };
        let Some(asked) = approvals.iter().find(|a| &a.call_id == tool_call_id) else {
            continue;
        };
        *state = match (asked.approved, *state) {
            (None, _) => "approval-requested",
            (Some(false), _) => {
                // The declined result the model read stands for no output.
                *output = None;
                *error_text = None;
                "output-denied"
            }
            (Some(true), "input-available") => "approval-responded",
            (Some(true), made) => made,
        };
        *approval = Some(ApprovalPart {
            id: asked.call_id.clone(),
            approved: asked.approved,
            reason: asked.reason.clone(),
        });
    }
}

/// The transcript of `conversation_id` as UI messages: the `messages`, in
/// transcript order, grouped by run, each reply with its run's status and
/// usage from `runs`.
pub fn ui_messages(
    conversation_id: Uuid,
    messages: Vec<Message>,
    runs: &RunStatuses,
) -> Vec<UiMessage> {
    let mut out: Vec<UiMessage> = Vec::new();
    // Where each run's reply is in `out`: a run queued behind another may
    // have its user message stored between the other's steps.
    let mut replies: HashMap<Uuid, usize> = HashMap::new();
    // The reply the last assistant message went to, for its tool messages.
    let mut open = None;
    // The chat as it stands: what a retry or an edit replaced is left out,
    // as the AI SDK's own regenerate and edit leave it.
    for message in messages.into_iter().filter(|m| !m.superseded) {
        match message.role {
            Role::User => {
                out.push(UiMessage {
                    id: message.id.to_string(),
                    role: "user",
                    metadata: None,
                    parts: vec![text(message.content)],
                });
            }
            Role::Assistant => {
                let index = match message.run_id.and_then(|run| replies.get(&run)) {
                    Some(&index) => index,
                    None => {
                        if let Some(run) = message.run_id {
                            replies.insert(run, out.len());
                        }
                        out.push(UiMessage {
                            id: message.run_id.unwrap_or(message.id).to_string(),
                            role: "assistant",
                            metadata: message.run_id.map(|run_id| {
                                let (status, usage) = runs.get(&run_id).cloned().unzip();
                                Metadata {
                                    conversation_id,
                                    run_id,
                                    status,
                                    usage: usage.flatten(),
                                }
                            }),
                            parts: Vec::new(),
                        });
                        out.len() - 1
                    }
                };
                open = Some(index);
                let Some(reply) = out.get_mut(index) else {
                    continue;
                };
                reply.parts.push(UiPart::StepStart);
                if !message.content.is_empty() {
                    reply.parts.push(text(message.content));
                }
                let calls = message
                    .tool_calls
                    .as_ref()
                    .and_then(|calls| calls.as_array())
                    .into_iter()
                    .flatten();
                for call in calls {
                    let arguments = call["arguments"].as_str().unwrap_or_default();
                    reply.parts.push(UiPart::DynamicTool {
                        tool_name: call["name"].as_str().unwrap_or_default().to_owned(),
                        tool_call_id: call["id"].as_str().unwrap_or_default().to_owned(),
                        state: "input-available",
                        input: serde_json::from_str(arguments)
                            .unwrap_or_else(|_| serde_json::Value::String(arguments.to_owned())),
                        output: None,
                        error_text: None,
                        provider_executed: true,
                        approval: None,
                    });
                }
            }
            Role::Tool => {
                let (Some(reply), Some(call_id)) = (
                    open.and_then(|index| out.get_mut(index)),
                    &message.tool_call_id,
                ) else {
                    continue;
                };
                let call = reply.parts.iter_mut().find(|part| {
                    matches!(part, UiPart::DynamicTool { tool_call_id, .. } if tool_call_id == call_id)
                });
                if let Some(UiPart::DynamicTool {
                    state,
                    output,
                    error_text,
                    ..
                }) = call
                {
                    let result: serde_json::Value = serde_json::from_str(&message.content)
                        .unwrap_or(serde_json::Value::String(message.content));
                    // A tool error is stored as the model read it: `{"error": "…"}`.
                    match tool_error(&result) {
                        Some(error) => {
                            *state = "output-error";
                            *error_text = Some(error);
                        }
                        None => {
                            *state = "output-available";
                            *output = Some(result);
                        }
                    }
                }
            }
        }
    }
    out
}

fn text(text: String) -> UiPart {
    UiPart::Text {
        text,
        state: "done",
    }
}

/// The message of a tool error's result, `{"error": "<message>"}` and
/// nothing else.
fn tool_error(result: &serde_json::Value) -> Option<String> {
    let object = result.as_object()?;
    match (object.len(), object.get("error")) {
        (1, Some(serde_json::Value::String(error))) => Some(error.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::MessageStatus;

    fn message(role: Role, run_id: Option<Uuid>, content: &str) -> Message {
        Message {
            id: Uuid::now_v7(),
            conversation_id: Uuid::nil(),
            run_id,
            role,
            content: content.to_owned(),
            tool_calls: None,
            tool_call_id: None,
            status: MessageStatus::Complete,
            finish_reason: None,
            created_at: String::new(),
            superseded: false,
        }
    }

    #[test]
    fn a_run_is_one_reply_with_a_step_per_model_call() {
        let run = Uuid::now_v7();
        let question = message(Role::User, Some(run), "What is in stock?");
        let mut call = message(Role::Assistant, Some(run), "");
        call.tool_calls = Some(json!([
            {"id": "c1", "name": "stock", "arguments": "{\"sku\":\"A\"}"},
            {"id": "c2", "name": "nope", "arguments": "{"},
        ]));
        let mut result = message(Role::Tool, Some(run), "{\"rows\":[]}");
        result.tool_call_id = Some("c1".into());
        let mut refusal = message(Role::Tool, Some(run), "{\"error\":\"no such tool\"}");
        refusal.tool_call_id = Some("c2".into());
        let answer = message(Role::Assistant, Some(run), "Nothing.");
        let question_id = question.id.to_string();
        let runs = RunStatuses::from([(run, (RunStatus::Cancelled, None))]);
        let messages = ui_messages(
            Uuid::max(),
            vec![question, call, result, refusal, answer],
            &runs,
        );
        let json = serde_json::to_value(&messages).unwrap();
        assert_eq!(
            json,
            json!([
                {"id": question_id, "role": "user",
                 "parts": [{"type": "text", "text": "What is in stock?", "state": "done"}]},
                {"id": run.to_string(), "role": "assistant",
                 "metadata": {"conversation_id": Uuid::max(), "run_id": run, "status": "cancelled"},
                 "parts": [
                    {"type": "step-start"},
                    {"type": "dynamic-tool", "toolName": "stock", "toolCallId": "c1",
                     "state": "output-available", "input": {"sku": "A"}, "output": {"rows": []},
                     "providerExecuted": true},
                    {"type": "dynamic-tool", "toolName": "nope", "toolCallId": "c2",
                     "state": "output-error", "input": "{", "errorText": "no such tool",
                     "providerExecuted": true},
                    {"type": "step-start"},
                    {"type": "text", "text": "Nothing.", "state": "done"},
                 ]},
            ])
        );
    }

    #[test]
    fn a_queued_run_does_not_split_the_reply_before_it() {
        let (first, queued) = (Uuid::now_v7(), Uuid::now_v7());
        let messages = ui_messages(
            Uuid::nil(),
            vec![
                message(Role::User, Some(first), "one"),
                message(Role::Assistant, Some(first), "A"),
                message(Role::User, Some(queued), "two"),
                message(Role::Assistant, Some(first), "B"),
                message(Role::Assistant, Some(queued), "C"),
            ],
            &RunStatuses::new(),
        );
        let replies: Vec<(&str, usize)> =
            messages.iter().map(|m| (m.role, m.parts.len())).collect();
        assert_eq!(
            replies,
            [("user", 1), ("assistant", 4), ("user", 1), ("assistant", 2)]
        );
        assert_eq!(messages[1].id, first.to_string());
        assert_eq!(messages[3].id, queued.to_string());
    }

    #[test]
    fn history_without_a_run_is_a_reply_per_message() {
        let first = message(Role::Assistant, None, "One.");
        let second = message(Role::Assistant, None, "Two.");
        let ids = [first.id.to_string(), second.id.to_string()];
        let messages = ui_messages(Uuid::nil(), vec![first, second], &RunStatuses::new());
        let got: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(got, ids);
        assert!(messages.iter().all(|m| m.metadata.is_none()));
    }
}
