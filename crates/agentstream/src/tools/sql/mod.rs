//! SQL tools (`kind = "sql"`): one parameterised statement against
//! agentstream's own database or a declared application database.
//!
//! The model sees the declared parameters; named placeholders in the
//! statement (`:status`) are bound as values, never formatted into the SQL.
//! Caller-bound placeholders (`:caller.subject`, `:caller.user_id`,
//! `:caller.conversation_id`, `:caller.run_id`, `:caller.claims.NAME`) and
//! `:server.now` are filled by the server and never appear in the model's
//! schema. Rows come back as JSON objects with typed values.

mod database;
mod output;
mod run;
mod sqlite;
mod statement;
mod values;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use sqlx::AnyConnection;

pub use database::{DatabaseConfig, Databases, OWN};

use super::{
    Effects, Tool, ToolError, ToolInput,
    params::{self, ParamConfig, ParamType},
    registry::BuildContext,
};
use crate::{llm::ToolSpec, store::Backend};

/// Default statement timeout, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default most rows returned.
const DEFAULT_MAX_ROWS: usize = 100;
/// Default most bytes of rows returned (JSON text).
const DEFAULT_MAX_BYTES: usize = 16 * 1024;

/// The statement, one for every dialect or one per dialect.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SqlText {
    /// The same text on SQLite and PostgreSQL.
    Any(String),
    /// Text per dialect (for a tool on agentstream's own database, which
    /// may be either); a dialect left out cannot run the tool.
    PerDialect {
        /// The statement on SQLite.
        sqlite: Option<String>,
        /// The statement on PostgreSQL.
        postgres: Option<String>,
    },
}

/// What a statement that returns rows gives the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultShape {
    /// `{"rows": [...], "row_count": N, "truncated": bool}` (the default).
    #[default]
    Rows,
    /// The first row as an object; no row is a tool error (`empty_error`).
    One,
}

/// One `[tools.NAME]` table of `kind = "sql"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlToolConfig {
    /// What the tool does, for the model.
    pub description: String,
    /// A `[databases.NAME]` (default: agentstream's own).
    pub database: Option<String>,
    /// The statement, with named placeholders.
    pub sql: SqlText,
    /// The arguments the model gives, by name.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamConfig>,
    /// Runs in a read-only transaction (on SQLite, a read-only connection).
    #[serde(default)]
    pub read_only: bool,
    /// Statement timeout in milliseconds (default 5000).
    pub timeout_ms: Option<u64>,
    /// Most rows returned (default 100); the output says when rows were cut.
    pub max_rows: Option<usize>,
    /// Most bytes of rows returned, as JSON text (default 16 KiB).
    pub max_bytes: Option<usize>,
    /// `rows` (default) or `one`.
    #[serde(default)]
    pub result: ResultShape,
    /// Makes "no row returned" (or none changed) a tool error with this message.
    pub empty_error: Option<String>,
    /// Columns whose text is JSON, returned parsed (SQLite's JSON functions
    /// return text).
    #[serde(default)]
    pub json_columns: Vec<String>,
    /// Largest output the model is sent, in bytes (default 16 KiB).
    pub max_output_bytes: Option<usize>,
    /// `always`: each call waits for the user's approval (default `never`).
    #[serde(default)]
    pub approval: crate::tools::Approval,
}

/// What fills one positional parameter.
#[derive(Debug, Clone, PartialEq)]
enum Binding {
    /// A declared parameter, from the arguments.
    Argument(String, ParamType),
    /// The caller's name.
    Subject,
    /// The caller's user ID.
    UserId,
    /// The conversation's ID.
    ConversationId,
    /// The run's ID.
    RunId,
    /// A claim of the caller's verified token.
    Claim(String),
    /// The time now (UTC, RFC 3339 with microseconds).
    Now,
}

/// Where the statement runs.
#[derive(Debug, Clone)]
enum Target {
    /// agentstream's own database: writes in the call's recording
    /// transaction, reads on the tools' read-only pool of it.
    Own(Arc<database::Database>),
    /// An application database.
    App(Arc<database::Database>),
}

/// A SQL tool, checked against its database.
#[derive(Debug)]
pub struct SqlTool {
    spec: ToolSpec,
    target: Target,
    /// The statement with `$N` placeholders.
    sql: String,
    /// The placeholder each `$N` stands for, at `N - 1`.
    placeholders: Vec<String>,
    bindings: Vec<Binding>,
    caller_bound: Vec<String>,
    read_only: bool,
    timeout: Duration,
    max_rows: usize,
    max_bytes: usize,
    shape: ResultShape,
    empty_error: Option<String>,
    json_columns: Vec<String>,
    /// Whether the statement returns rows (found when it was prepared).
    returns_rows: bool,
}

