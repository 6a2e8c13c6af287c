//! Function tools: the trait, the registry, and running one call exactly once.

mod profile;

use std::{collections::BTreeMap, sync::Arc};

use futures_util::future::BoxFuture;
use sqlx::AnyConnection;
use uuid::Uuid;

pub use profile::{CompleteOnboarding, GetProfile, UpdateProfile};

use crate::{
    llm::{ToolCall, ToolSpec},
    store::{self, MessageStatus, NewMessage, Role, Store, StoreError, ToolCallRecord, WriteTx},
};

/// Who a tool call acts for.
#[derive(Debug, Clone, Copy)]
pub struct ToolContext {
    /// The user the run belongs to.
    pub user_id: Uuid,
    /// The conversation the call is made in.
    pub conversation_id: Uuid,
    /// The run that makes the call.
    pub run_id: Uuid,
}

/// Why a tool call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The call was refused; the model sees the message and may try again.
    #[error("{0}")]
    Invalid(String),
    /// The database failed; the run fails.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ToolError {
    fn from(error: sqlx::Error) -> Self {
        ToolError::Store(error.into())
    }
}

/// A function the model can call. Its effects go through `conn`, inside a
/// transaction that also records the call, so they apply whole or not at all.
pub trait Tool: Send + Sync + std::fmt::Debug {
    /// The function as the model sees it.
    fn spec(&self) -> ToolSpec;

    /// Applies the call.
    fn call<'a>(
        &'a self,
        ctx: ToolContext,
        conn: &'a mut AnyConnection,
        arguments: serde_json::Value,
    ) -> BoxFuture<'a, Result<serde_json::Value, ToolError>>;
}

/// The tools an agent may be given, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl Registry {
    /// The built-in tools; `update_profile` accepts `fields`.
    pub fn builtin(fields: &[String]) -> Registry {
        let mut registry = Registry::default();
        registry.add(Arc::new(GetProfile));
        registry.add(Arc::new(UpdateProfile::new(fields.to_vec())));
        registry.add(Arc::new(CompleteOnboarding::new(fields.to_vec())));
        registry
    }

    /// Adds a tool under its name.
    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.spec().name, tool);
    }

    /// The tool with this name.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    /// Every tool's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}

/// The outcome of one call, as the model and the client see it.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The stored record.
    pub record: ToolCallRecord,
    /// The output as JSON.
    pub output: serde_json::Value,
}

/// Runs one call in one short transaction, on the database thread: the
/// tool's effects, the `tool_calls` record and the tool message commit
/// together. A call already recorded for this run returns its stored result
/// and applies nothing again.
#[tracing::instrument(skip_all, fields(run_id = %ctx.run_id, call_id = %call.id, tool = %call.name))]
pub async fn execute(
    store: &Store,
    ctx: ToolContext,
    tool: Option<Arc<dyn Tool>>,
    call: ToolCall,
) -> Result<Executed, StoreError> {
    let on_db = store.clone();
    store
        .on_db(async move { execute_here(&on_db, ctx, tool.as_deref(), &call).await })
        .await
}

async fn execute_here(
    store: &Store,
    ctx: ToolContext,
    tool: Option<&dyn Tool>,
    call: &ToolCall,
) -> Result<Executed, StoreError> {
    let arguments = serde_json::from_str::<serde_json::Value>(&call.arguments);
    let refusal = match (tool, arguments) {
        (None, _) => format!("there is no tool named {:?}", call.name),
        (Some(_), Err(e)) => format!("the arguments are not JSON: {e}"),
        (Some(tool), Ok(arguments)) => {
            let mut tx = store.begin().await?;
            match tool.call(ctx, &mut tx, arguments).await {
                Ok(output) => return record(tx, ctx, call, output, false).await,
                // A refused call leaves no partial effect behind: its
                // transaction is rolled back, and the refusal is recorded
                // in one of its own.
                Err(ToolError::Invalid(message)) => {
                    tx.rollback().await?;
                    message
                }
                // The database refused what the tool wrote (its data, not
                // the connection): a tool error the model reads.
                Err(ToolError::Store(e)) if e.is_refusal() => {
                    tx.rollback().await?;
                    tracing::warn!(error = %e, "the database refused a tool's write");
                    "the database refused the tool's write".to_owned()
                }
                Err(ToolError::Store(e)) => return Err(e),
            }
        }
    };
    let tx = store.begin().await?;
    record(tx, ctx, call, serde_json::json!({ "error": refusal }), true).await
}

/// Records the call with its tool message and commits. A call this run
/// recorded already keeps its first result: this transaction, the tool's
/// effects with it, is rolled back, so nothing is applied twice.
async fn record(
    mut tx: WriteTx<'_>,
    ctx: ToolContext,
    call: &ToolCall,
    mut output: serde_json::Value,
    is_error: bool,
) -> Result<Executed, StoreError> {
    crate::text::clean_json(&mut output);
    let record = ToolCallRecord {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        output: output.to_string(),
        is_error,
    };
    if !store::insert_tool_call(&mut tx, ctx.run_id, &record).await? {
        let stored = store::tool_call(&mut tx, ctx.run_id, &call.id).await?;
        tx.rollback().await?;
        let record = stored.ok_or_else(|| {
            StoreError::Corrupt(format!("tool call {:?} recorded but not found", call.id))
        })?;
        let output = serde_json::from_str(&record.output).unwrap_or(serde_json::Value::Null);
        return Ok(Executed { record, output });
    }
    store::insert_message(
        &mut tx,
        NewMessage {
            conversation_id: ctx.conversation_id,
            run_id: Some(ctx.run_id),
            role: Role::Tool,
            content: &record.output,
            tool_calls: None,
            tool_call_id: Some(&record.call_id),
            status: MessageStatus::Complete,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Executed { record, output })
}
