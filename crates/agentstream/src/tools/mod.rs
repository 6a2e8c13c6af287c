//! Function tools: the trait, the context a call runs in, the registry of
//! configured tools, and running one call exactly once (see [`execute`]).
//!
//! Tools are defined in the configuration (`[tools.NAME]`), one kind per
//! module: [`sql`] runs one parameterised statement, [`http`] POSTs a signed
//! call to a backend. A kind is one module plus one variant of
//! [`ToolConfig`] in [`registry`]. [`mcp`] imports the tools of MCP servers
//! (`[mcp.NAME]`) into the same registry.

mod execute;
pub mod http;
pub mod mcp;
pub mod params;
pub mod registry;
pub mod sql;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use uuid::Uuid;

pub use execute::{Executed, decline, execute};
pub use registry::{AgentTool, Registry, ToolConfig};

use crate::{llm::ToolSpec, store::StoreError, text::text_enum};

text_enum! {
    /// Whether a tool's calls wait for the user's approval (`approval` in
    /// the tool's configuration).
    #[derive(Default)]
    pub enum Approval {
        /// Calls run as the model makes them (the default).
        #[default]
        Never = "never",
        /// Every call waits: the run pauses `requires_action` until the
        /// user approves or denies it (`POST /v1/runs/{id}/approvals`).
        Always = "always",
    }
}

/// Who a run acts for, as its tools see it. Stored with the run (JSON), so a
/// run driven later or by another node binds the same values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    /// The user's name: an API key's user, or a token's subject.
    pub subject: String,
    /// The verified token's claims; `None` for API keys and the local user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Who a tool call acts for, and where.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The user the run belongs to.
    pub user_id: Uuid,
    /// The conversation the call is made in.
    pub conversation_id: Uuid,
    /// The run that makes the call.
    pub run_id: Uuid,
    /// The caller's name and token claims.
    pub caller: Arc<Caller>,
}

/// One call as a tool receives it: arguments already checked against its
/// schema, caller-bound values in `ctx`.
#[derive(Debug)]
pub struct ToolInput<'a> {
    /// Who the call acts for.
    pub ctx: &'a ToolContext,
    /// The call's ID, unique in the conversation.
    pub call_id: &'a str,
    /// The arguments: a JSON object valid under the tool's schema.
    pub arguments: serde_json::Value,
}

/// Where a tool's effects land, which decides how it is run exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effects {
    /// None: it only reads. It runs before its record is written, on no
    /// connection of the recording transaction.
    Read,
    /// agentstream's own database, through the connection it is given: its
    /// writes commit in the transaction that records the call (exactly once).
    OwnDatabase,
    /// Outside agentstream's database (another database, an HTTP backend):
    /// recorded `started` before it runs and `finished` after, and never run
    /// again; a call cut off in between reads as "outcome unknown" (at most
    /// once).
    Outside,
}

/// Why a tool call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The call failed in a way the model can read and react to (a refused
    /// argument, a backend's 4xx, a timeout): a tool error, and the run goes on.
    #[error("{0}")]
    Invalid(String),
    /// agentstream's own database failed; the run fails.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ToolError {
    fn from(error: sqlx::Error) -> Self {
        ToolError::Store(error.into())
    }
}

/// A function the model can call.
pub trait Tool: Send + Sync + std::fmt::Debug {
    /// The function as the model sees it: name, description, and the JSON
    /// Schema of its arguments (an object; caller-bound values never in it).
    fn spec(&self) -> &ToolSpec;

    /// Where its effects land.
    fn effects(&self) -> Effects;

    /// Names the model may not set because the server binds them (shown in
    /// the error when a model tries).
    fn caller_bound(&self) -> &[String] {
        &[]
    }

    /// For an [`Effects::OwnDatabase`] tool: how long each statement of its
    /// recording transaction may run on PostgreSQL, set when that
    /// transaction begins (`SET LOCAL statement_timeout`, in the `BEGIN`'s
    /// own exchange). `None`: the pool's `DB_STATEMENT_TIMEOUT`.
    fn statement_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Applies the call. `conn` is the recording transaction's connection
    /// for [`Effects::OwnDatabase`] tools, begun with
    /// [`Tool::statement_timeout`], and `None` for the others, which must
    /// hold no connection of agentstream's while they wait.
    fn call<'a>(
        &'a self,
        input: ToolInput<'a>,
        conn: Option<&'a mut AnyConnection>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ToolError>>;
}