impl SqlTool {
    /// Builds the tool and prepares its statement on its database. Fails
    /// with a message (the caller adds the tool's name) when the statement
    /// names what no caller or parameter gives, leaves a parameter unused,
    /// or does not prepare.
    pub async fn build(
        name: &str,
        config: &SqlToolConfig,
        context: &BuildContext,
    ) -> Result<SqlTool, String> {
        let database_name = config.database.as_deref().unwrap_or(OWN);
        let database = context.databases.get(database_name).ok_or_else(|| {
            format!(
                "no database is named {database_name:?}; declare it as [databases.{database_name}]"
            )
        })?;
        let text = match (&config.sql, database.backend) {
            (SqlText::Any(text), _) => Some(text),
            (SqlText::PerDialect { sqlite, .. }, Backend::Sqlite) => sqlite.as_ref(),
            (SqlText::PerDialect { postgres, .. }, Backend::Postgres) => postgres.as_ref(),
        }
        .ok_or_else(|| {
            format!(
                "`sql` has no statement for {:?}, the dialect of database {database_name:?}",
                database.backend
            )
        })?;
        let statement = statement::parse(text)?;
        let mut bindings = Vec::new();
        let mut caller_bound = Vec::new();
        for placeholder in &statement.names {
            let binding = binding(placeholder, &config.parameters, context.claims)?;
            if !matches!(binding, Binding::Argument(..)) {
                caller_bound.push(placeholder.clone());
            }
            bindings.push(binding);
        }
        if let Some(unused) = config
            .parameters
            .keys()
            .find(|p| !statement.names.contains(p))
        {
            return Err(format!(
                "the parameter {unused:?} is declared but the statement never uses :{unused}"
            ));
        }
        let parameters = params::schema(&config.parameters)?;
        let target = if database_name == OWN {
            Target::Own(database.clone())
        } else {
            Target::App(database.clone())
        };
        let mut tool = SqlTool {
            spec: ToolSpec {
                name: name.to_owned(),
                description: config.description.clone(),
                parameters,
            },
            target,
            sql: statement.sql,
            placeholders: statement.names,
            bindings,
            caller_bound,
            read_only: config.read_only,
            timeout: Duration::from_millis(config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(1)),
            max_rows: config.max_rows.unwrap_or(DEFAULT_MAX_ROWS).max(1),
            max_bytes: config.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).max(64),
            shape: config.result,
            empty_error: config.empty_error.clone(),
            json_columns: config.json_columns.clone(),
            returns_rows: false,
        };
        tool.returns_rows = run::prepare(&tool).await?;
        if tool.shape == ResultShape::One && !tool.returns_rows && tool.empty_error.is_none() {
            tracing::debug!(
                tool = name,
                "result = \"one\" on a statement that returns no rows"
            );
        }
        Ok(tool)
    }

    fn database(&self) -> &database::Database {
        match &self.target {
            Target::Own(database) | Target::App(database) => database,
        }
    }
}

/// What fills the placeholder `name`.
fn binding(
    name: &str,
    parameters: &BTreeMap<String, ParamConfig>,
    claims: bool,
) -> Result<Binding, String> {
    if let Some(bound) = name.strip_prefix("caller.") {
        return match bound {
            "subject" => Ok(Binding::Subject),
            "user_id" => Ok(Binding::UserId),
            "conversation_id" => Ok(Binding::ConversationId),
            "run_id" => Ok(Binding::RunId),
            claim if claim.starts_with("claims.") && claim.len() > "claims.".len() => {
                if !claims {
                    return Err(format!(
                        "the statement uses :{name}, but no caller has token claims: \
                         configure JWT sign-in ([auth.jwt]) or remove it"
                    ));
                }
                Ok(Binding::Claim(claim["claims.".len()..].to_owned()))
            }
            _ => Err(format!(
                "the statement uses :{name}; the caller gives :caller.subject, \
                 :caller.user_id, :caller.conversation_id, :caller.run_id and \
                 :caller.claims.NAME"
            )),
        };
    }
    if name == "server.now" {
        return Ok(Binding::Now);
    }
    match parameters.get(name) {
        Some(param) => Ok(Binding::Argument(name.to_owned(), param.kind)),
        None => {
            let declared: Vec<&str> = parameters.keys().map(String::as_str).collect();
            Err(format!(
                "the statement uses :{name}, which is neither a declared parameter (the \
                 tool declares: {}) nor a caller-bound value (:caller.…, :server.now)",
                if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                }
            ))
        }
    }
}

impl Tool for SqlTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn effects(&self) -> Effects {
        match (&self.target, self.read_only) {
            (_, true) => Effects::Read,
            (Target::Own(_), false) => Effects::OwnDatabase,
            (Target::App(_), false) => Effects::Outside,
        }
    }

    fn caller_bound(&self) -> &[String] {
        &self.caller_bound
    }

    fn statement_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn call<'a>(
        &'a self,
        input: ToolInput<'a>,
        conn: Option<&'a mut AnyConnection>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ToolError>> {
        Box::pin(run::call(self, input, conn))
    }
}
