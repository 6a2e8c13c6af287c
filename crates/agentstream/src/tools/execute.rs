//! Running one tool call exactly once, or at most once where exactly once
//! cannot be had (see [`Effects`]), and recording it with its tool message.

use std::sync::Arc;

use super::{AgentTool, Effects, ToolContext, ToolError, ToolInput};
use crate::{
    llm::ToolCall,
    store::{
        self, Message, MessageStatus, NewMessage, OUTCOME_UNKNOWN, RecordedCall, Role, Store,
        StoreError, ToolCallRecord,
    },
};

/// The outcome of one call, as the model and the client see it.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The stored record.
    pub record: ToolCallRecord,
    /// The output as JSON.
    pub output: serde_json::Value,
}

/// Records a call the user denied, with its tool message, without running
/// it: the model reads a tool error that says the user declined, and why.
/// A call recorded already keeps its first record.
pub async fn decline(
    store: &Store,
    ctx: &ToolContext,
    call: &ToolCall,
    reason: Option<&str>,
) -> Result<Executed, StoreError> {
    let why = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => format!("the user declined this call: {reason}"),
        None => "the user declined this call".to_owned(),
    };
    record_alone(store, ctx, call, serde_json::json!({ "error": why }), true).await
}

/// Runs one call and records it with its tool message.
///
/// Before anything runs, the call is checked: a tool that does not exist,
/// arguments that are not JSON or do not match the tool's schema, or an
/// argument naming a caller-bound value, become a tool error the model
/// reads (`is_error`), and the run goes on. Then, by the tool's [`Effects`]:
/// - `OwnDatabase`: the effects, the record and the message commit in one
///   short transaction on the database thread; a call this run recorded
///   already returns its stored result and applies nothing again;
/// - `Read`: runs on no connection of agentstream's, then is recorded;
/// - `Outside`: is recorded `started` first (committed), runs holding no
///   connection, then is recorded `finished`. A call found `started` is not
///   run again: its outcome is unknown, and the model is told so.
///
/// When `stop` fires while an `Outside` call is in flight, the call is
/// abandoned and finished as an error whose outcome is unknown; the run
/// stops at its next safe point. Other calls run to their end (each is
/// bounded by its own timeout). Fails only when agentstream's own database
/// does.
#[tracing::instrument(skip_all, fields(run_id = %ctx.run_id, call_id = %call.id, tool = %call.name))]
pub async fn execute(
    store: &Store,
    ctx: &ToolContext,
    tool: Option<Arc<AgentTool>>,
    call: &ToolCall,
    stop: impl Future<Output = ()>,
) -> Result<Executed, StoreError> {
    let (tool, arguments) = match check(tool, call) {
        Ok(checked) => checked,
        Err(refusal) => {
            let output = serde_json::json!({ "error": refusal });
            return record_alone(store, ctx, call, output, true).await;
        }
    };
    match tool.tool.effects() {
        Effects::OwnDatabase => {
            let (on_db, ctx, call) = (store.clone(), ctx.clone(), call.clone());
            store
                .on_db(async move { in_transaction(&on_db, &ctx, &tool, &call, arguments).await })
                .await
        }
        Effects::Read => {
            if let Some(RecordedCall::Finished(record)) = recorded(store, ctx, call).await? {
                return Ok(stored(record));
            }
            let input = ToolInput {
                ctx,
                call_id: &call.id,
                arguments,
            };
            let (output, is_error) = tool.outcome(tool.tool.call(input, None).await)?;
            record_alone(store, ctx, call, output, is_error).await
        }
        Effects::Outside => {
            let (on_db, run_id, started) = (store.clone(), ctx.run_id, call.clone());
            let fresh = store
                .on_db(async move {
                    let mut tx = on_db.begin().await?;
                    let fresh = store::insert_started_tool_call(
                        &mut tx,
                        run_id,
                        &started.id,
                        &started.name,
                        &started.arguments,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok::<_, StoreError>(fresh)
                })
                .await?;
            if !fresh {
                return match recorded(store, ctx, call).await? {
                    Some(RecordedCall::Finished(record)) => Ok(stored(record)),
                    _ => finish(store, ctx, call, unknown(OUTCOME_UNKNOWN), true).await,
                };
            }
            let (output, is_error) = match run_outside(&tool, ctx, call, arguments, stop).await {
                Some(result) => tool.outcome(result)?,
                None => (unknown(STOPPED_MID_CALL), true),
            };
            finish(store, ctx, call, output, is_error).await
        }
    }
}

/// The tool and its arguments, or why the call is refused.
fn check(
    tool: Option<Arc<AgentTool>>,
    call: &ToolCall,
) -> Result<(Arc<AgentTool>, serde_json::Value), String> {
    let tool = tool.ok_or_else(|| format!("there is no tool named {:?}", call.name))?;
    let arguments = if call.arguments.trim().is_empty() {
        // Some models send nothing for a call without arguments.
        serde_json::json!({})
    } else {
        serde_json::from_str::<serde_json::Value>(&call.arguments)
            .map_err(|e| format!("the arguments are not JSON: {e}"))?
    };
    let arguments = tool.check(arguments)?;
    Ok((tool, arguments))
}

/// Runs a call that holds no connection of agentstream's, until it ends or
/// `stop` fires (`None`).
async fn run_outside(
    tool: &AgentTool,
    ctx: &ToolContext,
    call: &ToolCall,
    arguments: serde_json::Value,
    stop: impl Future<Output = ()>,
) -> Option<Result<serde_json::Value, ToolError>> {
    let input = ToolInput {
        ctx,
        call_id: &call.id,
        arguments,
    };
    tokio::select! {
        result = tool.tool.call(input, None) => Some(result),
        () = stop => None,
    }
}

/// A call of an `OwnDatabase` tool: its effects and its record in one
/// transaction.
async fn in_transaction(
    store: &Store,
    ctx: &ToolContext,
    tool: &AgentTool,
    call: &ToolCall,
    arguments: serde_json::Value,
) -> Result<Executed, StoreError> {
    let mut tx = store
        .begin_with_timeout(tool.tool.statement_timeout())
        .await?;
    let input = ToolInput {
        ctx,
        call_id: &call.id,
        arguments,
    };
    let result = tool.tool.call(input, Some(&mut tx)).await;
    match tool.outcome(result) {
        Ok((output, false)) => record(tx, ctx, call, output, false).await,
        // A refused call leaves no partial effect behind: its transaction is
        // rolled back, and the refusal is recorded in one of its own.
        Ok((output, true)) => {
            tx.rollback().await?;
            let tx = store.begin().await?;
            record(tx, ctx, call, output, true).await
        }
        Err(e) => Err(e),
    }
}

/// Records a call that applied nothing (a refusal, a read) in a
/// transaction of its own, on the database thread.
async fn record_alone(
    store: &Store,
    ctx: &ToolContext,
    call: &ToolCall,
    output: serde_json::Value,
    is_error: bool,
) -> Result<Executed, StoreError> {
    let (on_db, ctx, call) = (store.clone(), ctx.clone(), call.clone());
    store
        .on_db(async move {
            let tx = on_db.begin().await?;
            record(tx, &ctx, &call, output, is_error).await
        })
        .await
}

/// The run's record of this call, if it has one.
async fn recorded(
    store: &Store,
    ctx: &ToolContext,
    call: &ToolCall,
) -> Result<Option<RecordedCall>, StoreError> {
    let mut conn = store.acquire().await?;
    store::tool_call(&mut conn, ctx.run_id, &call.id).await
}

/// What the model reads for a call abandoned when its run was stopped.
const STOPPED_MID_CALL: &str =
    "the run was stopped while the call was in flight; its outcome is unknown";

/// Output that says the call's outcome is unknown, and why.
fn unknown(why: &str) -> serde_json::Value {
    serde_json::json!({ "error": why })
}

fn stored(record: ToolCallRecord) -> Executed {
    let output = serde_json::from_str(&record.output).unwrap_or(serde_json::Value::Null);
    Executed { record, output }
}

/// Finishes a started call with its result and tool message. A call
/// settled meanwhile keeps the result it was settled with.
async fn finish(
    store: &Store,
    ctx: &ToolContext,
    call: &ToolCall,
    mut output: serde_json::Value,
    is_error: bool,
) -> Result<Executed, StoreError> {
    crate::text::clean_json(&mut output);
    let (on_db, ctx, call) = (store.clone(), ctx.clone(), call.clone());
    store
        .on_db(async move {
            let mut tx = on_db.begin().await?;
            let text = output.to_string();
            if !store::finish_tool_call(&mut tx, ctx.run_id, &call.id, &text, is_error).await? {
                let found = store::tool_call(&mut tx, ctx.run_id, &call.id).await?;
                tx.rollback().await?;
                return match found {
                    Some(RecordedCall::Finished(record)) => Ok(stored(record)),
                    _ => Err(StoreError::Corrupt(format!(
                        "tool call {:?} neither started nor finished",
                        call.id
                    ))),
                };
            }
            insert_tool_message(&mut tx, &ctx, &call.id, &text).await?;
            tx.commit().await?;
            Ok(Executed {
                record: record_of(&call, text, is_error),
                output,
            })
        })
        .await
}

fn record_of(call: &ToolCall, output: String, is_error: bool) -> ToolCallRecord {
    ToolCallRecord {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        output,
        is_error,
    }
}

async fn insert_tool_message(
    tx: &mut store::WriteTx<'_>,
    ctx: &ToolContext,
    call_id: &str,
    content: &str,
) -> Result<(), StoreError> {
    store::insert_message_row(tx, &tool_message(ctx, call_id, content)).await
}

/// The call's tool message, not stored yet.
fn tool_message(ctx: &ToolContext, call_id: &str, content: &str) -> Message {
    store::new_message(NewMessage {
        conversation_id: ctx.conversation_id,
        run_id: Some(ctx.run_id),
        role: Role::Tool,
        content,
        tool_calls: None,
        tool_call_id: Some(call_id),
        status: MessageStatus::Complete,
    })
}

/// Records the call with its tool message and commits. A call this run
/// recorded already keeps its first result: this transaction, the tool's
/// effects with it, is rolled back, so nothing is applied twice.
async fn record(
    mut tx: store::WriteTx<'_>,
    ctx: &ToolContext,
    call: &ToolCall,
    mut output: serde_json::Value,
    is_error: bool,
) -> Result<Executed, StoreError> {
    crate::text::clean_json(&mut output);
    let record = record_of(call, output.to_string(), is_error);
    let message = tool_message(ctx, &record.call_id, &record.output);
    if !store::insert_tool_call(&mut tx, ctx.run_id, &record, &message).await? {
        let found = store::tool_call(&mut tx, ctx.run_id, &call.id).await?;
        tx.rollback().await?;
        return match found {
            Some(RecordedCall::Finished(record)) => Ok(stored(record)),
            Some(RecordedCall::Started) => Ok(Executed {
                record: record_of(call, unknown(OUTCOME_UNKNOWN).to_string(), true),
                output: unknown(OUTCOME_UNKNOWN),
            }),
            None => Err(StoreError::Corrupt(format!(
                "tool call {:?} recorded but not found",
                call.id
            ))),
        };
    }
    tx.commit().await?;
    Ok(Executed { record, output })
}
