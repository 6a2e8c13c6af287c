//! Function tools: the trait, the registry, and running one call exactly once.

mod profile;

use std::{collections::BTreeMap, sync::Arc};

use futures_util::future::BoxFuture;
use sqlx::{Acquire, AnyConnection};
use uuid::Uuid;

pub use profile::{CompleteOnboarding, GetProfile, UpdateProfile};

use crate::{
    llm::{ToolCall, ToolSpec},
    store::{self, MessageStatus, NewMessage, Role, Store, StoreError, ToolCallRecord},
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

/// Runs one call in one short transaction: the tool's effects, the
/// `tool_calls` record and the tool message commit together. A call already
/// recorded for this run returns its stored result and applies nothing again.
#[tracing::instrument(skip_all, fields(run_id = %ctx.run_id, call_id = %call.id, tool = %call.name))]
pub async fn execute(
    store: &Store,
    ctx: ToolContext,
    tool: Option<&dyn Tool>,
    call: &ToolCall,
) -> Result<Executed, StoreError> {
    let mut tx = store.begin().await?;
    if let Some(record) = store::tool_call(&mut tx, ctx.run_id, &call.id).await? {
        tx.rollback().await?;
        let output = serde_json::from_str(&record.output).unwrap_or(serde_json::Value::Null);
        return Ok(Executed { record, output });
    }
    let outcome = match (
        tool,
        serde_json::from_str::<serde_json::Value>(&call.arguments),
    ) {
        (None, _) => Err(ToolError::Invalid(format!(
            "there is no tool named {:?}",
            call.name
        ))),
        (Some(_), Err(e)) => Err(ToolError::Invalid(format!(
            "the arguments are not JSON: {e}"
        ))),
        (Some(tool), Ok(arguments)) => {
            // A savepoint, so a refused call leaves no partial effect behind
            // while its refusal is still recorded.
            let mut savepoint = tx.begin().await?;
            let outcome = tool.call(ctx, &mut savepoint, arguments).await;
            match outcome {
                Ok(_) => savepoint.commit().await?,
                Err(_) => savepoint.rollback().await?,
            }
            outcome
        }
    };
    let (output, is_error) = match outcome {
        Ok(output) => (output, false),
        Err(ToolError::Invalid(message)) => (serde_json::json!({ "error": message }), true),
        Err(ToolError::Store(e)) => return Err(e),
    };
    let record = ToolCallRecord {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        output: output.to_string(),
        is_error,
    };
    store::insert_tool_call(&mut tx, ctx.run_id, &record).await?;
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
