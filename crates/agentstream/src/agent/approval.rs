//! Human approval of tool calls: the pause, when the model calls a tool
//! configured `approval = "always"`, and the resumption, once the user has
//! decided on every call asked about.
//!
//! Nothing is held while a run waits: the pause stores the calls asked
//! about and ends the run's task with `done {status: "requires_action"}`;
//! the decision that completes the set starts a new task for the same run,
//! on whichever node recorded it, which reads the transcript back.

use std::collections::HashSet;

use super::{Agent, EventSink, Outcome, RunControl, announce, arguments_json, run_calls};
use crate::{
    events::{ErrorCode, Event},
    llm::ToolCall,
    store::{self, ApprovalRequest, Message, Role, RunStatus, Store},
    tools::ToolContext,
};

/// Makes the reply's calls that need no approval, in order, then pauses
/// for the rest (as the AI SDK's own agents do): announces them
/// (`tool.call`), stores them with the time the wait runs out, and asks
/// (`tool.approval_requested`). The run ends its task `requires_action`.
pub(super) async fn pause(
    agent: &Agent,
    store: &Store,
    ctx: &ToolContext,
    calls: &[ToolCall],
    emitter: &mut impl EventSink,
    control: &RunControl,
) -> Outcome {
    let (asks, free): (Vec<ToolCall>, Vec<ToolCall>) = calls
        .iter()
        .cloned()
        .partition(|call| agent.asks_about(call));
    if let Err(outcome) = run_calls(agent, store, ctx, &free, None, emitter, control).await {
        return outcome;
    }
    if let Some(status) = control.stopped() {
        return Outcome::status(status);
    }
    for call in &asks {
        if let Err(e) = emitter.emit(announce(call)).await {
            return Outcome::failed(e.code, e.message);
        }
    }
    let requests: Vec<ApprovalRequest> = asks
        .iter()
        .map(|call| ApprovalRequest {
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        })
        .collect();
    let expires_at =
        store::format_timestamp(time::OffsetDateTime::now_utc() + agent.approval_timeout);
    if let Err(e) = store
        .request_approvals(ctx.run_id, &requests, &expires_at)
        .await
    {
        return Outcome {
            detail: Some(e.to_string()),
            ..Outcome::failed(
                ErrorCode::StorageError,
                "the calls to approve could not be stored",
            )
        };
    }
    for call in &asks {
        let asked = emitter
            .emit(Event::ToolApprovalRequested {
                call_id: call.id.clone(),
                name: call.name.clone(),
                arguments: arguments_json(call),
            })
            .await;
        if let Err(e) = asked {
            return Outcome::failed(e.code, e.message);
        }
    }
    Outcome::status(RunStatus::RequiresAction)
}

/// Goes on with a run whose calls have their decisions: logs each decision
/// (`tool.approval_decided`), then makes the calls of the paused reply that
/// have no result yet (those asked about), in order; a denied one is
/// recorded as declined. The caller reads the transcript again afterwards.
pub(super) async fn resume(
    agent: &Agent,
    store: &Store,
    ctx: &ToolContext,
    messages: &[Message],
    emitter: &mut impl EventSink,
    control: &RunControl,
) -> Result<(), Outcome> {
    let decisions = store.approvals(ctx.run_id).await.map_err(|e| Outcome {
        detail: Some(e.to_string()),
        ..Outcome::failed(
            ErrorCode::StorageError,
            "the decisions on the run's tool calls could not be read",
        )
    })?;
    let answered: HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.tool_call_id.as_deref())
        .collect();
    // The paused reply: the run's last assistant message, whose calls were
    // announced and not made.
    let pending: Vec<ToolCall> = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant && m.run_id == Some(ctx.run_id))
        .and_then(|m| m.tool_calls.clone())
        .and_then(|calls| serde_json::from_value::<Vec<ToolCall>>(calls).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|call| !answered.contains(call.id.as_str()))
        .collect();
    for decision in decisions
        .iter()
        .filter(|d| pending.iter().any(|call| call.id == d.call_id))
    {
        emitter
            .emit(Event::ToolApprovalDecided {
                call_id: decision.call_id.clone(),
                approved: decision.approved == Some(true),
                reason: decision.reason.clone(),
            })
            .await
            .map_err(|e| Outcome::failed(e.code, e.message))?;
    }
    run_calls(
        agent,
        store,
        ctx,
        &pending,
        Some(&decisions),
        emitter,
        control,
    )
    .await
    .map(drop)
}
